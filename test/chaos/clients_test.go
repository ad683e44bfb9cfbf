package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// 4. A client that joins a busy room and stops reading. It connects
// straight to node 1's address on a side network (no port-forwarding
// proxy buffering for it) with a 4 KiB receive buffer. Node 1 must close
// it (1008 "slow consumer", or the TCP connection) within 30 s of the
// stall, count it in channelsd_slow_consumer_disconnects_total, keep its
// memory bounded meanwhile and after, and the room's other clients, on
// every node, lose nothing.
//
// A node has two bounds on a client that does not read: its outbound
// queue (4 MiB by default), which closes it as a slow consumer, and the
// write timeout (10 s from the write the kernel could not take), which
// drops it as a write error. The room's ticks alone fill the queue first
// only while the publisher keeps near its 100 a second; on a starved
// machine it managed 13 a second, 4 MiB took longer than 10 s, and the
// write timeout won. So the slow client also joins a room of its own,
// which gets flood broadcasts of floodPad bytes until node 1 counts it:
// a handful of requests pass the queue's bound in well under the write
// timeout, whatever the publisher's rate, and the busy room's other
// clients never see them.
func TestSlowConsumer(t *testing.T) {
	r := newRow(t, "slow consumer")
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info"})
	ctx := timeout(t, 2*time.Minute)
	side := cl.AttachSideNetwork(1)
	// The busy room: 16 KiB broadcasts every 10 ms (1.6 MB/s per client).
	l := startLoad(ctx, t, loadOptions{Name: "slow", Clients: 6, Rooms: 1,
		Targets:    nodeTargets(cl, 1, 2, 3),
		PublishURL: func() string { return cl.Node(1).HTTPURL() }, PublishNode: 1,
		Tick: 10 * time.Millisecond, Pad: 16 << 10})
	before := memOf(t, cl, 1, 2, 3)
	slowBefore := cl.Metric(t, 1, "channelsd_slow_consumer_disconnects_total")

	d := ws.Dialer{NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
			return errors.Join(err, serr)
		}}
		return nd.DialContext(ctx, network, addr)
	}}
	conn, _, _, err := d.Dial(ctx, side+"?vsn=2.0.0&user=slowpoke")
	if err != nil {
		t.Fatalf("the slow client: %v", err)
	}
	defer conn.Close()
	const floodTopic = "room:slow-flood"
	for _, join := range []string{
		`["1","1","` + l.topic(0) + `","phx_join",{"user":"slowpoke"}]`,
		`["2","2","` + floodTopic + `","phx_join",{"user":"slowpoke"}]`,
	} {
		if err := wsutil.WriteClientText(conn, []byte(join)); err != nil {
			t.Fatal(err)
		}
	}
	// Both joins' replies are read, so that the queue the test fills is
	// known to be a joined socket's; then nothing more is read until
	// node 1 has given up on it.
	readBefore := awaitJoinReplies(t, conn, "1", "2")
	writeErrorsBefore := cl.Metric(t, 1, `channelsd_websocket_closes_total{reason="write_error"}`)
	stalled := time.Now()
	var peak mem
	floods := 0
	for {
		if floods < maxFloods {
			floods++
			if err := cl.Broadcast(ctx, 1, floodTopic, "flood", map[string]any{"n": floods, "pad": floodPad}); err != nil {
				t.Fatalf("flood broadcast %d: %v", floods, err)
			}
		}
		m := memOf(t, cl, 1)[1]
		peak = mem{heap: max(peak.heap, m.heap), rss: max(peak.rss, m.rss)}
		if cl.Metric(t, 1, "channelsd_slow_consumer_disconnects_total") > slowBefore {
			break
		}
		if time.Since(stalled) > 30*time.Second {
			writeErrors := cl.Metric(t, 1, `channelsd_websocket_closes_total{reason="write_error"}`) - writeErrorsBefore
			t.Fatalf("node 1 did not count the slow client as a slow consumer within 30 s (%d flood broadcasts of %d KiB; sockets node 1 dropped for a failed or timed-out write meanwhile: %v)",
				floods, len(floodPad)>>10, writeErrors)
		}
		if floods >= maxFloods {
			time.Sleep(250 * time.Millisecond) // polling the node's metrics
		}
	}
	gaveUp := time.Since(stalled)
	t.Logf("node 1 counted the slow consumer %v after it stopped reading (%d frames read before: the join replies; %d flood broadcasts); node 1's peak meanwhile: %s",
		gaveUp.Round(time.Millisecond), readBefore, floods, peak)
	if b := before[1]; peak.heap > 2*b.heap+heapSlackMiB {
		t.Errorf("node 1's heap in use reached %.1f MiB behind the slow client, more than 2 × %.1f + %d MiB", peak.heap, b.heap, heapSlackMiB)
	}
	// What reaches the slow client now: what was buffered, then a close
	// frame with 1008 or the end of the connection, within 10 s.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	frames, code, end := 0, 0, error(nil)
	for {
		h, err := ws.ReadHeader(conn)
		if err != nil {
			end = err
			break
		}
		payload := make([]byte, h.Length)
		if _, err := io.ReadFull(conn, payload); err != nil {
			end = err
			break
		}
		frames++
		if h.OpCode == ws.OpClose {
			c, _ := ws.ParseCloseFrameData(payload)
			code = int(c)
			break
		}
	}
	var ne net.Error
	if errors.As(end, &ne) && ne.Timeout() {
		t.Errorf("the slow client's connection was still open 10 s after node 1 gave up on it (%d frames read)", frames)
	} else if code != 0 && code != 1008 {
		t.Errorf("the slow client was closed with %d, want 1008", code)
	}
	t.Logf("the slow client read %d buffered frames, then: close code %d, %v", frames, code, end)

	time.Sleep(2 * time.Second)
	l.finish()
	tl := l.account(nil)
	if n := l.cs[0].rc.Reconnects(); n > 0 {
		t.Errorf("a reading client of the busy room reconnected %d times", n)
	}
	after := memOf(t, cl, 1, 2, 3)
	checkMem(t, before, after)
	*r = row{Scenario: r.Scenario, NodesUp: readyNodes(cl), Nodes: 3, Recovered: l.connected(), Clients: len(l.cs),
		Owed: tl.owed, Lost: tl.lost, Dup: tl.dup}
	r.memory(before, after)
}

