package channels

import (
	"cmp"
	"slices"
)

// Generation returns a mark of the sockets opened so far: every socket
// opened later is "born after" it. A node that moves sockets to other
// nodes remembers the mark of its previous round and passes it to
// CloseOldest, so that a client that just arrived (perhaps one it moved a
// moment ago, which the load balancer sent straight back) is never asked
// to move again at once.
func (e *Runtime) Generation() uint64 { return e.serial.Load() }

// CloseOldest closes up to n open sockets opened before the mark
// bornBefore (from Generation), oldest first, with code and reason, and
// returns how many it closed. Oldest first: long-lived connections have
// paid their connect cost long ago, and a reconnecting client costs the
// same whenever it moves. It walks every socket, so it is meant for a
// periodic task, not a message path.
func (e *Runtime) CloseOldest(n int, bornBefore uint64, code int, reason string) int {
	if n <= 0 {
		return 0
	}
	type aged struct {
		serial uint64
		s      *Socket
	}
	e.mu.Lock()
	cands := make([]aged, 0, len(e.sockets))
	for s := range e.sockets {
		if s.serial <= bornBefore {
			cands = append(cands, aged{s.serial, s})
		}
	}
	e.mu.Unlock()
	slices.SortFunc(cands, func(a, b aged) int { return cmp.Compare(a.serial, b.serial) })
	if len(cands) > n {
		cands = cands[:n]
	}
	for _, c := range cands {
		c.s.conn.Close(code, reason)
	}
	return len(cands)
}
