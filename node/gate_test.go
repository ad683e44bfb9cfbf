package node

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"math"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/redis"
)

// rosterPresence is the in-memory tracker plus LiveNodes, as a Redis
// tracker offers it.
type rosterPresence struct {
	presence.Tracker
	nodes []string
	err   error
}

func (r rosterPresence) LiveNodes(context.Context) ([]string, error) { return r.nodes, r.err }

// slowReports is an interval no test waits out: what happens within one
// comes from the prompt reports and the roster.
const slowReports = time.Minute

func startWithRoster(t *testing.T, ps sharedPubSub, id string, roster []string, err error) *Node {
	t.Helper()
	return startListening(t, Config{NodeID: id, PubSub: ps, ReportInterval: slowReports,
		Presence: rosterPresence{Tracker: presence.NewLocal(ps), nodes: roster, err: err}})
}

// awaitGate waits until node n's Gate answers want for the newer
// envelope, well within its TTL (three slow intervals).
func awaitGate(t *testing.T, n *Node, what string, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for n.Gate().MayWrite(redis.FormEnvelope, 3, time.Now()) != want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s's Gate never answered %v", what, n.cfg.NodeID, want)
		}
		time.Sleep(5 * time.Millisecond) // polling: the Gate has no event to await
	}
}

// A node seeded with the nodes live at its start opens its Gate once each
// has reported, long before three intervals; a roster node not heard
// from keeps it closed; a node of the floor closes every Gate at once.
func TestGateOpensOnceTheLiveNodesReported(t *testing.T) {
	ps := newShared()
	a := startWithRoster(t, ps, "a", []string{"a"}, nil)
	awaitGate(t, a, "a alone", true)

	b := startWithRoster(t, ps, "b", []string{"a", "b", "c"}, nil)
	awaitView(t, b, "b hears a", func(v []NodeReport) bool { return len(v) == 2 })
	if b.Gate().MayWrite(redis.FormEnvelope, 3, time.Now()) {
		t.Fatal("b's Gate open with roster node c not heard from")
	}
	c := startWithRoster(t, ps, "c", []string{"a", "b", "c"}, nil)
	for _, n := range []*Node{a, b, c} {
		awaitGate(t, n, "every node reported", true)
	}
	err := ps.Publish(context.Background(), &pubsub.Message{Topic: clusterTopic, Event: "report",
		Payload: []byte(`{"node":"old","started":1,"sent":` + itoa(time.Now().UnixMilli()) + `}`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Node{a, b, c} {
		if n.Gate().MayWrite(redis.FormEnvelope, 3, time.Now()) {
			t.Fatalf("%s's Gate open next to a node of the floor", n.cfg.NodeID)
		}
	}
}

// Without a roster (the tracker cannot say, or Redis did not answer) the
// Gate waits out its TTL as before, whoever has reported.
func TestGateWithoutRosterWaitsItsTTL(t *testing.T) {
	ps := newShared()
	startWithRoster(t, ps, "a", []string{"a"}, nil)
	b := startWithRoster(t, ps, "b", nil, errors.New("redis: down"))
	awaitView(t, b, "b hears a", func(v []NodeReport) bool { return len(v) == 2 })
	if b.Gate().MayWrite(redis.FormEnvelope, 3, time.Now()) {
		t.Fatal("b's Gate open before its TTL without a roster")
	}
}

// A starting node hears every running node within a round trip, not an
// interval: each answers its first report with one of its own. So does a
// node restarted under the same id (a new Started).
func TestNewNodeHearsEveryNodeAtOnce(t *testing.T) {
	ps := newShared()
	a := startListening(t, Config{NodeID: "a", PubSub: ps, ReportInterval: slowReports})
	b := startListening(t, Config{NodeID: "b", PubSub: ps, ReportInterval: slowReports})
	awaitView(t, b, "b hears a", func(v []NodeReport) bool { return len(v) == 2 })
	if err := b.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	for time.Now().UnixMilli() == b.started.UnixMilli() {
		time.Sleep(time.Millisecond) // a restart within the same millisecond is not told apart
	}
	b2 := startListening(t, Config{NodeID: "b", PubSub: ps, ReportInterval: slowReports})
	awaitView(t, b2, "the restarted b hears a", func(v []NodeReport) bool { return len(v) == 2 })
	awaitView(t, a, "a keeps both", func(v []NodeReport) bool { return len(v) == 2 })
}

// reportCounter counts the reports of one node on clusterTopic.
type reportCounter struct {
	node string
	n    atomic.Int64
}

func (c *reportCounter) SubscriberID() string { return "test#count" }

func (c *reportCounter) Deliver(m *pubsub.Message) {
	var r NodeReport
	if json.Unmarshal(m.Payload, &r) == nil && r.Node == c.node {
		c.n.Add(1)
	}
}

// Many new nodes at once (a cluster starting together) are answered by a
// report per promptGap, not a report each.
func TestPromptReportsAreRateLimited(t *testing.T) {
	ps := newShared()
	count := &reportCounter{node: "a"}
	if err := ps.Subscribe(clusterTopic, count); err != nil {
		t.Fatal(err)
	}
	a := startListening(t, Config{NodeID: "a", PubSub: ps, ReportInterval: slowReports})
	awaitView(t, a, "a's first report", func(v []NodeReport) bool { return len(v) == 1 })
	began := time.Now()
	const newcomers = 40
	for i := range newcomers {
		err := ps.Publish(context.Background(), &pubsub.Message{Topic: clusterTopic, Event: "report",
			Payload: []byte(`{"node":"x` + itoa(int64(i)) + `","started":1,"sent":1}`)})
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond) // pacing: nodes starting over 0.4 s, not all in one instant
	}
	deadline := time.Now().Add(10 * time.Second)
	for count.n.Load() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no prompt report for the new nodes")
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(3 * promptGap) // what must not happen: more reports
	// The first report, then at most one per promptGap since the flood
	// began, and one held back to its end.
	limit := 2 + int64(math.Ceil(float64(time.Since(began))/float64(promptGap)))
	if got := count.n.Load(); got > limit {
		t.Fatalf("a sent %d reports for %d new nodes in %v, want at most %d", got, newcomers, time.Since(began).Round(time.Millisecond), limit)
	}
}

// gatedShared is the shared in-process PubSub taking the Gate, as a Redis
// PubSub does: a node on it reports ready only once its Gate is settled.
type gatedShared struct{ sharedPubSub }

func (gatedShared) SetGate(*redis.Gate) {}

// A node whose roster lists a node not heard from yet answers /readyz 503
// (it would send history broadcasts without their position) until that
// node reports; a node alone is ready at once.
func TestNotReadyUntilTheRosterReported(t *testing.T) {
	ps := gatedShared{newShared()}
	ready := func(n *Node) (int, string) {
		t.Helper()
		res, err := http.Get("http://" + n.Addr().String() + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	awaitReady := func(n *Node, what string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, _ := ready(n)
			if code == http.StatusOK {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %s never ready", what, n.cfg.NodeID)
			}
			time.Sleep(5 * time.Millisecond) // polling: the probe is what a load balancer polls
		}
	}
	a := startListening(t, Config{NodeID: "a", PubSub: ps, ReportInterval: slowReports,
		Presence: rosterPresence{Tracker: presence.NewLocal(ps), nodes: []string{"a"}}})
	awaitReady(a, "a alone")
	b := startListening(t, Config{NodeID: "b", PubSub: ps, ReportInterval: slowReports,
		Presence: rosterPresence{Tracker: presence.NewLocal(ps), nodes: []string{"a", "b", "c"}}})
	awaitView(t, b, "b hears a", func(v []NodeReport) bool { return len(v) == 2 })
	if code, body := ready(b); code != http.StatusServiceUnavailable || !strings.Contains(body, "other nodes' reports") {
		t.Fatalf("b's /readyz with roster node c silent: %d %q, want 503 waiting for the reports", code, body)
	}
	err := ps.Publish(context.Background(), &pubsub.Message{Topic: clusterTopic, Event: "report",
		Payload: []byte(`{"node":"c","started":1,"sent":` + itoa(time.Now().UnixMilli()) + `}`)})
	if err != nil {
		t.Fatal(err)
	}
	awaitReady(b, "c reported")
}
