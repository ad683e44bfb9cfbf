package transport

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Event-driven reads: see the package documentation, "Read path". This
// file is the platform-independent part; a poller (poller_linux.go: epoll)
// supplies the readiness notifications.
//
// A reactor serves one WebSocketHandler. It is started when the first
// connection is upgraded and stops when the last one has ended (or the
// handler is closed), so that a handler with no connection runs nothing.
// It owns:
//
//   - a poller with every waiting connection's fd registered one-shot;
//   - a table from fd to connection, in shards by fd;
//   - one goroutine waiting on the poller (pollLoop) and one closing
//     idle connections (sweeper).
//
// # Ownership of a connection's read side
//
// At any moment exactly one party owns the read side of a connection: a
// goroutine reading (ServeHTTP before the first wait, a burst, a
// connection ending) or, while the connection waits for its next frame,
// nobody: the connection is "armed" (wsConn.armed, under wsConn.mu). The
// owner arms the connection when it has nothing more to read; whoever
// then finds it armed and flips armed to false under wsConn.mu becomes
// the owner and must start a goroutine to read:
//
//   - the poll loop, when the fd is readable (readiness event);
//   - a closer (wsConn.closeLocked, closeNC), which starts the reader that
//     drains and ends the connection, since nothing else would wake it;
//   - Close of the handler, which hands the connection to a parked reader.
//
// Registrations are one-shot (EPOLLONESHOT), so a readiness event is
// reported once and then the fd stays silent until the new owner re-arms
// it (EPOLL_CTL_MOD); a second event for the same readiness cannot start
// a second reader, and an event that finds the connection already owned
// is dropped (its owner will read the data).
//
// # Reused fds
//
// The kernel reuses an fd number as soon as it is closed, and the poll
// loop may hold events that epoll_wait returned before a registration was
// removed. Two rules keep such a stale event from reaching the wrong
// connection:
//
//   - A connection's registration is removed (EPOLL_CTL_DEL, table entry
//     dropped) under wsConn.mu before its net.Conn is closed (closeNC),
//     and every epoll_ctl on its fd (add, rearm, del) is made under
//     wsConn.mu while wsConn.r is set, which deregistration clears. So
//     every epoll_ctl on a connection's fd happens while that fd still
//     belongs to that connection.
//   - Every arming (registration or re-arm) carries a new generation
//     number in the event's data next to the fd. The poll loop looks the
//     fd up in the table, then checks under the connection's lock that it
//     is still registered and armed with the event's generation. An event
//     left over from a closed connection whose fd number now belongs to a
//     new connection carries an old generation and is dropped. (The fd
//     alone could not tell them apart; a pointer cannot travel through the
//     kernel, which the garbage collector does not scan.) So is an event
//     of an earlier arming of the same connection that was claimed by
//     someone else (only closers do so today, and a closing connection
//     is not armed again, but a late event must never claim a later
//     arming and park a reader on a connection with nothing to read).
//
// # Locks
//
// wsConn.mu is taken first; under it a connection takes its table shard's
// mu (register, deregister) and WebSocketHandler.rmu (releasing its
// reference on the reactor). The poll loop, the sweeper and Close never
// hold a shard's mu or rmu while taking a wsConn.mu: they copy what they
// need out of the table and lock each connection afterwards.

// pollEvent is a readiness notification: the fd and the generation it was
// registered with.
type pollEvent struct {
	fd  int32
	gen uint32
}

// poller is the system's readiness notification (epoll on Linux). Its
// methods add, rearm and del are called under the connection's lock; wait
// only from the poll loop.
type poller interface {
	// add registers fd for one readiness notification (read, peer
	// hang-up, error) carrying gen.
	add(fd int32, gen uint32) error
	// rearm re-enables a registration after its notification.
	rearm(fd int32, gen uint32) error
	// del removes a registration.
	del(fd int32) error
	// wait blocks until at least one notification or a wake, and stores
	// notifications in evs. It returns how many it stored (possibly 0
	// after a wake).
	wait(evs []pollEvent) (int, error)
	// wake makes a wait in progress, or the next one, return.
	wake() error
	// close releases the poller's descriptors. No other method may be
	// called after it or concurrently with it.
	close() error
}

var errReactorStopped = errors.New("transport: reactor stopped")

const (
	// tableShards spreads the fd table's lock: fd i lives in shard
	// i%tableShards, at index i/tableShards.
	tableShards = 64
	// pollBatch is how many notifications one wait returns at most.
	pollBatch = 256
	// maxIdleClosesPerTick bounds what one sweep does: a mass expiry (a
	// network partition) is spread over ticks instead of starting
	// hundreds of thousands of closes at once.
	maxIdleClosesPerTick = 4096
	// maxSweepTick is the longest interval between sweeps; shorter idle
	// or message timeouts sweep every quarter of the shorter one.
	maxSweepTick = time.Second
)

