package conformance

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/transport"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Malformed or wrong-shape frames close the socket with 1007, as
// Phoenix's connection process crashes on them (never 1000, after which
// phoenix.js would not reconnect), and are counted; other sockets carry
// on.
func TestMalformedFrames(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	type bad struct {
		data   string
		binary bool
	}
	cases := map[version][]bad{
		v2: {
			{data: `not json`},
			{data: ``},
			{data: `null`},
			{data: `"string"`},
			{data: `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":"1"}`},
			{data: `[]`},
			{data: `["1","2","conformance:lobby","ping"]`},
			{data: `[null,"2",3,"ping",{}]`},
			{data: `[null,"2","conformance:lobby",4,{}]`},
			{data: `[{},"2","conformance:lobby","ping",{}]`},
			{data: `[null,["2"],"conformance:lobby","ping",{}]`},
			{data: `[null,"2","conformance:lobby","ping",{}`},
			{data: "\x01\x01\x01\x01\x01" + "12to", binary: true}, // kind 1: server-only
			{data: "\x02\x01\x01" + "te", binary: true},           // kind 2: server-only
			{data: "\x09", binary: true},
			{data: "\x00\x01", binary: true},
			{data: "\x00\x05\x05\x05\x05" + "1", binary: true}, // header past the end
			{data: "", binary: true},
		},
		v1: {
			{data: `not json`},
			{data: `[null,"1","phoenix","heartbeat",{}]`},
			{data: `{"topic":"phoenix"}`},
			{data: `{"topic":"phoenix","event":"heartbeat","payload":{}}`},
			{data: `{"topic":1,"event":"heartbeat","payload":{},"ref":"1"}`},
			{data: `{"topic":"phoenix","event":"heartbeat","payload":{},"ref":{}}`},
			{data: "\x00\x01\x01\x01\x01" + "12te", binary: true}, // no binary in V1
		},
	}
	es := tn.Endpoint().Stats()
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			other := tn.dial(t, v)
			jr := other.join(lobby, `{}`)
			for _, b := range cases[v] {
				before := es.MalformedFrames.Load()
				c := tn.dial(t, v)
				c.join(lobby, `{}`)
				c.sendRaw([]byte(b.data), b.binary)
				if st := c.expectClose(1007); st.Reason != "malformed message" {
					t.Errorf("%q (binary %v): close reason %q, want \"malformed message\"", b.data, b.binary, st.Reason)
				}
				if n := es.MalformedFrames.Load(); n <= before {
					t.Errorf("%q (binary %v): MalformedFrames did not grow", b.data, b.binary)
				}
			}
			// The other socket's channel is still joined and answers.
			other.send(jr, "p1", lobby, "ping", `{"alive":true}`)
			other.expectFrame(jr, "p1", lobby, "phx_reply", reply("ok", `{"alive":true}`))
			other.quiet()
		})
	}
}

// A message above the frame size limit closes that socket with 1009; the
// node serves everyone else, and frames up to the limit pass.
func TestOversizedFrame(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	tn := startNode(t, func(c *node.Config) { c.MaxFrameSize = limit })
	other := tn.dial(t, v2)
	other.join(lobby, `{}`)
	big := tn.dial(t, v2)
	big.join(lobby, `{}`)

	// Just under the limit: fine.
	pad := strings.Repeat("x", limit-200)
	ref := big.push(lobby, "ping", `{"pad":"`+pad+`"}`)
	if m := big.awaitReply(ref); m.Status != "ok" || len(m.Payload) < limit-200 {
		t.Fatalf("ping under the limit: %.200s", m)
	}

	big.push(lobby, "ping", `{"pad":"`+strings.Repeat("x", limit+1)+`"}`)
	big.expectClose(1009)

	other.call(lobby, "ping", `{"still":"serving"}`, "ok", `{"still":"serving"}`)
	fresh := tn.dial(t, v1)
	fresh.join(lobby, `{}`)
	fresh.call(lobby, "broadcast", `{"n":1}`, "ok", `{}`)
	other.awaitFrame(nil, nil, lobby, "broadcast", `{"n":1}`)
}

// A channel that crashes takes nothing else down: other channels of the
// socket, and other sockets on the topic, keep working.
func TestCrashIsolation(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v2)
	peer := tn.dial(t, v2)
	c.join(lobby, `{}`)
	c.join("conformance:side", `{}`)
	peer.join(lobby, `{}`)
	for i := 0; i < 3; i++ {
		c.push(lobby, "crash", `{}`)
		c.await("phx_error", wsclient.IsEvent(lobby, "phx_error"))
		c.call("conformance:side", "ping", `{}`, "ok", `{}`)
		peer.call(lobby, "broadcast", fmt.Sprintf(`{"i":%d}`, i), "ok", `{}`)
		peer.awaitFrame(nil, nil, lobby, "broadcast", fmt.Sprintf(`{"i":%d}`, i))
		c.join(lobby, `{}`) // rejoin, as the client would
	}
	c.settle()
}

