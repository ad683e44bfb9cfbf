package cluster

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/transport/lpclient"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// The helpers of TestRollingUpgrade (upgrade_test.go): its bookkeeping
// (what was published when, what each client received, each long-poll
// client's sessions as connections) and a presence wait that reports
// rather than stops.

// settleOrError is settle (presence_test.go) reporting a difference that
// outlasts settleTimeout as an error rather than the end of the test: a
// rolling update has more to check afterwards.
func settleOrError(t *testing.T, what string, check func(context.Context) (string, error)) {
	t.Helper()
	began := time.Now()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		diff, err := check(ctx)
		cancel()
		switch {
		case err == nil && diff == "":
			t.Logf("%s: equal to the model after %v", what, time.Since(began).Round(time.Millisecond))
			return
		case time.Since(began) > settleTimeout:
			t.Errorf("%s: still differs from the model after %v: %s (%v)", what, settleTimeout, diff, err)
			return
		}
		time.Sleep(100 * time.Millisecond) // polling interval
	}
}

// ---- the ledger of TestRollingUpgrade ----

// upgradePubKey names one numbered broadcast: its stream ("tick" for the
// API's, "ws:<user>" or "lp:<user>" for a client's new_msg), room and
// number.
type upgradePubKey struct {
	stream string
	room   int
	n      int
}

type upgradePub struct {
	start, end time.Time
	ok         bool   // acknowledged: 202, or the push's ok reply
	by         string // the node that served the API call ("" for pushes)
}

// upgradePubs records every publish and matches push replies to them.
type upgradePubs struct {
	mu      sync.Mutex
	pubs    map[upgradePubKey]upgradePub // guarded by mu
	pending map[string]upgradePubKey     // stream + " " + ref -> push awaiting its reply; guarded by mu
	// early are replies that arrived before their push was registered
	// (the reply can beat Push's return); guarded by mu.
	early map[string]earlyReply
}

type earlyReply struct {
	at time.Time
	ok bool
}

func newUpgradePubs() *upgradePubs {
	return &upgradePubs{pubs: map[upgradePubKey]upgradePub{}, pending: map[string]upgradePubKey{}, early: map[string]earlyReply{}}
}

func (p *upgradePubs) begin(k upgradePubKey) {
	p.mu.Lock()
	p.pubs[k] = upgradePub{start: time.Now()}
	p.mu.Unlock()
}

func (p *upgradePubs) end(k upgradePubKey, ok bool, by string) {
	p.mu.Lock()
	pb := p.pubs[k]
	pb.end, pb.ok, pb.by = time.Now(), ok, by
	p.pubs[k] = pb
	p.mu.Unlock()
}

// awaitReply leaves k unacknowledged until the reply to ref arrives
// (replied); a push whose connection ends first is never acknowledged.
func (p *upgradePubs) awaitReply(stream, ref string, k upgradePubKey) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := stream + " " + string(channels.StringRef(ref))
	if r, ok := p.early[id]; ok {
		delete(p.early, id)
		pb := p.pubs[k]
		pb.end, pb.ok = r.at, r.ok
		p.pubs[k] = pb
		return
	}
	p.pending[id] = k
}

func (p *upgradePubs) replied(stream string, m wsclient.Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := stream + " " + string(m.Ref)
	k, ok := p.pending[id]
	if !ok {
		p.early[id] = earlyReply{time.Now(), m.Status == "ok"}
		return
	}
	delete(p.pending, id)
	pb := p.pubs[k]
	pb.end, pb.ok = time.Now(), m.Status == "ok"
	p.pubs[k] = pb
}

func (p *upgradePubs) snapshot() map[upgradePubKey]upgradePub {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make(map[upgradePubKey]upgradePub, len(p.pubs))
	for k, v := range p.pubs {
		out[k] = v
	}
	return out
}

// lastOK is, per room and stream, the last acknowledged number.
func (p *upgradePubs) lastOK() map[int]map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[int]map[string]int{}
	for k, v := range p.pubs {
		if !v.ok {
			continue
		}
		if out[k.room] == nil {
			out[k.room] = map[string]int{}
		}
		out[k.room][k.stream] = max(out[k.room][k.stream], k.n)
	}
	return out
}

