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

	n.Endpoint().CloseOldest(1, n.Endpoint().Generation(), channels.CloseServiceRestart, "moving")
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