type tableShard struct {
	mu    sync.Mutex
	conns []*wsConn // index fd/tableShards; nil where no connection waits
	_     [32]byte  // one shard per 64-byte cache line
}

type reactor struct {
	h *WebSocketHandler
	p poller

	// stopping is set (under h.rmu) once the reactor takes no new
	// registrations: its last connection has gone or the handler was
	// closed. Read under a shard's mu when registering, under wsConn.mu
	// when re-arming.
	stopping atomic.Bool
	done     chan struct{} // closed when stopping: ends the sweeper
	gen      atomic.Uint32 // last arming's generation

	// Guarded by h.rmu.
	conns      int  // connections holding a reference (acquire .. release)
	pollerDone bool // pollLoop has returned
	fdsClosed  bool

	shards [tableShards]tableShard
	cursor int // sweeper's next shard; owned by the sweeper
}

// eventReads reports whether this handler reads through the reactor: on
// platforms with a poller, unless ParkedReads is set.
func (h *WebSocketHandler) eventReads() bool {
	return pollerSupported && !h.cfg.ParkedReads
}

// acquireReactor returns the running reactor, starting one if there is
// none, with a reference for one connection; nil if the handler is closed
// or no poller could be made (the connection then uses a parked reader).
func (h *WebSocketHandler) acquireReactor() *reactor {
	h.rmu.Lock()
	defer h.rmu.Unlock()
	if h.closed {
		return nil
	}
	r := h.reactor
	if r == nil {
		p, err := newPoller()
		if err != nil {
			if !h.pollerFailed {
				h.pollerFailed = true
				h.log.Warn("transport: no poller, falling back to a parked reader per connection", "err", err)
			}
			return nil
		}
		r = &reactor{h: h, p: p, done: make(chan struct{})}
		h.reactor = r
		tick := max(min(min(h.cfg.IdleTimeout, h.cfg.MessageTimeout)/4, maxSweepTick), time.Millisecond)
		h.bg.Add(2)
		go r.pollLoop()
		go r.sweeper(tick)
	}
	r.conns++
	return r
}

// release drops a connection's reference. The last one stops the
// reactor; the poller's descriptors are closed once the poll loop has
// returned too.
func (r *reactor) release() {
	h := r.h
	h.rmu.Lock()
	defer h.rmu.Unlock()
	r.conns--
	if r.conns == 0 {
		r.stopLocked()
	}
	r.maybeCloseLocked()
}

// stopLocked makes the reactor take no more registrations and ends its
// goroutines. Called with h.rmu held.
func (r *reactor) stopLocked() {
	if r.stopping.Load() {
		return
	}
	r.stopping.Store(true)
	if r.h.reactor == r {
		r.h.reactor = nil
	}
	close(r.done)
	if err := r.p.wake(); err != nil {
		r.h.log.Error("transport: waking the poller", "err", err)
	}
}

// maybeCloseLocked closes the poller once nothing can use it: no
// connection holds a reference (so none will call add, rearm or del) and
// the poll loop has returned (so none will call wait). Closing the epoll
// descriptor earlier could let a late epoll_ctl reach whatever the kernel
// gave its number to next. Called with h.rmu held.
func (r *reactor) maybeCloseLocked() {
	if r.conns == 0 && r.pollerDone && !r.fdsClosed {
		r.fdsClosed = true
		if err := r.p.close(); err != nil {
			r.h.log.Error("transport: closing the poller", "err", err)
		}
	}
}

// now is the reactor's clock: monotonic nanoseconds since the handler was
// made, never 0 (0 marks a connection that is not waiting).
func (r *reactor) now() int64 {
	return int64(time.Since(r.h.epoch)) + 1
}

func (r *reactor) shard(fd int32) *tableShard {
	return &r.shards[uint32(fd)%tableShards]
}

// nextGen returns a new registration generation, never 0.
func (r *reactor) nextGen() uint32 {
	for {
		if g := r.gen.Add(1); g != 0 {
			return g
		}
	}
}

// register puts c in the table and the poller, with generation c.gen.
// Called with c.mu held; the caller has set c.armed, since the first
// notification may come at once.
func (r *reactor) register(c *wsConn) error {
	s := r.shard(c.fd)
	i := int(uint32(c.fd) / tableShards)
	s.mu.Lock()
	// Checked under the shard's mu: Close sets stopping before it scans
	// the shards, so a connection either sees stopping here or is found
	// by Close's scan.
	if r.stopping.Load() {
		s.mu.Unlock()
		return errReactorStopped
	}
	if i >= len(s.conns) {
		s.conns = append(s.conns, make([]*wsConn, i+1-len(s.conns))...)
	}
	s.conns[i] = c
	s.mu.Unlock()
	if err := r.p.add(c.fd, c.gen); err != nil {
		r.forget(c)
		return err
	}
	c.registered = true
	return nil
}

