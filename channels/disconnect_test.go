package channels

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// closeConn records its Close.
type closeConn struct {
	mu   sync.Mutex
	code int
}

func (c *closeConn) Send(Frame) error { return nil }
func (c *closeConn) Close(code int, _ string) {
	c.mu.Lock()
	c.code = code
	c.mu.Unlock()
}
func (c *closeConn) closed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.code
}

// plainPubSub hides pubsub/local's prefix routes: the endpoint then
// subscribes each socket to its id topic.
type plainPubSub struct{ pubsub.PubSub }

// TestDisconnectByID closes the sockets of an id, all of them and only
// them, whether the PubSub routes the id topics as a prefix (an index in
// the endpoint) or the sockets subscribe one by one; and a socket that
// ended is no longer found.
func TestDisconnectByID(t *testing.T) {
	for _, tc := range []struct {
		name    string
		wrap    func(*local.PubSub) pubsub.PubSub
		indexed bool
	}{
		{"prefix route", func(ps *local.PubSub) pubsub.PubSub { return ps }, true},
		{"topic per socket", func(ps *local.PubSub) pubsub.PubSub { return plainPubSub{ps} }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ps := local.New()
			defer ps.Close()
			tracker := presence.NewLocal(ps)
			defer tracker.Close()
			ep, err := NewEndpoint(EndpointConfig{Router: &Router{}, PubSub: tc.wrap(ps), Presence: tracker,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			if (ep.byID != nil) != tc.indexed {
				t.Fatalf("indexed %v, want %v", ep.byID != nil, tc.indexed)
			}
			rt := ep.Runtime()
			open := func(id string) (*Socket, *closeConn) {
				c := &closeConn{}
				return rt.Open(c, V2, Identity{ID: id}), c
			}
			a1, ca1 := open("a")
			a2, ca2 := open("a")
			a3, ca3 := open("a")
			_, cb := open("b")
			_, canon := open("")
			// One of a's sockets ends before the request: nothing
			// reaches it, and the others are still found.
			rt.HandleClose(a2)
			if err := ep.Disconnect(context.Background(), "a"); err != nil {
				t.Fatal(err)
			}
			for i, c := range []*closeConn{ca1, ca3} {
				if c.closed() != CloseGoingAway {
					t.Errorf("socket %d of a: close code %d, want %d", i, c.closed(), CloseGoingAway)
				}
			}
			if ca2.closed() != 0 || cb.closed() != 0 || canon.closed() != 0 {
				t.Errorf("closed beyond a's open sockets: ended %d, b %d, anonymous %d", ca2.closed(), cb.closed(), canon.closed())
			}
			rt.HandleClose(a1)
			rt.HandleClose(a3)
			if err := ep.Disconnect(context.Background(), "b"); err != nil {
				t.Fatal(err)
			}
			if cb.closed() != CloseGoingAway {
				t.Errorf("b: close code %d, want %d", cb.closed(), CloseGoingAway)
			}
			if tc.indexed {
				ep.mu.Lock()
				_, left := ep.byID["a"]
				more := len(ep.moreByID)
				ep.mu.Unlock()
				if left || more != 0 {
					t.Errorf("a's sockets ended, but the index keeps a: %v, %d ids with more sockets", left, more)
				}
			}
		})
	}
}