// floodPad is the pad of a flood broadcast of TestSlowConsumer: with its
// envelope within the API's request limit (the node's max frame size,
// 1 MiB by default), so that six of them pass the default queue bound
// of 4 MiB and the little the kernel's buffers take.
var floodPad = strings.Repeat("f", 896<<10)

// maxFloods bounds the flood broadcasts: three times the queue's bound.
const maxFloods = 14

// awaitJoinReplies reads conn's frames until the phx_reply of each of the
// refs has come, each with status "ok", within 10 s, and returns how
// many frames it read. A channel's broadcasts wait behind its join reply
// (PROTOCOL.md §3.3), so the replies are read before any broadcast of a
// channel whose reply has not come yet.
func awaitJoinReplies(t *testing.T, conn net.Conn, refs ...string) int {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetReadDeadline(time.Time{})
	want := map[string]bool{}
	for _, r := range refs {
		want[r] = true
	}
	frames := 0
	for len(want) > 0 {
		data, op, err := wsutil.ReadServerData(conn)
		if err != nil {
			t.Fatalf("the slow client, awaiting its join replies %v: %v", refs, err)
		}
		frames++
		var m []json.RawMessage
		if op != ws.OpText || json.Unmarshal(data, &m) != nil || len(m) != 5 {
			t.Fatalf("the slow client got an unexpected frame before its join replies: %.200q", data)
		}
		var ref, event string
		_ = json.Unmarshal(m[1], &ref)
		_ = json.Unmarshal(m[3], &event)
		if event != "phx_reply" || !want[ref] {
			continue // a broadcast of a channel already joined
		}
		var reply struct {
			Status string `json:"status"`
		}
		if err := json.Unmarshal(m[4], &reply); err != nil || reply.Status != "ok" {
			t.Fatalf("the slow client's join (ref %s) was answered %s", ref, m[4])
		}
		delete(want, ref)
	}
	return frames
}

