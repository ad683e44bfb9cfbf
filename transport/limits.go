package transport

import "sync/atomic"

// Slots bounds the sockets of a node over both transports: each WebSocket
// connection and each long-poll session holds one slot from the start of
// its handshake until it ends. A handshake that finds no free slot is
// answered HTTP 503 with Retry-After (README "Limits"). A nil *Slots has
// no bound. Give the same Slots to the node's WebSocketHandler and
// LongPollHandler.
type Slots struct {
	max     int64
	used    atomic.Int64
	refused atomic.Uint64
}

// NewSlots returns a bound of max sockets; max <= 0 returns nil (no bound).
func NewSlots(max int) *Slots {
	if max <= 0 {
		return nil
	}
	return &Slots{max: int64(max)}
}

// acquire takes a slot, or counts a refusal and reports false.
func (s *Slots) acquire() bool {
	if s == nil {
		return true
	}
	if s.used.Add(1) > s.max {
		s.used.Add(-1)
		s.refused.Add(1)
		return false
	}
	return true
}

// release gives back a slot taken by acquire.
func (s *Slots) release() {
	if s != nil {
		s.used.Add(-1)
	}
}

// Max returns the bound (0 for a nil Slots: none).
func (s *Slots) Max() int {
	if s == nil {
		return 0
	}
	return int(s.max)
}

// InUse returns the slots held: open sockets and handshakes in progress.
func (s *Slots) InUse() int {
	if s == nil {
		return 0
	}
	return int(s.used.Load())
}

// Refused returns how many handshakes found no free slot.
func (s *Slots) Refused() uint64 {
	if s == nil {
		return 0
	}
	return s.refused.Load()
}
