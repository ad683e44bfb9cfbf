package wsclient_test

import (
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/test/nodetest"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// A Reconnecting client against a real node: closed by the server with
// 1012 (as a drain or rebalancing does), it reconnects, rejoins its room
// and goes on receiving its broadcasts; Close stops it for good.
func TestReconnectingRejoinsAfterServerClose(t *testing.T) {
	n := nodetest.Start(t)

	var mu sync.Mutex
	var got []string
	joined := make(chan int, 4)
	ctx := testCtx(t)
	rc, err := wsclient.DialReconnecting(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.ReconnectOptions{
		Options: wsclient.Options{Params: map[string]string{"user": "ann"}},
		OnMessage: func(m wsclient.Message) {
			if m.Event == "new_msg" {
				mu.Lock()
				got = append(got, string(m.Payload))
				mu.Unlock()
			}
		},
		OnJoined: func(_ string, conn int) { joined <- conn },
	}, "room:rc", map[string]string{"user": "ann"})
	if err != nil {
		t.Fatal(err)
	}
	if c := <-joined; c != 0 {
		t.Fatalf("first join on connection %d", c)
	}

	n.Endpoint().Runtime().CloseOldest(1, n.Endpoint().Runtime().Generation(), channels.CloseServiceRestart, "moving")
	select {
	case c := <-joined:
		if c != 1 {
			t.Fatalf("rejoin on connection %d, want 1", c)
		}
	case <-ctx.Done():
		t.Fatal("no rejoin after the server closed the socket")
	}
	if err := n.Endpoint().Broadcast(ctx, "room:rc", "new_msg", map[string]string{"body": "after"}); err != nil {
		t.Fatal(err)
	}
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 1 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the broadcast after the rejoin never arrived")
		case <-time.After(5 * time.Millisecond): // polling a slice the client's goroutine fills
		}
	}
	conns := rc.Conns()
	if len(conns) != 2 || conns[0].Status.Code != channels.CloseServiceRestart || conns[0].Ended.IsZero() || conns[1].Joined.IsZero() || !conns[1].Ended.IsZero() {
		t.Fatalf("connections %+v", conns)
	}
	if rc.Reconnects() != 1 || !rc.Connected() {
		t.Fatalf("reconnects %d connected %v", rc.Reconnects(), rc.Connected())
	}
	if err := rc.Close(); err != nil {
		t.Fatal(err)
	}
	if rc.Connected() {
		t.Fatal("connected after Close")
	}
}

// A channel the server ends with phx_error (the conformance channel's
// crash) is joined again on the same connection, as phoenix.js does: the
// phx_error reaches OnMessage, the params function is called again for
// the rejoin, and its ok reply goes to OnJoinReply, not OnMessage.
func TestReconnectingRejoinsAfterPhxError(t *testing.T) {
	n := nodetest.Start(t)
	ctx := testCtx(t)
	const topic = "conformance:rejoin"

	var mu sync.Mutex
	calls := 0
	params := func() any {
		mu.Lock()
		defer mu.Unlock()
		calls++
		return map[string]int{"call": calls}
	}
	events := make(chan string, 16)
	replies := make(chan wsclient.Message, 4)
	rc, err := wsclient.DialReconnecting(ctx, "ws://"+n.Addr().String()+"/socket/websocket", wsclient.ReconnectOptions{
		RejoinAfter: func(int) time.Duration { return 10 * time.Millisecond },
		OnMessage:   func(m wsclient.Message) { events <- m.Event },
		OnJoinReply: func(_ string, conn int, m wsclient.Message) {
			if conn != 0 {
				t.Errorf("join reply on connection %d, want 0", conn)
			}
			replies <- m
		},
	}, topic, params)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	first := <-replies
	if _, err := rc.Push(topic, "crash", nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev != "phx_error" {
			t.Fatalf("first message %q, want phx_error", ev)
		}
	case <-ctx.Done():
		t.Fatal("no phx_error after the crash")
	}
	var again wsclient.Message
	select {
	case again = <-replies:
	case <-ctx.Done():
		t.Fatal("no rejoin after phx_error")
	}
	if again.Status != "ok" || again.Ref == first.Ref {
		t.Fatalf("rejoin reply %s after first %s", again, first)
	}
	mu.Lock()
	c := calls
	mu.Unlock()
	if c != 2 {
		t.Fatalf("params evaluated %d times, want 2 (join, rejoin)", c)
	}
	if _, err := rc.Push(topic, "broadcast", map[string]int{"n": 1}); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case ev := <-events:
			if ev == "broadcast" {
				if rc.Reconnects() != 0 {
					t.Fatalf("reconnected %d times; the rejoin is on the same connection", rc.Reconnects())
				}
				return
			}
		case <-ctx.Done():
			t.Fatal("the rejoined channel does not receive its broadcast")
		}
	}
}
