package transport

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

// Buffer sizes. They are taken from pools only while a connection reads or
// writes, so they cost per busy connection, not per open one.
const (
	readBufferSize  = 4 << 10
	writeBufferSize = 8 << 10
	// msgBufferSize is the first size of a buffer that reassembles a
	// message that did not fit the read buffer in one frame.
	msgBufferSize = 4 << 10
	// maxPooledMsgBuffer keeps rare big messages from pinning their
	// buffers in the pool.
	maxPooledMsgBuffer = 64 << 10
)

// readBuf is what a connection holds while it reads a burst of frames.
type readBuf struct {
	br  *bufio.Reader
	hdr [ws.MaxHeaderSize]byte // for ws.ReadHeaderBuffer, so it allocates nothing
}

// writeBuf is what a connection's flush holds while it writes.
type writeBuf struct {
	bw  *bufio.Writer
	hdr [ws.MaxHeaderSize]byte // for ws.WriteHeaderBuffer
}

var (
	readBufPool = sync.Pool{New: func() any {
		return &readBuf{br: bufio.NewReaderSize(nil, readBufferSize)}
	}}
	writeBufPool = sync.Pool{New: func() any {
		return &writeBuf{bw: bufio.NewWriterSize(nil, writeBufferSize)}
	}}
	msgPool = sync.Pool{New: func() any {
		return &msgState{b: make([]byte, 0, msgBufferSize)}
	}}
)

// msgState is the reassembly of a message that did not arrive whole in
// one frame within the read buffer: fragmented, or bigger than the read
// buffer. Only a connection with such a message in progress holds one.
type msgState struct {
	b []byte
	// deadline is when the message must be whole: MessageTimeout after
	// its first frame began, in nanoseconds since monoEpoch. Frames in
	// between, control frames included, do not move it.
	deadline int64
	// From here on guarded by the handler's msgBudget.mu
	// (wsconn_budget.go): what the message holds of the budget, and its
	// place among the messages in progress, oldest first, which a newer
	// message's reader reads and unlinks when it evicts it.
	//
	// charged is the capacity of b counted in the handler's
	// Stats.MessageBuffers (MaxMessageBuffers).
	charged int
	// c is the connection whose message this is.
	c          *wsConn
	prev, next *msgState
	// linked: the message is in the budget's list. An eviction unlinks
	// it, taking its bytes out of the budget at once.
	linked bool
}

// outFrame is one frame waiting in a connection's outbound queue.
type outFrame struct {
	op   ws.OpCode
	data []byte // shared with other sockets: never modified
}

