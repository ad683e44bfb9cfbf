package hostile

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
)

// maxAttackerConns bounds the connections the attackers hold at once, far
// under the 20,000 descriptors a process may have here: a dial beyond it
// fails as if refused.
const maxAttackerConns = 12000

// conns tracks every attacker connection, so that the whole lot is
// closed at the end and the count stays bounded.
type conns struct {
	open  atomic.Int64
	peak  atomic.Int64
	mu    sync.Mutex
	all   map[net.Conn]struct{} // guarded by mu
	ended bool                  // guarded by mu
}

var errTooManyConns = errors.New("hostile: attacker connection budget spent")

func newConns() *conns { return &conns{all: map[net.Conn]struct{}{}} }

// dial opens a TCP connection from the loopback address src (each attack
// has its own, so that a bound per client address meets only the attack
// that earns it).
func (cs *conns) dial(ctx context.Context, src, addr string) (net.Conn, error) {
	if cs.open.Load() >= maxAttackerConns {
		return nil, errTooManyConns
	}
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c, cs: cs}
	cs.mu.Lock()
	if cs.ended {
		cs.mu.Unlock()
		c.Close()
		return nil, errTooManyConns
	}
	cs.all[tc] = struct{}{}
	cs.mu.Unlock()
	n := cs.open.Add(1)
	for p := cs.peak.Load(); n > p && !cs.peak.CompareAndSwap(p, n); p = cs.peak.Load() {
	}
	return tc, nil
}

// closeAll closes every connection still open and refuses new ones.
func (cs *conns) closeAll() {
	cs.mu.Lock()
	cs.ended = true
	all := make([]net.Conn, 0, len(cs.all))
	for c := range cs.all {
		all = append(all, c)
	}
	cs.mu.Unlock()
	for _, c := range all {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	cs   *conns
	once sync.Once
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.cs.mu.Lock()
		delete(c.cs.all, c)
		c.cs.mu.Unlock()
		c.cs.open.Add(-1)
	})
	return err
}

// httpClient makes requests from src; its connections count in cs.
func (cs *conns) httpClient(src string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return cs.dial(ctx, src, addr)
			},
			MaxIdleConnsPerHost: 8,
			IdleConnTimeout:     30 * time.Second,
			DisableCompression:  true,
		},
	}
}

// rawWS is an attacker's WebSocket: frames written as the attack wants
// them (unfinished fragments, malformed arrays, floods), frames read only
// when the attack asks.
type rawWS struct {
	conn net.Conn
	r    io.Reader
	wmu  sync.Mutex

	done      chan struct{} // closed when readLoop has ended
	closeCode int           // the server's close frame code; 0 without one
	closeErr  error         // why reading ended
	frames    atomic.Int64  // data frames read
}

// dialWS upgrades a connection from src to the node's WebSocket endpoint
// with query (vsn and params, already encoded).
func (cs *conns) dialWS(ctx context.Context, src, addr, query string) (*rawWS, error) {
	d := ws.Dialer{
		NetDial: func(ctx context.Context, _, a string) (net.Conn, error) { return cs.dial(ctx, src, a) },
		Timeout: 10 * time.Second,
	}
	conn, br, _, err := d.Dial(ctx, "ws://"+addr+"/socket/websocket?"+query)
	if err != nil {
		return nil, err
	}
	c := &rawWS{conn: conn, r: conn, done: make(chan struct{})}
	if br != nil {
		c.r = br
	}
	return c, nil
}

// write sends one masked frame in a single write, so that frames of
// concurrent writers never interleave.
func (c *rawWS) write(fin bool, op ws.OpCode, payload []byte) error {
	h := ws.Header{Fin: fin, OpCode: op, Masked: true, Mask: ws.NewMask(), Length: int64(len(payload))}
	buf := make([]byte, 0, ws.HeaderSize(h)+len(payload))
	w := appendWriter{buf: buf}
	if err := ws.WriteHeader(&w, h); err != nil {
		return err
	}
	start := len(w.buf)
	w.buf = append(w.buf, payload...)
	ws.Cipher(w.buf[start:], h.Mask, 0)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	_, err := c.conn.Write(w.buf)
	return err
}

func (c *rawWS) text(payload []byte) error { return c.write(true, ws.OpText, payload) }

type appendWriter struct{ buf []byte }

func (w *appendWriter) Write(p []byte) (int, error) { w.buf = append(w.buf, p...); return len(p), nil }

// readLoop reads frames until the connection ends, answering the server's
// pings and close, handing data frames to fn (which may be nil). Frames
// larger than 16 MiB are skipped rather than held.
func (c *rawWS) readLoop(fn func(op ws.OpCode, payload []byte)) {
	defer close(c.done)
	for {
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			c.closeErr = err
			return
		}
		if h.Length > 16<<20 {
			if _, err := io.CopyN(io.Discard, c.r, h.Length); err != nil {
				c.closeErr = err
				return
			}
			continue
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, p); err != nil {
			c.closeErr = err
			return
		}
		switch h.OpCode {
		case ws.OpClose:
			c.closeCode = 1005
			if len(p) >= 2 {
				c.closeCode = int(binary.BigEndian.Uint16(p))
			}
			_ = c.write(true, ws.OpClose, p[:min(2, len(p))])
			c.conn.Close()
			return
		case ws.OpPing:
			_ = c.write(true, ws.OpPong, p)
		case ws.OpPong:
		default:
			c.frames.Add(1)
			if fn != nil {
				fn(h.OpCode, p)
			}
		}
	}
}

// closedBy says how the node ended the connection, once done is closed.
func (c *rawWS) closedBy() string {
	if c.closeCode != 0 {
		return fmt.Sprintf("close %d", c.closeCode)
	}
	return fmt.Sprintf("no close frame (%v)", c.closeErr)
}

// closeKind groups closes for the figures: "close 1009", "no close
// frame".
func (c *rawWS) closeKind() string {
	if c.closeCode != 0 {
		return fmt.Sprintf("close %d", c.closeCode)
	}
	return "no close frame"
}

// isClosed reports whether the node has ended the connection.
func (c *rawWS) isClosed() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// rawRequest writes req (a whole HTTP/1.1 request) on a fresh connection
// from src and returns the connection and a reader over it.
func (cs *conns) rawRequest(ctx context.Context, src, addr string, req []byte) (net.Conn, *bufio.Reader, error) {
	c, err := cs.dial(ctx, src, addr)
	if err != nil {
		return nil, nil, err
	}
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(req); err != nil {
		c.Close()
		return nil, nil, err
	}
	_ = c.SetWriteDeadline(time.Time{})
	return c, bufio.NewReader(c), nil
}

func query(kv ...string) string {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	return q.Encode()
}
