package redis

import (
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// TestNotedTops: the node notes a read's Top and then each position it
// delivers, and forgets them while its connection is down and after it
// comes back (broadcasts published meanwhile never reached it).
func TestNotedTops(t *testing.T) {
	srv := startRedis(t)
	a := historyNode(t, srv, "a", 10, time.Minute, true)
	other := historyNode(t, srv, "other", 10, time.Minute, true)
	r := &recorder{id: "r"}
	mustSubscribe(t, a, "room:1", r)
	syncAll(t, a)
	publishAt(t, other, "room:1", "before")
	r.waitCount(t, 1)

	top, stamp, ok := a.NotedTop("room:1", time.Hour)
	if ok {
		t.Fatalf("a note before any read: %v", top)
	}
	res := readHistory(t, a, "room:1", pubsub.HistoryQuery{})
	a.NoteTop("room:1", res.Top, stamp)
	if top, _, ok := a.NotedTop("room:1", time.Hour); !ok || top != res.Top {
		t.Fatalf("after a read: %v, %v; want %v", top, ok, res.Top)
	}

	// Another node's broadcast moves the note when it is delivered here.
	pos := publishAt(t, other, "room:1", "x")
	r.waitCount(t, 2)
	if top, _, ok := a.NotedTop("room:1", time.Hour); !ok || top != pos {
		t.Fatalf("after a delivery: %v, %v; want %v", top, ok, pos)
	}

	srv.Stop()
	eventually(t, 10*time.Second, "the connection to be marked lost", func() bool { return !a.Stats().Connected })
	if top, _, ok := a.NotedTop("room:1", time.Hour); ok {
		t.Fatalf("a note while disconnected: %v", top)
	}
	srv.Start()
	eventually(t, 10*time.Second, "the connection to come back", func() bool { return a.Stats().Connected })
	if top, _, ok := a.NotedTop("room:1", time.Hour); ok {
		t.Fatalf("a note from before the outage: %v", top)
	}
}