// 5. Hostile frames on node 1 (--max-frame-size 64 KiB), 10 clients of
// each kind at once: garbage text and binary garbage close the socket
// with 1007, as Phoenix's connection process crashes on them; a frame
// above the limit is closed with 1009; text that is not UTF-8 with 1007.
// Node 1 counts the malformed frames, every node stays ready, and the
// background clients lose nothing.
func TestHostileFrames(t *testing.T) {
	const each = 10
	r := newRow(t, "hostile frames")
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info", Args: []string{"--max-frame-size=65536"}})
	ctx := timeout(t, 2*time.Minute)
	l := startLoad(ctx, t, loadOptions{Name: "hostile", Clients: 15, Rooms: 3,
		Targets:    nodeTargets(cl, 1, 2, 3),
		PublishURL: func() string { return cl.Node(1).HTTPURL() }, PublishNode: 1})
	before := memOf(t, cl, 1, 2, 3)
	malformedBefore := cl.Metric(t, 1, "channelsd_malformed_frames_total")

	garbage := []struct {
		data   string
		binary bool
	}{
		{data: "not json"}, {data: "\x00\x01garbage{["}, {data: `[null,null,"x"`}, {data: `{"topic":1}`},
		{data: "\x09\xff\xfe\x00garbage", binary: true}, {data: "\x00\x05\x05\x05\x05" + "1", binary: true},
	}
	var wg sync.WaitGroup
	errs := make(chan error, (len(garbage)+2)*each)
	hostile := func(what string, f func(*wsclient.Client) error) {
		for k := range each {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := wsclient.Dial(ctx, cl.Node(1).WSURL(), wsclient.Options{})
				if err != nil {
					errs <- fmt.Errorf("%s %d: dial: %w", what, k, err)
					return
				}
				defer c.Close()
				if err := f(c); err != nil {
					errs <- fmt.Errorf("%s %d: %w", what, k, err)
				}
			}()
		}
	}
	closedWith := func(want int, data []byte, binary bool) func(*wsclient.Client) error {
		return func(c *wsclient.Client) error {
			if err := c.SendRaw(data, binary); err != nil {
				return err
			}
			st, err := c.AwaitClose(ctx)
			if err != nil {
				return err
			}
			if !st.Received || st.Code != want {
				return fmt.Errorf("closed with %s, want %d", st, want)
			}
			return nil
		}
	}
	for _, g := range garbage {
		hostile(fmt.Sprintf("garbage %q", g.data), closedWith(1007, []byte(g.data), g.binary))
	}
	hostile("oversize", closedWith(1009, []byte(`["1","1","phoenix","heartbeat",{"pad":"`+strings.Repeat("x", 65536)+`"}]`), false))
	hostile("invalid UTF-8", closedWith(1007, []byte("[\"1\",\"1\",\"phoenix\",\"heartbeat\",{\"x\":\"\xff\xfe\xc3\x28\"}]"), false))
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if got := cl.Metric(t, 1, "channelsd_malformed_frames_total") - malformedBefore; got < float64(each*len(garbage)) {
		t.Errorf("node 1 counted %v malformed frames, want at least %d", got, each*len(garbage))
	}
	if n := readyNodes(cl); n != 3 {
		t.Errorf("%d nodes ready after the hostile frames, want 3", n)
	}
	time.Sleep(2 * time.Second) // load after the attack
	l.finish()
	tl := l.account(nil)
	after := memOf(t, cl, 1, 2, 3)
	checkMem(t, before, after)
	*r = row{Scenario: r.Scenario, NodesUp: readyNodes(cl), Nodes: 3, Recovered: l.connected(), Clients: len(l.cs),
		Owed: tl.owed, Lost: tl.lost, Dup: tl.dup}
	r.memory(before, after)
}

