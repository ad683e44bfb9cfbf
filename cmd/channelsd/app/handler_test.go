package app

import (
	"context"
	"reflect"
	"testing"

	"github.com/channelsd/channelsd/channels"
)

func TestSocketHandlerIdentity(t *testing.T) {
	tests := []struct {
		name        string
		conformance bool
		params      map[string]string
		wantID      string
		wantAssigns map[string]any
	}{
		{"anonymous", false, map[string]string{"vsn": "2.0.0"}, "", nil},
		{"user", false, map[string]string{"user": "ann"}, "user:ann", nil}, // rooms read the user from the id
		{"empty user", false, map[string]string{"user": ""}, "", nil},
		{"socket_id ignored without conformance", false, map[string]string{"socket_id": "s1"}, "", nil},
		{"socket_id ignored, user kept", false, map[string]string{"socket_id": "s1", "user": "ann"}, "user:ann", nil},
		{"conformance anonymous", true, map[string]string{}, "", nil},
		{"conformance user", true, map[string]string{"user": "bob"}, "user:bob", nil},
		{"conformance socket_id", true, map[string]string{"socket_id": "s1"}, "s1", nil},
		{"conformance socket_id wins", true, map[string]string{"socket_id": "s1", "user": "bob"}, "s1", map[string]any{"user": "bob"}},
		{"conformance empty socket_id", true, map[string]string{"socket_id": "", "user": "bob"}, "user:bob", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := SocketHandler(Options{Conformance: tt.conformance})
			id, err := h.Connect(context.Background(), &channels.ConnectInfo{Params: tt.params})
			if err != nil {
				t.Fatalf("Connect: %v", err)
			}
			if id.ID != tt.wantID {
				t.Errorf("ID = %q, want %q", id.ID, tt.wantID)
			}
			if len(id.Assigns) != len(tt.wantAssigns) || (len(tt.wantAssigns) > 0 && !reflect.DeepEqual(id.Assigns, tt.wantAssigns)) {
				t.Errorf("Assigns = %v, want %v", id.Assigns, tt.wantAssigns)
			}
		})
	}
}

func TestRouter(t *testing.T) {
	off := Router(Options{})
	if _, ok := off.Match("room:lobby"); !ok {
		t.Error("room:lobby not routed")
	}
	if _, ok := off.Match("conformance:x"); ok {
		t.Error("conformance:x routed with Conformance off")
	}
	if _, ok := off.Match("other:x"); ok {
		t.Error("other:x routed")
	}
	// Router leaves the configuration's history out: nothing for the
	// PubSub to do per publish.
	if off.HistoryPolicy(nil) != nil {
		t.Error("Router has a history policy")
	}
	on := Router(Options{Conformance: true})
	for _, topic := range []string{"room:lobby", "conformance:x", "conformance:forbidden"} {
		if _, ok := on.Match(topic); !ok {
			t.Errorf("%s not routed with Conformance on", topic)
		}
	}
}

// Disconnect by id reaches a socket named after its user.
func TestDisconnectByUserID(t *testing.T) {
	e := newEnv(t, Options{})
	ann := e.connect(map[string]string{"user": "ann"})
	bob := e.connect(map[string]string{"user": "bob"})
	if err := e.ep.Disconnect(context.Background(), "user:ann"); err != nil {
		t.Fatal(err)
	}
	if c := <-ann.conn.closed; c.code != channels.CloseGoingAway {
		t.Errorf("close code %d, want 1001", c.code)
	}
	select {
	case c := <-bob.conn.closed:
		t.Errorf("bob closed too: %+v", c)
	default:
	}
}
