//go:build !race

// The race detector changes heap layout; this test measures the real
// thing (make test-norace).

package channels

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// idleSocketBudget bounds TestIdleSocketFootprint's live heap per socket:
// 624 bytes when it was set (871 before the join kept its history
// position in its own struct, the socket its serial as a number, and the
// socket ids moved from a subscription each to an index), of which the
// in-memory tracker's entry is about 240.
const idleSocketBudget = 680

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestJoinRefFootprint joins topics with long join_refs and measures what
// the joins keep. The decoded header (refs, topic and event in one string)
// must not outlive the frame: a subscription kept the topic, a substring
// of it, and so the whole header, ref included (issue: 429 MiB of refs
// uploaded over 5 sockets pinned 861 MiB). MaxRefLength refuses such refs
// by default; the test turns it off to check that nothing is retained
// even so.
func TestJoinRefFootprint(t *testing.T) {
	const (
		joins  = 32
		refLen = 256 << 10
	)
	e := newTestEnv(t, EndpointConfig{MaxRefLength: -1})
	s, c := e.open(t, V2)
	before := liveHeap()
	for i := range joins {
		f := []byte(`["` + strings.Repeat("7", refLen) + `","1","room:` + strconv.Itoa(i) + `","phx_join",{}]`)
		s.handleFrame(f, false)
		// The join reply echoes the ref; a transport sends it and lets
		// it go, as it does the frame.
		c.take()
	}
	after := liveHeap()
	if n := e.ep.Stats().Channels.Load(); n != joins {
		t.Fatalf("%d channels joined, want %d", n, joins)
	}
	grown := int64(after) - int64(before)
	t.Logf("%d joins with %d KiB join_refs: live heap grew %d KiB", joins, refLen>>10, grown>>10)
	// Each join keeps its own copy of the join_ref (it is echoed in
	// phx_close and compared on every message); nothing more than that
	// and a little bookkeeping.
	if limit := int64(joins*refLen + 1<<20); grown > limit {
		t.Errorf("live heap grew %d KiB, want at most %d KiB: joins keep their frames' headers", grown>>10, limit>>10)
	}
	runtime.KeepAlive(s)
}

// idleRoom is a room as the default app's: its user is the socket id's
// (as the app's rooms read it), tracked in AfterJoin with a small meta.
type idleRoom struct{ user string }

func (r *idleRoom) Join(s *ChannelSocket, _ Payload) (any, error) {
	r.user, _ = strings.CutPrefix(s.SocketID(), "user:")
	return nil, nil
}
func (r *idleRoom) HandleIn(*ChannelSocket, In) Result { return Ok(nil) }
func (r *idleRoom) AfterJoin(s *ChannelSocket) {
	_ = s.Track(r.user, map[string]int64{"online_at": 1796614836466})
}

type discardConn struct{}

func (discardConn) Send(Frame) error  { return nil }
func (discardConn) Close(int, string) {}

// TestIdleSocketFootprint measures what an idle socket joined to a room
// with history and presence keeps in this package and the ones it drives
// (the subscription table, the in-memory tracker): the Socket, its join
// and its channel, the socket id's subscription, the presence entry. The
// node's figure (BENCHMARKS.md, "RSS per idle joined socket in presence
// rooms") is this plus the transport's connection and the runtime's
// share; the bound keeps a change from growing it unnoticed.
func TestIdleSocketFootprint(t *testing.T) {
	const (
		n     = 3000
		rooms = 30
	)
	ps := local.New()
	r := &Router{}
	r.Handle("room:*", func(string) Channel { return &idleRoom{} })
	r.History("room:*", pubsub.HistoryOptions{Size: 10, TTL: time.Hour})
	ps.SetHistoryPolicy(r.HistoryPolicy(nil))
	tracker := presence.NewLocalWith(ps, presence.LocalOptions{MaxCoalesce: -1})
	ep, err := NewEndpoint(EndpointConfig{Router: r, PubSub: ps, Presence: tracker,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tracker.Close(); _ = ps.Close() }()
	// Every room has a history epoch, as a room whose presence diffs
	// went out has: the joins read a position.
	for i := range rooms {
		if err := ps.Publish(context.Background(), &pubsub.Message{Topic: "room:" + strconv.Itoa(i), Event: "x", Payload: []byte("{}")}); err != nil {
			t.Fatal(err)
		}
	}
	// What the transport and the connect handler own is made first: the
	// socket ids and the frames.
	ids := make([]string, n)
	frames := make([][]byte, n)
	for i := range n {
		ids[i] = "user:u" + strconv.Itoa(i)
		frames[i] = []byte(`["1","1","room:` + strconv.Itoa(i%rooms) + `","phx_join",{}]`)
	}
	rt := ep.Runtime()
	socks := make([]*Socket, n)
	// A socket and join first, so that first-use allocations (pools, the
	// tables themselves) are not counted.
	warm := rt.Open(discardConn{}, V2, Identity{ID: "user:warm"})
	rt.HandleFrame(warm, []byte(`["1","1","room:0","phx_join",{}]`), false)
	before := liveHeap()
	for i := range n {
		socks[i] = rt.Open(discardConn{}, V2, Identity{ID: ids[i]})
		rt.HandleFrame(socks[i], frames[i], false)
	}
	after := liveHeap()
	if got := tracker.Entries(); got != n+1 {
		t.Fatalf("%d presence entries, want %d", got, n+1)
	}
	per := float64(int64(after)-int64(before)) / n
	t.Logf("per idle joined socket: %.0f bytes of live heap (Socket %d, ChannelSocket %d bytes)",
		per, unsafe.Sizeof(Socket{}), unsafe.Sizeof(ChannelSocket{}))
	if per > idleSocketBudget {
		t.Errorf("%.0f bytes of live heap per idle joined socket, want at most %d", per, idleSocketBudget)
	}
	runtime.KeepAlive(socks)
	runtime.KeepAlive(frames)
}