// 6. 1,000 clients connect at once through the load balancer (one
// goroutine each, released together) while the background load runs:
// every one connects and joins within 30 s (redialing as phoenix.js does
// when the load balancer times its request out), none is refused by a
// node, every node gets a share, each receives a broadcast to its room;
// after they leave, every node's socket count is back to the background
// load's and its memory is back near where it started.
func TestThousandClients(t *testing.T) {
	const (
		herd  = 1000
		rooms = 10
	)
	r := newRow(t, "1,000 clients at once")
	cl := harness.Start(t, harness.Options{Nodes: 3, LogLevel: "info"})
	lb := cl.StartLoadBalancer(harness.LBOptions{})
	ctx := timeout(t, 2*time.Minute)
	l := startLoad(ctx, t, loadOptions{Name: "herd-load", Clients: 9, Rooms: 3,
		Targets:    nodeTargets(cl, 1, 2, 3),
		PublishURL: func() string { return cl.Node(1).HTTPURL() }, PublishNode: 1})
	before := memOf(t, cl, 1, 2, 3)
	refusedBefore := 0.0
	for i := 1; i <= 3; i++ {
		refusedBefore += cl.Metric(t, i, "channelsd_websocket_refused_total")
	}

	clients := make([]*wsclient.Client, herd)
	errs := make([]error, herd)
	var redials atomic.Int64
	var wg sync.WaitGroup
	gate := make(chan struct{})
	jctx, jcancel := context.WithTimeout(ctx, 30*time.Second)
	defer jcancel()
	for i := range herd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			c, err := dialAsPhoenixJS(jctx, lb.WSURL(), wsclient.Options{Params: map[string]string{"user": fmt.Sprintf("herd-%d", i)}}, &redials)
			if err != nil {
				errs[i] = err
				return
			}
			clients[i] = c
			m, err := c.Join(jctx, fmt.Sprintf("room:herd-%d", i%rooms), nil)
			if err == nil && m.Status != "ok" {
				err = fmt.Errorf("join refused: %s", m)
			}
			errs[i] = err
		}()
	}
	began := time.Now()
	close(gate)
	wg.Wait()
	took := time.Since(began)
	defer func() {
		for _, c := range clients {
			if c != nil {
				_ = c.Close()
			}
		}
	}()
	joined := 0
	var failures []string
	for i, err := range errs {
		if err == nil {
			joined++
		} else if len(failures) < 5 {
			failures = append(failures, fmt.Sprintf("client %d: %v", i, err))
		}
	}
	t.Logf("%d of %d clients connected and joined in %v (%d dials retried)", joined, herd, took.Round(time.Millisecond), redials.Load())
	if joined < herd {
		t.Errorf("%d of %d clients failed to connect and join within 30 s; e.g. %v", herd-joined, herd, failures)
	}
	perNode := map[int]float64{}
	refused := -refusedBefore
	for i := 1; i <= 3; i++ {
		perNode[i] = cl.Metric(t, i, `channelsd_sockets{transport="websocket"}`)
		refused += cl.Metric(t, i, "channelsd_websocket_refused_total")
	}
	t.Logf("sockets per node: %v; refused: %v", perNode, refused)
	if refused > 0 {
		t.Errorf("nodes refused %v WebSocket upgrades", refused)
	}
	for i, n := range perNode {
		if n < herd/6 {
			t.Errorf("node %d holds %v sockets: the load balancer did not spread 1,000 clients", i, n)
		}
	}
	peak := memOf(t, cl, 1, 2, 3)

	// Every joined client receives a broadcast to its room (published
	// again until each has one: a node subscribes to a room new to it
	// shortly after the first join).
	got := make([]bool, herd)
	deadline := time.Now().Add(20 * time.Second)
	for missing := joined; missing > 0; {
		for room := range rooms {
			if err := cl.Broadcast(ctx, 1, fmt.Sprintf("room:herd-%d", room), "hello", map[string]int{"room": room}); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(200 * time.Millisecond)
		missing = 0
		for i, c := range clients {
			if c == nil || errs[i] != nil || got[i] {
				continue
			}
			for _, m := range c.Queued() {
				if m.Event == "hello" {
					got[i] = true
				}
			}
			if !got[i] {
				missing++
			}
		}
		if missing > 0 && time.Now().After(deadline) {
			t.Fatalf("%d joined clients got no broadcast to their room within 20 s", missing)
		}
	}
	for _, c := range clients {
		if c != nil {
			_ = c.Close()
		}
	}
	// They leave: every node is back to the background load's sockets.
	left := time.Now()
	for {
		total := 0.0
		for i := 1; i <= 3; i++ {
			total += cl.Metric(t, i, `channelsd_sockets{transport="websocket"}`)
		}
		if int(total) == len(l.cs) {
			break
		}
		if time.Since(left) > 20*time.Second {
			t.Fatalf("20 s after the clients left the nodes still hold %v sockets, want %d", total, len(l.cs))
		}
		time.Sleep(200 * time.Millisecond) // polling the nodes' metrics
	}
	time.Sleep(2 * time.Second)
	l.finish()
	tl := l.account(nil)
	after := memOf(t, cl, 1, 2, 3)
	for i := 1; i <= 3; i++ {
		t.Logf("node %d with 1,000 clients: %s", i, peak[i])
	}
	checkMem(t, before, after)
	*r = row{Scenario: r.Scenario, NodesUp: readyNodes(cl), Nodes: 3, Recovered: joined, Clients: herd,
		Owed: tl.owed, Lost: tl.lost, Dup: tl.dup}
	r.memory(before, after)
}

// dialAsPhoenixJS dials until it succeeds or ctx ends, after a short
// pause each time, as phoenix.js reconnects. A herd on a loaded machine
// can trip the load balancer's own request timeout (HAProxy answers 408
// to a client that takes over 10 s to send its request), which is not the
// node's doing: a node that refuses a socket shows in its refused counter,
// which the test checks separately. redials counts the retries.
func dialAsPhoenixJS(ctx context.Context, url string, opt wsclient.Options, redials *atomic.Int64) (*wsclient.Client, error) {
	for {
		c, err := wsclient.Dial(ctx, url, opt)
		if err == nil || ctx.Err() != nil {
			return c, err
		}
		redials.Add(1)
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(200 * time.Millisecond): // phoenix.js's shortest reconnect delay is 10 ms, then 50, 100, 150, 200...
		}
	}
}
