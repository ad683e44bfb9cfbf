package conformance

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/node"
)

// Item 27: a disconnect for a socket id closes every socket with that id
// with 1001; other sockets stay open.
func TestItem27_DisconnectByID(t *testing.T) {
	t.Parallel()
	tn := startNode(t)

	t.Run("disconnect_id event", func(t *testing.T) {
		a1 := tn.dial(t, v2, "socket_id", "sid-1")
		a2 := tn.dial(t, v1, "socket_id", "sid-1") // V1 too
		b := tn.dial(t, v2, "socket_id", "sid-2")
		anon := tn.dial(t, v2)
		anon.quiet()
		a1.join(lobby, `{}`)
		a2.join("conformance:other", `{}`)
		b.join(lobby, `{}`)

		b.call(lobby, "disconnect_id", `{"id":"sid-1"}`, "ok", `{}`)
		a1.expectClose(1001)
		a2.expectClose(1001)
		b.quiet()
		anon.quiet()
		// The disconnected socket's channel is gone from the topic.
		b.call(lobby, "broadcast", `{"after":"disconnect"}`, "ok", `{}`)
		b.awaitFrame(nil, nil, lobby, "broadcast", `{"after":"disconnect"}`)
	})

	t.Run("HTTP API", func(t *testing.T) {
		a := tn.dial(t, v2, "socket_id", "sid-3")
		b := tn.dial(t, v2, "socket_id", "sid-4")
		// The server subscribes a socket to its id topic just after its
		// 101 answer: a round trip shows it has.
		a.quiet()
		b.quiet()
		if status := tn.post(t, "/api/disconnect", `{"id":"sid-3"}`); status != http.StatusAccepted {
			t.Fatalf("POST /api/disconnect: status %d, want 202", status)
		}
		a.expectClose(1001)
		b.quiet()
	})

	t.Run("user sockets", func(t *testing.T) {
		// The default application names sockets "user:<user>".
		a := tn.dial(t, v2, "user", "ann")
		a.quiet()
		b := tn.dial(t, v2, "user", "bob")
		b.join(lobby, `{}`)
		b.call(lobby, "disconnect_id", `{"id":"user:ann"}`, "ok", `{}`)
		a.expectClose(1001)
		b.quiet()
	})
}

// Item 28: no server-initiated close that expects the client back uses
// code 1000.
func TestItem28_NoNormalClosureCode(t *testing.T) {
	t.Parallel()
	tn := startNode(t, func(c *node.Config) { c.MaxFrameSize = 16 << 10 })
	notNormal := func(t *testing.T, c *conn, want int) {
		t.Helper()
		st := c.awaitClose()
		if !st.Received || st.Code == 1000 || st.Code != want {
			t.Fatalf("server closed with %v, want close code %d (never 1000)", st, want)
		}
	}
	t.Run("close_socket", func(t *testing.T) {
		c := tn.dial(t, v2)
		c.join(lobby, `{}`)
		c.push(lobby, "close_socket", `{}`)
		notNormal(t, c, 1001)
	})
	t.Run("disconnect", func(t *testing.T) {
		c := tn.dial(t, v2, "socket_id", "bye")
		c.quiet()
		tn.post(t, "/api/disconnect", `{"id":"bye"}`)
		notNormal(t, c, 1001)
	})
	t.Run("frame too big", func(t *testing.T) {
		c := tn.dial(t, v2)
		c.sendRaw([]byte(`[null,"1","phoenix","heartbeat",{"pad":"`+strings.Repeat("x", 20<<10)+`"}]`), false)
		notNormal(t, c, 1009)
	})
	t.Run("invalid UTF-8", func(t *testing.T) {
		c := tn.dial(t, v2)
		c.sendRaw([]byte("[null,\"1\",\"phoenix\",\"heartbeat\",{\"x\":\"\xff\xfe\"}]"), false)
		notNormal(t, c, 1007)
	})
	t.Run("idle timeout", func(t *testing.T) {
		idle := startNode(t, func(c *node.Config) { c.IdleTimeout = 200 * time.Millisecond })
		c := idle.dial(t, v2)
		notNormal(t, c, 1001)
	})
	t.Run("shutdown", func(t *testing.T) {
		other := startNode(t)
		c := other.dial(t, v2)
		c.quiet()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := other.Shutdown(ctx); err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
		// 1012 (service restart), as Phoenix's drainer (PROTOCOL.md §5.3).
		notNormal(t, c, 1012)
	})
}

// Item 29: a socket that sends nothing for the idle timeout is closed; one
// that heartbeats stays open across many timeouts.
func TestItem29_IdleTimeout(t *testing.T) {
	// Not parallel: the heartbeat cadence must not starve behind other
	// tests' work.
	const idle = 300 * time.Millisecond
	tn := startNode(t, func(c *node.Config) { c.IdleTimeout = idle })
	start := time.Now() // before the server can start the idle timer
	silent := tn.dial(t, v2)
	beating := tn.dial(t, v2)

	// Heartbeat every idle/3 until the silent socket has been closed and
	// then for four more idle timeouts, counted in heartbeat replies.
	tick := time.NewTicker(idle / 3)
	defer tick.Stop()
	closed := silent.Done()
	var silentFor time.Duration
	after := 0 // heartbeat replies since the silent socket closed
	for after < 12 {
		select {
		case <-closed:
			closed = nil
			silentFor = time.Since(start)
		case <-tick.C:
			beating.quiet()
			if closed == nil {
				after++
			}
		case <-beating.ctx.Done():
			t.Fatalf("silent socket still open after %v (idle timeout %v)", time.Since(start), idle)
		}
	}
	st := silent.Status()
	if !st.Received || st.Code != 1001 {
		t.Fatalf("idle socket ended with %v, want close code 1001", st)
	}
	if silentFor < idle {
		t.Fatalf("idle socket closed after %v, before the idle timeout %v", silentFor, idle)
	}
	select {
	case <-beating.Done():
		t.Fatalf("heartbeating socket closed: %v", beating.Status())
	default:
	}
	t.Logf("silent socket closed after %v; heartbeating socket alive %v later", silentFor, time.Since(start)-silentFor)
}

// Item 30: the 101st channel on one connection is refused.
func TestItem30_ChannelLimit(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	c := tn.dial(t, v2)
	for i := 0; i < 100; i++ {
		jr := fmt.Sprint(i + 1)
		c.send(jr, jr, fmt.Sprintf("conformance:%d", i), "phx_join", `{}`)
	}
	for i := 0; i < 100; i++ {
		jr, topic := fmt.Sprint(i+1), fmt.Sprintf("conformance:%d", i)
		c.expectFrame(jr, jr, topic, "phx_reply", joinReply(topic))
	}
	c.send("101", "101", "conformance:100", "phx_join", `{}`)
	c.expectFrame("101", "101", "conformance:100", "phx_reply", reply("error", `{"reason":"too many channels joined"}`))
	// The refused join left no channel; the others still work.
	c.send("101", "102", "conformance:100", "ping", `{}`)
	c.expectFrame(nil, "102", "conformance:100", "phx_reply", reply("error", `{"reason":"unmatched topic"}`))
	c.send("100", "103", "conformance:99", "ping", `{}`)
	c.expectFrame("100", "103", "conformance:99", "phx_reply", reply("ok", `{}`))
	// Leaving one makes room for another.
	c.send("1", "104", "conformance:0", "phx_leave", `{}`)
	c.expectFrame("1", "104", "conformance:0", "phx_reply", reply("ok", `{}`))
	c.expectFrame("1", "1", "conformance:0", "phx_close", `{}`)
	c.joinRaw("105", "conformance:100", `{}`)
}
