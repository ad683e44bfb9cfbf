package hostile

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Attacks on connections and sessions rather than on bytes.

const (
	idleConns = 300
	slowConns = 300
	// connGrace is how long an idle or slow connection may stay open: a
	// minute, as Cowboy does for idle ones, and two seconds of slack (the
	// node's clock starts before the client has read the answer).
	connGrace = 62 * time.Second
)

// heldConn is one idle or slow connection and when the node ended it.
type heldConn struct {
	c      net.Conn
	opened time.Time
	closed atomic.Int64 // unix nanos, 0 while open
}

var held struct {
	sync.Mutex
	idle, slow []*heldConn
}

// idleAndSlow (whole soak): a few hundred keep-alive connections that
// sent one request and then nothing, and as many that send a request body
// one byte every 2 s. Nothing bounds them but the HTTP server's timeouts.
func idleAndSlow(ctx context.Context, e *env, r *report) {
	watch := func(h *heldConn, br *bufio.Reader) {
		_ = h.c.SetReadDeadline(time.Time{})
		buf := make([]byte, 512)
		for {
			if _, err := br.Read(buf); err != nil {
				h.closed.Store(time.Now().UnixNano())
				return
			}
		}
	}
	// Opened in parallel, so that they are all the same age.
	var (
		mu    sync.Mutex
		slow  []*heldConn
		wg    sync.WaitGroup
		tasks = make(chan bool, idleConns+slowConns)
	)
	for range idleConns {
		tasks <- true
	}
	for range slowConns {
		tasks <- false
	}
	close(tasks)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for idle := range tasks {
				if idle {
					openIdle(ctx, e, r, watch)
					continue
				}
				c, br, err := e.cs.rawRequest(ctx, "127.0.1.7", e.addr, []byte("POST /api/broadcast HTTP/1.1\r\nHost: "+e.addr+
					"\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"))
				if err != nil {
					r.inc("slow: connects failed")
					continue
				}
				h := &heldConn{c: c, opened: time.Now()}
				mu.Lock()
				slow = append(slow, h)
				mu.Unlock()
				go watch(h, br)
			}
		}()
	}
	wg.Wait()
	held.Lock()
	held.slow = slow
	r.add("idle keep-alive connections", int64(len(held.idle)))
	held.Unlock()
	r.add("slow-body requests", int64(len(slow)))
	// One byte per connection every 2 s, until the node closes it or the
	// soak ends: a bounded trickle (at most ~50 bytes each).
	for awaitCtx(ctx, 2*time.Second) {
		for _, h := range slow {
			if h.closed.Load() == 0 {
				_ = h.c.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := h.c.Write([]byte(" ")); err != nil {
					h.closed.CompareAndSwap(0, time.Now().UnixNano())
				}
			}
		}
	}
}

// openIdle sends one request, reads the answer and keeps the connection.
func openIdle(ctx context.Context, e *env, r *report, watch func(*heldConn, *bufio.Reader)) {
	c, br, err := e.cs.rawRequest(ctx, "127.0.1.7", e.addr, []byte("GET /healthz HTTP/1.1\r\nHost: "+e.addr+"\r\n\r\n"))
	if err != nil {
		r.inc("idle: connects failed")
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		r.inc("idle: no answer")
		c.Close()
		return
	}
	drainBody(resp)
	h := &heldConn{c: c, opened: time.Now()}
	held.Lock()
	held.idle = append(held.idle, h)
	held.Unlock()
	go watch(h, br)
}

// idleAndSlowCheck runs once every held connection is connGrace old: each
// must have been closed by the node by then.
func idleAndSlowCheck(e *env, r *report) {
	held.Lock()
	idle, slow := held.idle, held.slow
	held.Unlock()
	var latest time.Time
	for _, h := range append(append([]*heldConn(nil), idle...), slow...) {
		if h.opened.After(latest) {
			latest = h.opened
		}
	}
	if wait := time.Until(latest.Add(connGrace)); wait > 0 {
		time.Sleep(wait) // the node's timeouts run on their own clock
	}
	for _, kind := range []struct {
		name string
		hs   []*heldConn
	}{{"idle", idle}, {"slow-body", slow}} {
		open, lives := 0, []float64{}
		for _, h := range kind.hs {
			if at := h.closed.Load(); at != 0 {
				lives = append(lives, time.Unix(0, at).Sub(h.opened).Seconds())
			} else {
				open++
			}
		}
		sort.Float64s(lives)
		r.add(kind.name+" still open after "+connGrace.String(), int64(open))
		if len(lives) > 0 {
			r.note("%s closed by the node after %.0f s (median), %.0f s (last)", kind.name, lives[len(lives)/2], lives[len(lives)-1])
		}
		if open > 0 {
			r.fail("%d of %d %s connections still open %s after they began: no server timeout closes them", open, len(kind.hs), kind.name, connGrace)
		}
	}
}

