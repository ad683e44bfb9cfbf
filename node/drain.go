package node

import (
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// The drain (PROTOCOL.md §5.3, README "Draining"). It starts with
// Drain (POST /api/drain, `channelsd drain` in a Kubernetes preStop hook)
// or with Shutdown, and goes one way:
//
//  1. /readyz answers 503 at once, so the load balancer stops sending.
//  2. New sockets are refused: a WebSocket upgrade gets HTTP 503 with
//     Retry-After, a long-poll opening GET too.
//  3. The sockets open at that moment (WebSocket connections and long-poll
//     sessions) are closed in batches spread evenly over DrainWindow, with
//     close code 1012 (channels.CloseServiceRestart), so clients reconnect
//     through the load balancer to other nodes without a thundering herd.
//     A long-poll session just ends: its next request gets 410 and the
//     client reconnects. Each closing socket's channels terminate, which
//     untracks their presences: other nodes see those users leave.
//  4. Shutdown then stops the HTTP server and closes the presence tracker,
//     which removes whatever entries of this node are left (in Redis) and
//     broadcasts their leaves, and the PubSub.

// drainTick is the shortest interval between two batches: a window is
// cut into at most window/drainTick batches (200 for 20 s), and never into
// more batches than there are sockets.
const drainTick = 100 * time.Millisecond

// drainBatches returns how many batches close n sockets over window.
// Batch i (from 0) starts at window*i/batches and closes the sockets
// [n*i/batches, n*(i+1)/batches): batch sizes differ by at most one, the
// first batch goes at once and the last at window*(batches-1)/batches.
func drainBatches(n int, window time.Duration) int {
	if n <= 0 {
		return 0
	}
	b := int(window / drainTick)
	return max(1, min(b, n))
}

// drain is a node's drain, from its start on.
type drain struct {
	started time.Time
	window  time.Duration
	total   int           // sockets open when it started
	hurry   chan struct{} // closed to close the remaining sockets at once
	once    sync.Once
	done    chan struct{} // closed once every socket has been asked to close
}

func (d *drain) hurryUp() { d.once.Do(func() { close(d.hurry) }) }

// DrainStatus is a drain's progress, as GET /api/drain shows it.
type DrainStatus struct {
	Draining bool `json:"draining"`
	// SocketsLeft counts the sockets still open (WebSocket connections
	// and long-poll sessions), whether or not they have been asked to
	// close yet. Zero with Draining means the node is drained.
	SocketsLeft int `json:"sockets_left"`
	// StartedAt is when the drain began; null before.
	StartedAt *time.Time `json:"started_at"`
	// Window is the node's drain window as a Go duration ("20s").
	Window string `json:"window"`
}

// Drain starts draining the node, if it has not begun yet, and returns
// at once (POST /api/drain calls it; PROTOCOL.md §5.3). From then on
// /readyz answers 503, new sockets are refused with HTTP 503 and
// Retry-After, and the sockets open now are closed with 1012 (service
// restart) in batches spread evenly over Config.DrainWindow, so that
// their clients reconnect to other nodes without a thundering herd. The
// node keeps serving its open sockets until their batch comes, and its
// HTTP API and probes until Shutdown. A drain cannot be undone: the
// process is meant to exit (Shutdown) after it.
func (n *Node) Drain() DrainStatus {
	n.startDrain()
	return n.DrainStatus()
}

// DrainStatus reports the drain's progress.
func (n *Node) DrainStatus() DrainStatus {
	st := DrainStatus{Window: n.cfg.DrainWindow.String()}
	n.drainMu.Lock()
	d := n.drain
	n.drainMu.Unlock()
	if d != nil {
		st.Draining = true
		started := d.started
		st.StartedAt = &started
		st.SocketsLeft = n.endpoint.SocketCount()
	}
	return st
}

// startDrain starts the drain once and returns it.
func (n *Node) startDrain() *drain {
	n.drainMu.Lock()
	defer n.drainMu.Unlock()
	if n.drain != nil {
		return n.drain
	}
	n.draining.Store(true) // /readyz: 503 from now on
	socks := n.endpoint.Runtime().BeginDrain()
	d := &drain{
		started: time.Now(),
		window:  n.cfg.DrainWindow,
		total:   len(socks),
		hurry:   make(chan struct{}),
		done:    make(chan struct{}),
	}
	n.drain = d
	n.log.Info("node: draining", "sockets", len(socks), "window", d.window)
	go n.runDrain(d, socks)
	return d
}

// runDrain closes socks in batches over the window (see drainBatches).
// It stops early once every socket has ended, and closes all the rest at
// once when hurried.
func (n *Node) runDrain(d *drain, socks []*channels.Socket) {
	defer close(d.done)
	batches := drainBatches(len(socks), d.window)
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	closeRange := func(lo, hi int) {
		rt := n.endpoint.Runtime()
		for _, s := range socks[lo:hi] {
			rt.CloseSocket(s, channels.CloseServiceRestart, "server draining")
		}
		n.drainClosed.Add(uint64(hi - lo))
	}
	for i := range batches {
		lo, hi := len(socks)*i/batches, len(socks)*(i+1)/batches
		if wait := time.Until(d.started.Add(d.window * time.Duration(i) / time.Duration(batches))); i > 0 && wait > 0 {
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			select {
			case <-timer.C:
			case <-n.endpoint.Runtime().Drained():
				return // every socket has ended already
			case <-d.hurry:
				closeRange(lo, len(socks))
				return
			}
		}
		closeRange(lo, hi)
	}
}

// apiDrain starts the drain (POST) or reports it (GET): 202 or 200 with
// the DrainStatus.
func (n *Node) apiDrain(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost {
		writeJSON(w, http.StatusAccepted, n.Drain())
		return
	}
	writeJSON(w, http.StatusOK, n.DrainStatus())
}

// awaitDrain waits until every socket has been asked to close: at the end
// of the window, or earlier when they have all gone. When ctx ends first
// the rest are closed at once.
func (n *Node) awaitDrain(ctx context.Context, d *drain) {
	select {
	case <-d.done:
	case <-ctx.Done():
		d.hurryUp()
		<-d.done
	}
}