// upgradeReceiver counts the numbered broadcasts one client receives.
type upgradeReceiver struct {
	user, topic string
	room        int
	// conns are the client's connections (sessions), their ends moved
	// back to the drain that closed them; connected tells whether it is
	// joined now. Set once, before the publishers start.
	conns     func() []wsclient.Conn
	connected func() bool

	mu  sync.Mutex
	got map[string]map[int]int // stream -> number -> times; guarded by mu
}

func newUpgradeReceiver(user string, room int, topic string) *upgradeReceiver {
	return &upgradeReceiver{user: user, room: room, topic: topic, got: map[string]map[int]int{}}
}

func (r *upgradeReceiver) onMessage(m wsclient.Message) {
	if m.Err != nil || m.Topic != r.topic {
		return
	}
	var stream string
	var n int
	switch m.Event {
	case "tick":
		var p struct{ N int }
		if json.Unmarshal(m.Payload, &p) != nil {
			return
		}
		stream, n = "tick", p.N
	case "new_msg":
		var p struct {
			Body struct{ N int }
			User string
		}
		if json.Unmarshal(m.Payload, &p) != nil {
			return
		}
		kind := "ws:"
		if strings.HasPrefix(p.User, "lp-") {
			kind = "lp:"
		}
		stream, n = kind+p.User, p.Body.N
	default:
		return
	}
	r.mu.Lock()
	if r.got[stream] == nil {
		r.got[stream] = map[int]int{}
	}
	r.got[stream][n]++
	r.mu.Unlock()
}

func (r *upgradeReceiver) times(stream string, n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[stream][n]
}

func (r *upgradeReceiver) received() map[string]map[int]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[int]int, len(r.got))
	for s, m := range r.got {
		out[s] = make(map[int]int, len(m))
		for n, c := range m {
			out[s][n] = c
		}
	}
	return out
}

// upgradeLP is a long-poll client of TestRollingUpgrade: it receives like
// the WebSocket clients and pushes its own numbered new_msg.
type upgradeLP struct {
	c    *lpclient.Client
	room int
	recv *upgradeReceiver

	mu    sync.Mutex
	joins []time.Time // when each session had joined the room; guarded by mu
}

// run hands every message to the receiver and the push replies to pubs,
// and notes each rejoin, until ctx ends or the client closes.
func (lp *upgradeLP) run(ctx context.Context, pubs *upgradePubs, done chan struct{}) {
	defer close(done)
	stream := "lp:" + lp.recv.user
	for {
		m, err := lp.c.Next(ctx)
		if err != nil {
			return
		}
		lp.recv.onMessage(m)
		if m.Err != nil || m.Event != channels.EventReply || m.Topic != lp.recv.topic {
			continue
		}
		if m.Ref == channels.StringRef(lp.c.JoinRef(lp.recv.topic)) {
			if m.Status == "ok" {
				lp.mu.Lock()
				lp.joins = append(lp.joins, time.Now())
				lp.mu.Unlock()
			}
			continue
		}
		pubs.replied(stream, m)
	}
}

// connected: the last session has joined and is not lost.
func (lp *upgradeLP) connected() bool {
	lp.mu.Lock()
	last := lp.joins[len(lp.joins)-1]
	lp.mu.Unlock()
	for _, l := range lp.c.Losses() {
		if l.At.After(last) {
			return false
		}
	}
	return lp.c.Token() != ""
}

// conns are the sessions as connections: each from its join to its
// loss, the loss moved back to the latest drain between them (the
// client learns of a drained session at its next poll).
func (lp *upgradeLP) conns(drains []time.Time) []wsclient.Conn {
	lp.mu.Lock()
	joins := slices.Clone(lp.joins)
	lp.mu.Unlock()
	losses := lp.c.Losses()
	out := make([]wsclient.Conn, 0, len(joins))
	for _, j := range joins {
		cn := wsclient.Conn{Opened: j, Joined: j}
		for _, l := range losses {
			if l.At.After(j) {
				cn.Ended = l.At
				break
			}
		}
		if !cn.Ended.IsZero() {
			for _, d := range drains {
				if d.After(j) && d.Before(cn.Ended) {
					cn.Ended = d
				}
			}
		}
		out = append(out, cn)
	}
	return out
}