// rearm re-enables c's one-shot registration, with generation c.gen.
// Called with c.mu held.
func (r *reactor) rearm(c *wsConn) error {
	// Close sets stopping, then locks every connection in the table: a
	// connection re-armed before that is migrated by Close, one re-armed
	// after sees stopping here.
	if r.stopping.Load() {
		return errReactorStopped
	}
	return r.p.rearm(c.fd, c.gen)
}

// forget removes c from the table.
func (r *reactor) forget(c *wsConn) {
	s := r.shard(c.fd)
	i := int(uint32(c.fd) / tableShards)
	s.mu.Lock()
	if i < len(s.conns) && s.conns[i] == c {
		s.conns[i] = nil
	}
	s.mu.Unlock()
}

// lookup returns the connection registered on fd, if any.
func (r *reactor) lookup(fd int32) *wsConn {
	s := r.shard(fd)
	i := int(uint32(fd) / tableShards)
	s.mu.Lock()
	defer s.mu.Unlock()
	if i < len(s.conns) {
		return s.conns[i]
	}
	return nil
}

// pollLoop waits for readiness and starts a reader goroutine per event.
//
// A goroutine per readiness event, rather than a fixed pool of workers:
// a burst may block in the middle of a frame (a client that sends half a
// frame, or a slow link), for up to IdleTimeout; a fixed pool would let a
// few such clients starve every other connection. The goroutine handles
// what is buffered and exits, which also frees whatever stack handling
// the frames grew (the parked mode starts a goroutine per burst for the
// same reason), so the cost, one goroutine start per burst, is the same
// in both modes.
func (r *reactor) pollLoop() {
	h := r.h
	defer func() {
		h.rmu.Lock()
		r.pollerDone = true
		r.maybeCloseLocked()
		h.rmu.Unlock()
		h.bg.Done()
	}()
	evs := make([]pollEvent, pollBatch)
	for {
		n, err := r.p.wait(evs)
		if r.stopping.Load() {
			// Connections still armed are migrated by Close; after the
			// last release there are none.
			return
		}
		if err != nil {
			// Not expected (EINTR is retried by the poller). Hand every
			// connection to a parked reader rather than leave it
			// unwatched.
			h.log.Error("transport: poller failed; connections fall back to parked reads", "err", err)
			h.rmu.Lock()
			r.stopLocked()
			h.rmu.Unlock()
			r.migrate()
			return
		}
		for _, ev := range evs[:n] {
			r.dispatch(ev)
		}
	}
}

// dispatch hands a readable connection to a new reader goroutine.
func (r *reactor) dispatch(ev pollEvent) {
	c := r.lookup(ev.fd)
	if c == nil {
		return
	}
	c.mu.Lock()
	ok := c.r == r && c.registered && c.gen == ev.gen && c.claimLocked()
	c.mu.Unlock()
	if ok {
		go c.readReady()
	}
}

// migrate hands every armed connection to a parked reader: after Close,
// or when the poller failed. Connections owned by a goroutine at the time
// find stopping set when they next arm and take a parked reader then.
func (r *reactor) migrate() {
	var cs []*wsConn
	for i := range r.shards {
		s := &r.shards[i]
		s.mu.Lock()
		for _, c := range s.conns {
			if c != nil {
				cs = append(cs, c)
			}
		}
		s.mu.Unlock()
	}
	for _, c := range cs {
		c.mu.Lock()
		ok := c.r == r && c.claimLocked()
		if ok {
			c.deregisterLocked()
		}
		c.mu.Unlock()
		if ok {
			go c.readLoop()
		}
	}
}

// sweeper closes connections that have waited longer than IdleTimeout
// for a frame (1001, as the read deadline does in the parked mode), or
// past the deadline of a message in progress (1008). A
// connection whose burst is in progress is left to its read deadline.
func (r *reactor) sweeper(tick time.Duration) {
	defer r.h.bg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
			r.sweep()
		}
	}
}

// sweep makes one pass. Each shard's lock is held only to copy out the
// expired connections (an atomic load per connection); closing happens
// outside it, at most maxIdleClosesPerTick per pass. A pass that reaches
// that bound resumes at the same shard next time.
func (r *reactor) sweep() {
	now := r.now()
	var expired []*wsConn
	for k := 0; k < tableShards && len(expired) < maxIdleClosesPerTick; k++ {
		s := &r.shards[r.cursor]
		s.mu.Lock()
		for _, c := range s.conns {
			if c == nil {
				continue
			}
			if t := c.idleUntil.Load(); t != 0 && now >= t {
				expired = append(expired, c)
				if len(expired) == maxIdleClosesPerTick {
					break
				}
			}
		}
		s.mu.Unlock()
		if len(expired) < maxIdleClosesPerTick {
			r.cursor = (r.cursor + 1) % tableShards
		}
	}
	for _, c := range expired {
		c.idleExpired(r, now)
	}
}