// A socket that stops reading while broadcasts pour in is closed with 1008
// ("slow consumer"); the other subscribers receive every broadcast, in
// order, and the broadcaster is never held up.
func TestSlowConsumer(t *testing.T) {
	// Not parallel: it moves tens of megabytes. The sender broadcasts
	// faster than the default rate limit allows: turn it off.
	tn := startNode(t, func(c *node.Config) { c.MaxMessagesPerSecond = -1 })
	const topic = "conformance:firehose"
	slow := tn.dialOpts(t, v2, wsclient.Options{Buffer: 1})
	slow.join(topic, `{}`)
	sender := tn.dial(t, v2)
	sender.join(topic, `{}`)
	watcher := tn.dial(t, v1)
	watcher.join(topic, `{}`)

	// slow's client queue holds one message: from the first broadcast on,
	// it stops reading from its connection, and the server's queue for it
	// fills (behind the TCP buffers). Broadcast until the node reports a
	// slow consumer, then a few more.
	pad := strings.Repeat("x", 32<<10)
	stats := tn.WebSocketStats()
	sent, extra := 0, -1
	for extra < 20 {
		if sent == 2000 {
			t.Fatalf("no slow consumer after %d broadcasts of %d bytes", sent, len(pad))
		}
		sender.call(topic, "broadcast", fmt.Sprintf(`{"seq":%d,"pad":%q}`, sent, pad), "ok", `{}`)
		sent++
		if extra >= 0 {
			extra++
		} else if stats.SlowConsumers.Load() > 0 {
			extra = 0
		}
	}

	// The close frame follows what the server had already written, within
	// the transport's close timeout: read it now.
	st := slow.awaitClose()
	if !st.Received || st.Code != 1008 {
		t.Fatalf("slow consumer ended with %v, want close code 1008", st)
	}
	got := 0
	for _, m := range slow.Queued() {
		if m.Event == "broadcast" {
			got++
		}
	}
	if got >= sent {
		t.Fatalf("slow consumer received all %d broadcasts", sent)
	}
	t.Logf("slow consumer closed after %d of %d broadcasts reached it", got, sent)

	// Everyone else got everything, in order.
	for _, c := range []*conn{sender, watcher} {
		for i := 0; i < sent; i++ {
			m := c.await("broadcast", wsclient.IsEvent(topic, "broadcast"))
			var p struct {
				Seq int    `json:"seq"`
				Pad string `json:"pad"`
			}
			payloadOf(t, m, &p)
			if p.Seq != i || p.Pad != pad {
				t.Fatalf("%s: broadcast %d has seq %d (pad %d bytes)", c.v.name, i, p.Seq, len(p.Pad))
			}
		}
		c.quiet()
	}

}

// Shutdown refuses new sockets, closes every open one with 1012 (service
// restart, PROTOCOL.md §5.3; all at once without a drain window), ends
// their channels (presences leave) and returns; afterwards nothing
// listens.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	a := tn.dial(t, v2)
	b := tn.dial(t, v1)
	a.join(lobby, `{"user":"ann"}`)
	b.join(lobby, `{"user":"bob"}`)
	b.awaitState(lobby)

	// Draining: existing sockets work, new ones are refused.
	tn.Endpoint().Runtime().BeginShutdown()
	_, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{})
	var herr *wsclient.HandshakeError
	if !errors.As(err, &herr) || herr.Status != http.StatusServiceUnavailable {
		t.Fatalf("dial while draining: err = %v, want HTTP 503", err)
	}
	a.call(lobby, "ping", `{}`, "ok", `{}`)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	if err := tn.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Fatalf("Shutdown took %v", took)
	}
	a.expectClose(1012)
	b.expectClose(1012)
	if tn.Endpoint().SocketCount() != 0 {
		t.Fatalf("%d sockets left after Shutdown", tn.Endpoint().SocketCount())
	}
	if _, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{}); err == nil {
		t.Fatal("dial after Shutdown succeeded")
	}
}

// A long-poll line that does not decode ends the session, as the same
// message closes a WebSocket with 1007: the next request gets 410, and
// it is counted.
func TestMalformedLongPollLine(t *testing.T) {
	t.Parallel()
	n := startLPNode(t, transport.LongPollConfig{})
	c := n.lpOpen(t, v2)
	c.send(`["1","1","conformance:lobby","phx_join",{}]`)
	c.await(`["1","1","conformance:lobby","phx_reply",{"status":"ok","response":{"topic":"conformance:lobby"}}]`)
	es := n.Endpoint().Stats()
	before := es.MalformedFrames.Load()
	if a := n.request(t, http.MethodPost, c.query(), `["1","2","conformance:lobby","ping"]`, nil); a.Status != 200 && a.Status != 410 {
		t.Fatalf("POST of a malformed line: %s", a.Raw)
	}
	if a := c.poll(); a.Status != 410 {
		t.Fatalf("poll after a malformed line: %s, want status 410", a.Raw)
	}
	if n := es.MalformedFrames.Load(); n != before+1 {
		t.Errorf("MalformedFrames %d, want %d", n, before+1)
	}
}