// sessionFlood (once the long-poll slots are over): one address opens
// long-poll sessions as fast as it can, in rounds of 12,000 opening GETs
// every 16 s (a session lives 15 s without polls). Meanwhile, from the
// start, newcomers from other addresses open long-poll sessions and
// WebSockets and join: those must never be refused because of the flood.
// The flood waits for the long-poll slots because on a node without a
// bound per address it takes every session, the slot attackers' too, and
// their costs would go unseen.
func sessionFlood(ctx context.Context, e *env, r *report) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		probe(ctx, e, r)
	}()
	select {
	case <-e.lpSlotsDone:
	case <-ctx.Done():
	}
	hc := e.cs.httpClient("127.0.1.8", 10*time.Second)
	hc.Transport.(*http.Transport).MaxIdleConnsPerHost = 32
	defer hc.CloseIdleConnections()
	for round := 0; ctx.Err() == nil && round < 5; round++ {
		var opened, refused atomic.Int64
		var rw sync.WaitGroup
		start := time.Now()
		for range 32 {
			rw.Add(1)
			go func() {
				defer rw.Done()
				for k := 0; k < 375 && ctx.Err() == nil; k++ {
					req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+e.addr+"/socket/longpoll?vsn=2.0.0", nil)
					resp, err := hc.Do(req)
					if err != nil {
						continue
					}
					drainBody(resp)
					if resp.StatusCode == http.StatusOK {
						opened.Add(1)
					} else {
						refused.Add(1)
					}
				}
			}()
		}
		rw.Wait()
		r.add("sessions opened", opened.Load())
		r.add("opens refused", refused.Load())
		r.note("round %d: %d opened, %d refused in %.1f s", round+1, opened.Load(), refused.Load(), time.Since(start).Seconds())
		awaitCtx(ctx, 16*time.Second-time.Since(start))
	}
	wg.Wait()
}

// probe sends newcomers, each from an address of its own: a long-poll
// client every 250 ms (the flood's rounds leave gaps of a second), a
// WebSocket every second.
func probe(ctx context.Context, e *env, r *report) {
	for i := 0; awaitCtx(ctx, 250*time.Millisecond); i++ {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := probeLongPoll(pctx, e, i)
		if err != nil && ctx.Err() == nil {
			r.inc("long-poll newcomers refused")
			r.note("long-poll newcomer: %.120v", err)
		} else if err == nil {
			r.inc("long-poll newcomers served")
		}
		if i%4 == 0 {
			err = probeWebSocket(pctx, e, i)
			if err != nil && ctx.Err() == nil {
				r.inc("WebSocket newcomers refused")
				r.note("WebSocket newcomer: %.120v", err)
			} else if err == nil {
				r.inc("WebSocket newcomers served")
			}
		}
		cancel()
	}
}

func probeLongPoll(ctx context.Context, e *env, i int) error {
	src := net.IPv4(127, 0, byte(4+i/250%4), byte(1+i%250))
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 5 * time.Second}).DialContext
	hc := &http.Client{Transport: tr}
	defer hc.CloseIdleConnections()
	lp, err := lpclient.Open(ctx, "http://"+e.addr+"/socket/longpoll", lpclient.Options{HTTPClient: hc, RequestLog: -1})
	if err != nil {
		return err
	}
	defer lp.Close()
	reply, err := lp.Join(ctx, "room:hostile-probe", map[string]string{"user": "probe-lp-" + strconv.Itoa(i)})
	if err == nil && reply.Status != "ok" {
		err = fmt.Errorf("join answered %s", reply.Raw)
	}
	return err
}

func probeWebSocket(ctx context.Context, e *env, i int) error {
	c, err := wsclient.Dial(ctx, "ws://"+e.addr+"/socket/websocket", wsclient.Options{Params: map[string]string{"user": "probe-ws-" + strconv.Itoa(i)}})
	if err != nil {
		return err
	}
	defer c.Close()
	reply, err := c.Join(ctx, "room:hostile-probe", nil)
	if err == nil && reply.Status != "ok" {
		err = fmt.Errorf("join answered %s", reply.Raw)
	}
	return err
}

func sessionFloodCheck(e *env, r *report) {
	for _, k := range []string{"long-poll newcomers refused", "WebSocket newcomers refused"} {
		if n := r.get(k); n > 0 {
			r.fail("%s while one address flooded the node with sessions: %d", k, n)
		}
	}
}