// wsConn is one upgraded WebSocket connection. It implements channels.Conn.
//
// While idle it holds no buffer and runs no writer. With event-driven
// reads (r != nil) it runs no reader either: its fd waits in the reactor's
// poller, and it holds the bare descriptor instead of a net.Conn
// (wsconn_fd.go). Otherwise its reader goroutine is parked in a one-byte
// read into b1.
type wsConn struct {
	h *WebSocketHandler
	// nc is the upgraded connection, or the *os.File of an attached bare
	// descriptor; nil while bare. It changes only under mu
	// (wsconn_fd.go says who may use it without).
	nc   connIO
	sock Socket // set before the reader starts

	// Owned by the reader. The reader is a chain of goroutines (see
	// readLoop and readReady); each starts the next, directly or by
	// arming the connection in the poller, whose claim under mu orders
	// their accesses.
	//
	// Fields are ordered, and sized, so that the struct fits a smaller
	// size class: it is most of an idle connection's memory.
	pending *[]byte   // bytes the client sent before our 101 answer; nil if none (most connections)
	msg     *msgState // reassembly of the message in progress (pooled); nil if none

	mu    sync.Mutex
	queue []outFrame // nil while nothing is queued, so it pins nothing
	// nBytes counts the bytes of the frames queued or being written.
	nBytes int
	// deadline, in nanoseconds on the monotonic clock since monoEpoch
	// (deadlineTime; 0: none), is once closing the close deadline, which
	// bounds the close handshake, and before that the read deadline the
	// reader last set, which an attach applies (wsconn_fd.go). One field
	// for both: the close deadline replaces the read deadline for good.
	// Guarded by mu.
	deadline int64

	// Event-driven reads (reactor.go), guarded by mu. r and fd are set
	// before the connection is shared; r becomes nil when the connection
	// leaves the reactor (it ends, or falls back to a parked reader); fd
	// changes when it detaches (wsconn_fd.go).
	r *reactor
	// idleUntil is the r.now() at which the sweeper closes the
	// connection if it still waits then, set when it is armed; 0 while a
	// goroutine owns its read side. The sweeper reads it without mu.
	idleUntil atomic.Int64
	fd        int32
	gen       uint32 // generation of the last arming; guarded by mu
	nFrames   int32  // frames queued or being written; guarded by mu

	// Owned by the reader (see above).
	peeked bool      // b1 holds the first byte of the next frame
	b1     [1]byte   // target of the idle read
	msgOp  ws.OpCode // opcode of the fragmented message in progress, 0 if none
	dead   bool      // the connection failed: no close handshake possible

	// Guarded by mu.
	flushing   bool // the queue has a writer: in the writers' FIFO, in a writer's turn, or a flush goroutine
	closing    bool // Close began (or the connection failed): Send refuses
	ended      bool // the reader has finished
	registered bool // in r's table and poller
	armed      bool // registered and waiting: no goroutine reads; the first to claim it does
	draining   bool // the reader waits for the client's side of the close: evict must not wake it
	// backlogWatched: a WaitBacklog waits on this connection (backlog.go),
	// so draining or closing must look for it in h.backlogs.
	backlogWatched bool
	// fdState counts the raw system calls in progress on the bare
	// descriptor, and its top bit (fdClosedBit) says that the
	// descriptor is closed, or to be closed by the last of them
	// (wsconn_fd.go). One byte, so that the struct keeps its size class.
	fdState uint8
}

// monoEpoch anchors deadline to the monotonic clock: a deadline kept
// as an int64 takes a third of a time.Time's room.
var monoEpoch = time.Now()

func deadlineTime(ns int64) time.Time { return monoEpoch.Add(time.Duration(ns)) }

func newWSConn(h *WebSocketHandler, nc net.Conn) *wsConn {
	return &wsConn{h: h, nc: nc}
}

// end runs when the reader stops: it completes the close handshake if the
// connection still works, closes it, and tells the socket, once.
func (c *wsConn) end() {
	c.releaseMsg()
	c.pending = nil
	if !c.dead {
		c.mu.Lock()
		if !c.closing {
			// Not reached today (every path that stops the reader without
			// a dead connection has begun a close); kept as a backstop.
			// The reader is this goroutine: the connection is not armed.
			flush, _ := c.closeLocked(closeBody(channels.CloseInternalError, ""), false)
			if flush {
				go c.flush()
			}
		}
		c.draining = true
		// An eviction (wsconn_budget.go) or an attach may have cut the
		// read deadline short to wake the reader.
		nc, _ := c.attachLocked()
		if nc != nil {
			_ = nc.SetReadDeadline(deadlineTime(c.deadline))
		}
		c.mu.Unlock()
		// RFC 6455 §7.1.1: after our close frame the server should close
		// the TCP connection first; the flush half-closes it (FIN) after
		// the close frame. Here we read, and discard, until the client
		// closes its side too, or until the close deadline (set by
		// closeLocked). Closing at once could reset the connection while
		// the client's unread bytes sit in our receive buffer, and a reset
		// may destroy the close frame before the client reads it.
		if nc != nil {
			_, _ = io.Copy(io.Discard, nc)
		}
	}
	c.mu.Lock()
	c.closing = true
	c.ended = true
	c.dropQueueLocked()
	if c.backlogWatched {
		c.wakeBacklogLocked()
	}
	c.mu.Unlock()
	c.closeNC()
	c.h.stats.Open.Add(-1)
	c.h.cfg.Sockets.release()
	defer func() {
		if r := recover(); r != nil {
			c.h.log.Error("transport: socket panicked in HandleClose", "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	c.sock.HandleClose()
}