// hugeRequestLines (whole soak): a WebSocket upgrade, and a long-poll
// opening GET, whose request line is ~1 MiB (a user name of 1,040,000
// bytes), one every second in turn. The node must refuse them (414 or 431)
// without reading on.
func hugeRequestLines(ctx context.Context, e *env, r *report) {
	name := hugeName("hostile-line-", 1_040_000)
	for i := 0; ctx.Err() == nil; i++ {
		var req string
		kind := "upgrade"
		if i%2 == 0 {
			req = "GET /socket/websocket?vsn=2.0.0&user=" + name + " HTTP/1.1\r\nHost: " + e.addr +
				"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
		} else {
			kind = "long-poll open"
			req = "GET /socket/longpoll?vsn=2.0.0&user=" + name + " HTTP/1.1\r\nHost: " + e.addr + "\r\n\r\n"
		}
		c, br, err := e.cs.rawRequest(ctx, "127.0.1.9", e.addr, []byte(req))
		status := "cut off while sending"
		if err == nil {
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			line, err := br.ReadString('\n')
			if f := strings.Fields(line); err == nil && len(f) >= 2 {
				status = f[1]
			} else {
				status = "closed without an answer"
			}
			if status == "200" && kind == "long-poll open" {
				// 200 with {"status":410,"token":...}: a session.
				status = "200 (session opened)"
			}
			c.Close()
		}
		r.inc(kind + ": " + status)
		awaitCtx(ctx, time.Second)
	}
}

func hugeRequestLinesCheck(e *env, r *report) {
	for _, k := range []string{"upgrade: 101", "long-poll open: 200 (session opened)"} {
		if n := r.get(k); n > 0 {
			r.fail("1 MiB request lines accepted: %s ×%d", k, n)
		}
	}
}

// malformedV2 (whole soak): every second a new V2 socket sends an array
// with too few elements; the node must close the connection, and not
// with 1000 (Phoenix closes it).
func malformedV2(ctx context.Context, e *env, r *report) {
	frames := []string{`["1","1","room:x"]`, `["1","1"]`, `[]`, `["1","1","room:x","ev"]`}
	for i := 0; ctx.Err() == nil; i++ {
		c, err := e.cs.dialWS(ctx, "127.0.1.10", e.addr, query("vsn", "2.0.0"))
		if err != nil {
			r.inc("connects refused")
			awaitCtx(ctx, time.Second)
			continue
		}
		go c.readLoop(nil)
		_ = c.text([]byte(frames[i%len(frames)]))
		r.inc("malformed frames sent")
		select {
		case <-c.done:
			r.inc("closed by the node: " + c.closeKind())
			if c.closeCode == 1000 {
				r.fail("a malformed V2 frame was answered with close 1000")
			}
		case <-time.After(3 * time.Second):
			r.inc("left open 3 s after a malformed frame")
		}
		c.conn.Close()
		awaitCtx(ctx, time.Second)
	}
}

func malformedV2Check(e *env, r *report) {
	if n := r.get("left open 3 s after a malformed frame"); n > 0 {
		r.fail("%d sockets left open after a malformed V2 frame (Phoenix closes them)", n)
	}
}

// pingFloods (whole soak): two sockets send WebSocket pings and never
// read the pongs; two send Phoenix heartbeats far over the message rate.
// Held in review, kept so: the flooders must be cut off (the heartbeat
// flooders within the 10 s of persistent excess), everyone else served.
func pingFloods(ctx context.Context, e *env, r *report) {
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			heartbeats := i >= 2
			kind := "ping flooders"
			if heartbeats {
				kind = "heartbeat flooders"
			}
			for tries := 0; tries < 4 && ctx.Err() == nil; tries++ {
				c, err := e.cs.dialWS(ctx, "127.0.1.11", e.addr, query("vsn", "2.0.0"))
				if err != nil {
					r.inc(kind + ": connects refused")
					awaitCtx(ctx, time.Second)
					continue
				}
				if heartbeats {
					go c.readLoop(nil)
				}
				start := time.Now()
				ref := 0
				for ctx.Err() == nil && !c.isClosed() {
					// A batch every 50 ms: 2,000 pings/s or 500
					// heartbeats/s per socket, bounded, yet far over what
					// a client needs.
					var err error
					batch := 100
					if heartbeats {
						batch = 25
					}
					for range batch {
						if heartbeats {
							ref++
							err = c.text([]byte(`[null,"` + strconv.Itoa(ref) + `","phoenix","heartbeat",{}]`))
						} else {
							err = c.write(true, ws.OpPing, []byte("flood"))
						}
						if err != nil {
							break
						}
					}
					if err != nil {
						break
					}
					r.add(kind+": frames sent", int64(batch))
					awaitCtx(ctx, 50*time.Millisecond)
				}
				if ctx.Err() != nil {
					c.conn.Close()
					break
				}
				c.conn.Close()
				if heartbeats {
					<-c.done
				}
				// Without reading, the ping flooder learns of its end from a
				// failed write (a reset, or 10 s of a node not reading).
				r.inc(kind + ": cut off by the node")
				if heartbeats {
					r.note("heartbeat flooder: %s", c.closeKind())
				}
				r.most(kind+": longest life (s)", int64(time.Since(start).Seconds()))
			}
		}()
	}
	wg.Wait()
}

func pingFloodsCheck(e *env, r *report) {
	if r.get("heartbeat flooders: cut off by the node") == 0 {
		r.fail("heartbeat flooders at 500/s were never cut off (rate abuse)")
	}
}
