package channels_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/local"
)

// History and recovery (recovery.go, PROTOCOL.md §12), tested through
// the endpoint's exported API over pubsub/local's history.

// frameConn records what a socket is sent.
type frameConn struct {
	mu     sync.Mutex
	frames []channels.Frame
}

func (c *frameConn) Send(f channels.Frame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.frames = append(c.frames, f)
	return nil
}

func (c *frameConn) Close(int, string) {}

// texts shows frames in failure messages.
func texts(fs []channels.Frame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = string(f.Data)
	}
	return out
}

func (c *frameConn) take() []channels.Frame {
	c.mu.Lock()
	defer c.mu.Unlock()
	f := c.frames
	c.frames = nil
	return f
}

// histChannel relays its client's events: "all" with Broadcast, "from"
// with BroadcastFrom. It hands its ChannelSocket and its end to the test.
type histChannel struct {
	joined     chan *channels.ChannelSocket
	terminated chan channels.Reason
	intercepts []string
	response   any
}

func (h *histChannel) Join(s *channels.ChannelSocket, _ channels.Payload) (any, error) {
	if h.joined != nil {
		h.joined <- s
	}
	return h.response, nil
}

func (h *histChannel) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	var err error
	switch in.Event {
	case "all":
		err = s.Broadcast(in.Event, in.Payload)
	case "from":
		err = s.BroadcastFrom(in.Event, in.Payload)
	}
	if err != nil {
		return channels.ErrorReply(map[string]string{"reason": err.Error()})
	}
	return channels.Ok(nil)
}

func (h *histChannel) Terminate(_ *channels.ChannelSocket, r channels.Reason) {
	if h.terminated != nil {
		h.terminated <- r
	}
}

// interceptChannel intercepts "new_msg" and pushes it on as "out", so
// that the test sees which broadcasts went through HandleOut.
type interceptChannel struct {
	histChannel
	outs chan struct{}
}

func (*interceptChannel) Intercepts() []string { return []string{"new_msg"} }

func (c *interceptChannel) HandleOut(s *channels.ChannelSocket, out channels.Out) {
	_ = s.Push("out", out.Payload)
	c.outs <- struct{}{}
}

type histEnv struct {
	ep *channels.Endpoint
	ps *local.PubSub
}

// newHistEnv serves "room:*" (history of size, unless size is 0) and
// "plain:*" (no history) with channels made by factory, over ps (a fresh
// pubsub/local when nil) or a wrapper of it.
func newHistEnv(t testing.TB, size int, factory channels.ChannelFactory, wrap func(*local.PubSub) pubsub.PubSub) *histEnv {
	t.Helper()
	ps := local.New()
	r := &channels.Router{}
	r.Handle("room:*", factory)
	r.Handle("plain:*", factory)
	if size > 0 {
		r.History("room:*", pubsub.HistoryOptions{Size: size, TTL: time.Minute})
	}
	ps.SetHistoryPolicy(r.HistoryPolicy(nil))
	var eps pubsub.PubSub = ps
	if wrap != nil {
		eps = wrap(ps)
	}
	tracker := presence.NewLocal(ps)
	ep, err := channels.NewEndpoint(channels.EndpointConfig{
		Router: r, PubSub: eps, Presence: tracker,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = tracker.Close()
		_ = ps.Close()
	})
	return &histEnv{ep: ep, ps: ps}
}

func relay(string) channels.Channel { return &histChannel{} }

// socket is a channels.Socket driven as a transport drives it, through
// its endpoint's Runtime.
type socket struct {
	rt *channels.Runtime
	s  *channels.Socket
}

func openSocket(ep *channels.Endpoint, c channels.Conn, ser channels.Serializer) socket {
	rt := ep.Runtime()
	return socket{rt, rt.Open(c, ser, channels.Identity{})}
}

func (s socket) HandleFrame(data []byte, binary bool) { s.rt.HandleFrame(s.s, data, binary) }
func (s socket) HandleClose()                         { s.rt.HandleClose(s.s) }

func (e *histEnv) open(t *testing.T, ser channels.Serializer) (socket, *frameConn) {
	c := &frameConn{}
	s := openSocket(e.ep, c, ser)
	t.Cleanup(s.HandleClose)
	return s, c
}

// publish broadcasts n messages {"n": from..} on topic and returns the
// position of the last.
func (e *histEnv) publish(t testing.TB, topic string, from, n int) pubsub.Position {
	t.Helper()
	var pos pubsub.Position
	for i := from; i < from+n; i++ {
		p, err := e.ps.PublishAt(context.Background(), &pubsub.Message{Topic: topic, Event: "new_msg", Payload: []byte(`{"n":` + strconv.Itoa(i) + `}`)})
		if err != nil {
			t.Fatal(err)
		}
		pos = p
	}
	return pos
}

// join sends a V2 (or V1) phx_join with join_ref jr and ref "1".
func join(s socket, ser channels.Serializer, topic, jr, params string) {
	if ser == channels.V1 {
		s.HandleFrame([]byte(`{"join_ref":"`+jr+`","ref":"1","topic":"`+topic+`","event":"phx_join","payload":`+params+`}`), false)
		return
	}
	s.HandleFrame([]byte(`["`+jr+`","1","`+topic+`","phx_join",`+params+`]`), false)
}

// decoded is a frame as the client sees it.
type decoded struct {
	channels.Message
	raw string
}

func decode(t *testing.T, ser channels.Serializer, frames []channels.Frame) []decoded {
	t.Helper()
	out := make([]decoded, 0, len(frames))
	for _, f := range frames {
		var m channels.Message
		var err error
		if f.Binary {
			m, err = channels.DecodeServerBinary(f.Data)
		} else {
			m, err = ser.Decode(f.Data, false)
		}
		if err != nil {
			t.Fatalf("frame %q: %v", f.Data, err)
		}
		out = append(out, decoded{m, string(f.Data)})
	}
	return out
}

// joinReply checks that the first frame is the ok reply to a join and
// returns its response.
func joinReply(t *testing.T, ms []decoded) map[string]any {
	t.Helper()
	if len(ms) == 0 || ms[0].Event != channels.EventReply || ms[0].Status != "ok" {
		t.Fatalf("want an ok join reply first, got %v", ms)
	}
	var resp map[string]any
	if err := json.Unmarshal(ms[0].Payload, &resp); err != nil {
		t.Fatalf("reply %s: %v", ms[0].raw, err)
	}
	return resp
}

// broadcastNs returns the "n" of each broadcast frame, checking that its
// ref is its position and that positions go up by one.
func broadcastNs(t *testing.T, ms []decoded) (ns []int, last pubsub.Position) {
	t.Helper()
	for _, m := range ms {
		if m.Event == channels.EventReply {
			continue
		}
		if m.Event != "new_msg" {
			t.Fatalf("unexpected frame %s", m.raw)
		}
		p, err := pubsub.ParsePosition(m.Ref.Text())
		if err != nil {
			t.Fatalf("broadcast %s: ref is no position: %v", m.raw, err)
		}
		if !last.IsZero() && (p.Epoch != last.Epoch || p.Offset != last.Offset+1) {
			t.Fatalf("broadcast at %s after %s: %s", p, last, m.raw)
		}
		var v struct{ N int }
		if err := json.Unmarshal(m.Payload, &v); err != nil {
			t.Fatal(err)
		}
		ns = append(ns, v.N)
		last = p
	}
	return ns, last
}

func seq(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func equalInts(a, b []int) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

func TestHistoryPositionsInFrames(t *testing.T) {
	e := newHistEnv(t, 10, relay, nil)
	s1, c1 := e.open(t, channels.V1)
	s2, c2 := e.open(t, channels.V2)
	join(s1, channels.V1, "room:a", "1", `{}`)
	join(s2, channels.V2, "room:a", "1", `{}`)
	c1.take()
	c2.take()
	pos := e.publish(t, "room:a", 1, 1)
	if pos.IsZero() {
		t.Fatal("no position")
	}
	want1 := `{"event":"new_msg","payload":{"n":1},"ref":"` + pos.String() + `","topic":"room:a"}`
	want2 := `[null,"` + pos.String() + `","room:a","new_msg",{"n":1}]`
	if f := c1.take(); len(f) != 1 || string(f[0].Data) != want1 {
		t.Errorf("V1 frames %q, want %s", texts(f), want1)
	}
	if f := c2.take(); len(f) != 1 || string(f[0].Data) != want2 {
		t.Errorf("V2 frames %q, want %s", texts(f), want2)
	}
	// A binary broadcast has no ref: unchanged, and the position still
	// counts (the next text broadcast is not taken for a hole).
	if _, err := e.ps.PublishAt(context.Background(), &pubsub.Message{Topic: "room:a", Event: "bin", Payload: []byte{1, 2}, Binary: true}); err != nil {
		t.Fatal(err)
	}
	if f := c2.take(); len(f) != 1 || !f[0].Binary || string(f[0].Data) != "\x02\x06\x03room:abin\x01\x02" {
		t.Errorf("V2 binary broadcast %q", texts(f))
	}
	if f := c1.take(); len(f) != 0 {
		t.Errorf("V1 socket got a binary broadcast: %q", texts(f))
	}
	e.publish(t, "room:a", 2, 1)
	for _, c := range []*frameConn{c1, c2} {
		if f := c.take(); len(f) != 1 || !strings.Contains(string(f[0].Data), `"n":2`) {
			t.Errorf("after a binary broadcast: %q", texts(f))
		}
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Errorf("HistoryGaps = %d", n)
	}
}

func TestNoHistoryTopicUnchanged(t *testing.T) {
	// The PubSub keeps history (room:*), the topic does not: the join's
	// reply and the broadcasts are byte for byte what they always were.
	e := newHistEnv(t, 10, func(string) channels.Channel {
		return &histChannel{response: map[string]int{"x": 1}}
	}, nil)
	for _, ser := range []channels.Serializer{channels.V1, channels.V2} {
		s, c := e.open(t, ser)
		join(s, ser, "plain:a", "7", `{"since":"abc:1","history":3}`)
		e.publish(t, "plain:a", 1, 1)
		want := []string{
			`["7","1","plain:a","phx_reply",{"response":{"x":1},"status":"ok"}]`,
			`[null,null,"plain:a","new_msg",{"n":1}]`,
		}
		if ser == channels.V1 {
			want = []string{
				`{"event":"phx_reply","payload":{"response":{"x":1},"status":"ok"},"ref":"1","topic":"plain:a"}`,
				`{"event":"new_msg","payload":{"n":1},"ref":null,"topic":"plain:a"}`,
			}
		}
		f := c.take()
		if len(f) != 2 || string(f[0].Data) != want[0] || string(f[1].Data) != want[1] {
			t.Errorf("%s: frames %q\nwant %q", ser.Vsn(), texts(f), want)
		}
		s.HandleClose()
	}
}

func TestRecoverSince(t *testing.T) {
	e := newHistEnv(t, 100, relay, nil)
	e.publish(t, "room:a", 1, 2)
	since := e.publish(t, "room:a", 3, 1)
	e.publish(t, "room:a", 4, 5)
	for _, ser := range []channels.Serializer{channels.V1, channels.V2} {
		s, c := e.open(t, ser)
		join(s, ser, "room:a", "1", `{"since":"`+since.String()+`"}`)
		ms := decode(t, ser, c.take())
		resp := joinReply(t, ms)
		ns, last := broadcastNs(t, ms[1:])
		if !equalInts(ns, seq(4, 8)) {
			t.Errorf("%s: replayed %v, want 4..8", ser.Vsn(), ns)
		}
		if resp["recovered"] != true || resp["position"] != last.String() || resp["reason"] != nil {
			t.Errorf("%s: reply %v, want recovered at %s", ser.Vsn(), resp, last)
		}
		if ms[1].Ref.Text() != (pubsub.Position{Epoch: since.Epoch, Offset: since.Offset + 1}).String() {
			t.Errorf("%s: first replayed frame %s", ser.Vsn(), ms[1].raw)
		}
		s.HandleClose()
	}
	// Nothing missed: recovered, nothing replayed.
	s, c := e.open(t, channels.V2)
	top := e.publish(t, "room:a", 9, 1)
	join(s, channels.V2, "room:a", "1", `{"since":"`+top.String()+`","history":5}`)
	ms := decode(t, channels.V2, c.take())
	if resp := joinReply(t, ms); resp["recovered"] != true || resp["position"] != top.String() || len(ms) != 1 {
		t.Errorf("since the top: reply %v, %d frames", resp, len(ms))
	}
	e.publish(t, "room:a", 10, 1)
	if ns, _ := broadcastNs(t, decode(t, channels.V2, c.take())); !equalInts(ns, []int{10}) {
		t.Errorf("live after recovery: %v", ns)
	}
	st := e.ep.Stats()
	if st.RecoveriesComplete.Load() != 3 || st.Replayed.Load() != 10 {
		t.Errorf("RecoveriesComplete %d, Replayed %d; want 3, 10", st.RecoveriesComplete.Load(), st.Replayed.Load())
	}
}

// seamHistory publishes on the topic it is asked about, right before
// reading its history: those broadcasts reach a joining channel both live
// (it has subscribed) and in the history read.
type seamHistory struct {
	*local.PubSub
	mu     sync.Mutex
	inSeam int // broadcasts to publish before the next read
}

func (h *seamHistory) ReadHistory(ctx context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	h.mu.Lock()
	n := h.inSeam
	h.mu.Unlock()
	for range n {
		if _, err := h.PublishAt(ctx, &pubsub.Message{Topic: topic, Event: "new_msg", Payload: []byte(`{"n":-1}`)}); err != nil {
			return pubsub.HistoryResult{}, err
		}
	}
	return h.PubSub.ReadHistory(ctx, topic, q)
}

// TestRecoverSinceConcurrent joins with since while broadcasts go on, from
// another goroutine and between the join's Subscribe and its history read:
// at the seam between replay and live delivery nothing is lost and
// nothing repeated, whatever the interleaving.
func TestRecoverSinceConcurrent(t *testing.T) {
	const (
		iterations = 40
		before     = 20
		during     = 150
	)
	sh := &seamHistory{}
	e := newHistEnv(t, 1000, relay, func(ps *local.PubSub) pubsub.PubSub { sh.PubSub = ps; return sh })
	deadline := time.Now().Add(20 * time.Second)
	for it := 0; it < iterations && time.Now().Before(deadline); it++ {
		topic := "room:c" + strconv.Itoa(it)
		since := e.publish(t, topic, 1, before/2)
		e.publish(t, topic, before/2+1, before/2)
		sh.mu.Lock()
		sh.inSeam = it % 4
		sh.mu.Unlock()
		s, c := e.open(t, channels.V2)
		start := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			<-start
			for i := before + 1; i <= before+during; i++ {
				if _, err := e.ps.PublishAt(context.Background(), &pubsub.Message{Topic: topic, Event: "new_msg", Payload: []byte(`{"n":` + strconv.Itoa(i) + `}`)}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
		close(start)
		join(s, channels.V2, topic, "1", `{"since":"`+since.String()+`"}`)
		<-done
		top, err := e.ps.ReadHistory(context.Background(), topic, pubsub.HistoryQuery{})
		if err != nil {
			t.Fatal(err)
		}
		ms := decode(t, channels.V2, c.take())
		if resp := joinReply(t, ms); resp["recovered"] != true {
			t.Fatalf("iteration %d: reply %v", it, resp)
		}
		// broadcastNs fails on a repeated or skipped position.
		ns, last := broadcastNs(t, ms[1:])
		if last != top.Top || uint64(len(ns)) != top.Top.Offset-since.Offset {
			t.Fatalf("iteration %d: received %d broadcasts up to %s, want %d up to %s", it, len(ns), last, top.Top.Offset-since.Offset, top.Top)
		}
		s.HandleClose()
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Errorf("HistoryGaps = %d", n)
	}
}

func TestJoinHistoryLastN(t *testing.T) {
	e := newHistEnv(t, 10, relay, nil)
	top := e.publish(t, "room:a", 1, 15)
	for _, tc := range []struct {
		n    string
		want []int
	}{
		{"3", seq(13, 15)},
		{"1", []int{15}},
		{"0", nil},
		{"100", seq(6, 15)}, // capped at the topic's size
		{"99999999999999999999999", seq(6, 15)},
	} {
		s, c := e.open(t, channels.V2)
		join(s, channels.V2, "room:a", "1", `{"history":`+tc.n+`}`)
		ms := decode(t, channels.V2, c.take())
		resp := joinReply(t, ms)
		if ns, _ := broadcastNs(t, ms[1:]); !equalInts(ns, tc.want) {
			t.Errorf("history %s: replayed %v, want %v", tc.n, ns, tc.want)
		}
		if _, has := resp["recovered"]; resp["position"] != top.String() || has || resp["reason"] != nil {
			t.Errorf("history %s: reply %v, want the position only", tc.n, resp)
		}
		s.HandleClose()
	}
	// A plain join learns the position, and the live broadcasts follow it.
	s, c := e.open(t, channels.V2)
	join(s, channels.V2, "room:a", "1", `{}`)
	ms := decode(t, channels.V2, c.take())
	if resp := joinReply(t, ms); resp["position"] != top.String() || len(resp) != 1 || len(ms) != 1 {
		t.Errorf("plain join: reply %v, %d frames; want the position only", resp, len(ms))
	}
}

func TestRecoveryNotRecovered(t *testing.T) {
	e := newHistEnv(t, 3, relay, nil)
	e.publish(t, "room:a", 1, 1)
	old := e.publish(t, "room:a", 2, 1)
	top := e.publish(t, "room:a", 3, 5)
	tests := []struct {
		params, reason string
	}{
		{`{"since":"` + old.String() + `"}`, "position too old"},
		{`{"since":"otherepoch:3"}`, "epoch changed"},
		{`{"since":"` + top.Epoch + `:1000"}`, "position ahead"},
		{`{"since":"garbage"}`, "invalid position"},
		{`{"since":"` + top.Epoch + `:-1"}`, "invalid position"},
		{`{"since":"` + top.Epoch + `:01"}`, "invalid position"},
		{`{"since":5}`, "invalid position"},
		{`{"since":{"epoch":"x"}}`, "invalid position"},
		{`{"since":""}`, "invalid position"},
		{`{"history":-2}`, "invalid position"},
		{`{"history":1.5}`, "invalid position"},
		{`{"history":"3"}`, "invalid position"},
	}
	for _, tt := range tests {
		s, c := e.open(t, channels.V2)
		join(s, channels.V2, "room:a", "1", tt.params)
		ms := decode(t, channels.V2, c.take())
		resp := joinReply(t, ms)
		if resp["recovered"] != false || resp["reason"] != tt.reason || resp["position"] != top.String() {
			t.Errorf("%s: reply %v, want not recovered at %s, %q", tt.params, resp, top, tt.reason)
		}
		if len(ms) != 1 {
			t.Errorf("%s: %d frames after the reply, want none (no replay from the wrong place)", tt.params, len(ms)-1)
		}
		// The channel goes on from the top.
		e.publish(t, "room:a", 100, 1)
		if ns, _ := broadcastNs(t, decode(t, channels.V2, c.take())); !equalInts(ns, []int{100}) {
			t.Errorf("%s: live after the join: %v", tt.params, ns)
		}
		top.Offset++
		s.HandleClose()
	}
	got := e.ep.Stats().RecoveriesIncomplete()
	want := map[string]uint64{"position too old": 1, "epoch changed": 1, "position ahead": 1, "invalid position": 9, "no history": 0, "history unavailable": 0}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("RecoveriesIncomplete = %v, want %v", got, want)
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Errorf("HistoryGaps = %d", n)
	}
}

// brokenHistory is a pubsub/local whose history reads fail, or answer
// from the wrong place.
type brokenHistory struct {
	*local.PubSub
	err   error
	wrong bool
}

func (b *brokenHistory) ReadHistory(ctx context.Context, topic string, q pubsub.HistoryQuery) (pubsub.HistoryResult, error) {
	if b.err != nil {
		return pubsub.HistoryResult{}, b.err
	}
	res, err := b.PubSub.ReadHistory(ctx, topic, pubsub.HistoryQuery{Last: 2})
	if b.wrong && len(res.Messages) > 0 {
		res.Messages = res.Messages[:1] // neither after since nor up to Top
	}
	return res, err
}

func TestRecoveryHistoryUnavailable(t *testing.T) {
	for _, tc := range []struct {
		name   string
		b      brokenHistory
		reason string
		pos    bool
	}{
		{"store error", brokenHistory{err: errors.New("redis: connection refused")}, "history unavailable", false},
		{"no history", brokenHistory{err: fmt.Errorf("x: %w", pubsub.ErrNoHistory)}, "no history", false},
		{"out of sequence", brokenHistory{wrong: true}, "history unavailable", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := tc.b
			e := newHistEnv(t, 10, relay, func(ps *local.PubSub) pubsub.PubSub { b.PubSub = ps; return &b })
			since := e.publish(t, "room:a", 1, 1)
			e.publish(t, "room:a", 2, 4)
			s, c := e.open(t, channels.V2)
			join(s, channels.V2, "room:a", "1", `{"since":"`+since.String()+`"}`)
			ms := decode(t, channels.V2, c.take())
			resp := joinReply(t, ms)
			if resp["recovered"] != false || resp["reason"] != tc.reason || resp["position"] != nil {
				t.Errorf("reply %v", resp)
			}
			if len(ms) != 1 {
				t.Errorf("%d frames replayed", len(ms)-1)
			}
			// The first live broadcast gives the position.
			e.publish(t, "room:a", 6, 2)
			if ns, _ := broadcastNs(t, decode(t, channels.V2, c.take())); !equalInts(ns, []int{6, 7}) {
				t.Errorf("live: %v", ns)
			}
			if n := e.ep.Stats().RecoveriesIncomplete()[tc.reason]; n != 1 {
				t.Errorf("RecoveriesIncomplete[%q] = %d", tc.reason, n)
			}
			// A plain join asked for nothing that failed: its position
			// is unknown, and that is all it is told.
			s.HandleClose()
			s, c = e.open(t, channels.V2)
			join(s, channels.V2, "room:a", "1", `{}`)
			ms = decode(t, channels.V2, c.take())
			if resp := joinReply(t, ms); len(resp) != 1 || resp["position"] != nil || len(ms) != 1 {
				t.Errorf("plain join: reply %v, want {\"position\":null}", resp)
			}
		})
	}
}

// joinCaptured joins room:a with a histChannel and returns its
// ChannelSocket.
func joinCaptured(t *testing.T, e *histEnv, ch *histChannel, jr, params string) (socket, *frameConn, *channels.ChannelSocket) {
	t.Helper()
	s, c := e.open(t, channels.V2)
	join(s, channels.V2, "room:a", jr, params)
	select {
	case cs := <-ch.joined:
		return s, c, cs
	default:
		t.Fatal("join did not reach the channel")
	}
	return socket{}, nil, nil
}

func TestHistoryHoleFailsChannel(t *testing.T) {
	for _, tc := range []struct {
		name string
		pos  func(last pubsub.Position) pubsub.Position
	}{
		{"skipped offset", func(l pubsub.Position) pubsub.Position { return pubsub.Position{Epoch: l.Epoch, Offset: l.Offset + 2} }},
		{"new epoch", func(l pubsub.Position) pubsub.Position { return pubsub.Position{Epoch: "new", Offset: 1} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ch := &histChannel{joined: make(chan *channels.ChannelSocket, 1), terminated: make(chan channels.Reason, 1)}
			e := newHistEnv(t, 10, func(string) channels.Channel { return ch }, nil)
			s, c, cs := joinCaptured(t, e, ch, "5", `{}`)
			last := e.publish(t, "room:a", 1, 2)
			c.take()
			// A broadcast lost between nodes shows as a hole.
			channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":9}`), Pos: tc.pos(last)})
			ms := decode(t, channels.V2, c.take())
			if len(ms) != 1 || ms[0].Event != channels.EventError || ms[0].Topic != "room:a" || ms[0].JoinRef.Text() != "5" || ms[0].Ref.Text() != "5" {
				t.Fatalf("after a hole: %v, want phx_error for join 5", ms)
			}
			select {
			case r := <-ch.terminated:
				if r != channels.ReasonHistoryGap {
					t.Errorf("Terminate reason %q", r)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("channel not ended after a hole")
			}
			if n := e.ps.Subscribers("room:a"); n != 0 {
				t.Errorf("%d subscribers left", n)
			}
			e.publish(t, "room:a", 3, 1)
			if f := c.take(); len(f) != 0 {
				t.Errorf("frames after the channel failed: %q", texts(f))
			}
			if n := e.ep.Stats().HistoryGaps.Load(); n != 1 {
				t.Errorf("HistoryGaps = %d", n)
			}
			// phoenix.js rejoins, with since: the hole is filled.
			join(s, channels.V2, "room:a", "6", `{"since":"`+last.String()+`"}`)
			<-ch.joined
			ms = decode(t, channels.V2, c.take())
			if resp := joinReply(t, ms); resp["recovered"] != true {
				t.Errorf("rejoin: %v", resp)
			}
			if ns, _ := broadcastNs(t, ms[1:]); !equalInts(ns, []int{3}) {
				t.Errorf("rejoin replayed %v, want [3]", ns)
			}
		})
	}
}

func TestHistoryDuplicateDropped(t *testing.T) {
	ch := &histChannel{joined: make(chan *channels.ChannelSocket, 1)}
	e := newHistEnv(t, 10, func(string) channels.Channel { return ch }, nil)
	_, c, cs := joinCaptured(t, e, ch, "1", `{}`)
	last := e.publish(t, "room:a", 1, 3)
	c.take()
	for _, off := range []uint64{last.Offset, last.Offset - 1, 1} {
		channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":0}`), Pos: pubsub.Position{Epoch: last.Epoch, Offset: off}})
	}
	if f := c.take(); len(f) != 0 {
		t.Errorf("duplicates delivered: %q", texts(f))
	}
	e.publish(t, "room:a", 4, 1)
	if ns, _ := broadcastNs(t, decode(t, channels.V2, c.take())); !equalInts(ns, []int{4}) {
		t.Errorf("after duplicates: %v", ns)
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Errorf("HistoryGaps = %d", n)
	}
}

func TestBroadcastFromAdvancesSender(t *testing.T) {
	e := newHistEnv(t, 10, relay, nil)
	sa, ca := e.open(t, channels.V2)
	sb, cb := e.open(t, channels.V2)
	join(sa, channels.V2, "room:a", "1", `{}`)
	join(sb, channels.V2, "room:a", "1", `{}`)
	ca.take()
	cb.take()
	// a's broadcast_from reaches b only; a's position moves past it.
	sa.HandleFrame([]byte(`["1","2","room:a","from",{"n":1}]`), false)
	sb.HandleFrame([]byte(`["1","2","room:a","all",{"n":2}]`), false)
	var got []string
	for _, m := range decode(t, channels.V2, ca.take()) {
		if m.Event != channels.EventReply {
			got = append(got, m.Event)
		}
	}
	if fmt.Sprint(got) != "[all]" {
		t.Errorf("sender got %v, want [all]", got)
	}
	if n := len(cb.take()); n != 3 { // from, all, reply
		t.Errorf("other socket got %d frames, want 3", n)
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Errorf("HistoryGaps = %d: the sender took its own broadcast_from for a hole", n)
	}
}

func TestRecoveryIntercepted(t *testing.T) {
	outs := make(chan struct{}, 10)
	e := newHistEnv(t, 10, func(string) channels.Channel { return &interceptChannel{outs: outs} }, nil)
	since := e.publish(t, "room:a", 1, 1)
	e.publish(t, "room:a", 2, 3)
	s, c := e.open(t, channels.V2)
	join(s, channels.V2, "room:a", "1", `{"since":"`+since.String()+`"}`)
	e.publish(t, "room:a", 5, 1)
	// HandleOut runs on its own goroutine: wait for its pushes.
	for range 4 {
		select {
		case <-outs:
		case <-time.After(5 * time.Second):
			t.Fatal("HandleOut not called")
		}
	}
	ms := decode(t, channels.V2, c.take())
	if resp := joinReply(t, ms); resp["recovered"] != true {
		t.Errorf("reply %v", resp)
	}
	var ns []int
	for _, m := range ms[1:] {
		var v struct{ N int }
		if m.Event != "out" || json.Unmarshal(m.Payload, &v) != nil {
			t.Fatalf("frame %s, want an intercepted push", m.raw)
		}
		ns = append(ns, v.N)
	}
	if !equalInts(ns, seq(2, 5)) {
		t.Errorf("intercepted %v, want 2..5", ns)
	}
}

func TestJoinResponseNotObject(t *testing.T) {
	for _, tc := range []struct {
		response any
		want     string
	}{
		{[]int{1}, `[1]`},
		{json.RawMessage(` { "a" : 1 } `), `{ "a" : 1 ,"position":"`},
		{nil, `{"position":"`},
	} {
		e := newHistEnv(t, 10, func(string) channels.Channel { return &histChannel{response: tc.response} }, nil)
		s, c := e.open(t, channels.V2)
		join(s, channels.V2, "room:a", "1", `{}`)
		ms := decode(t, channels.V2, c.take())
		if len(ms) != 1 || !strings.HasPrefix(string(ms[0].Payload), tc.want) || !json.Valid(ms[0].Payload) {
			t.Errorf("response %v: reply %s, want it to begin %s", tc.response, ms[0].raw, tc.want)
		}
	}
}

func TestRouterHistoryPolicy(t *testing.T) {
	r := &channels.Router{}
	if r.HistoryPolicy(nil) != nil {
		t.Error("no routes, no fallback: policy not nil")
	}
	fallback := func(topic string) pubsub.HistoryOptions {
		if strings.HasPrefix(topic, "f") {
			return pubsub.HistoryOptions{Size: 7}
		}
		return pubsub.HistoryOptions{}
	}
	if p := r.HistoryPolicy(fallback); p == nil || p("fx").Size != 7 {
		t.Error("no routes: the fallback is not the policy")
	}
	r.History("room:quiet", pubsub.HistoryOptions{}).
		History("room:*", pubsub.HistoryOptions{Size: 100, TTL: time.Minute}).
		History("fy", pubsub.HistoryOptions{Size: 3})
	p := r.HistoryPolicy(fallback)
	for topic, want := range map[string]int{"room:1": 100, "room:quiet": 0, "fx": 7, "fy": 3, "other": 0} {
		if got := p(topic).Size; got != want {
			t.Errorf("%s: size %d, want %d", topic, got, want)
		}
	}
	if got := r.HistoryPolicy(nil)("fx").Size; got != 0 {
		t.Errorf("no fallback: fx size %d", got)
	}
	// With copies the history routes, and later ones do not change a
	// policy already made.
	c := r.With("dash", relay)
	r.History("late", pubsub.HistoryOptions{Size: 1})
	if c.HistoryPolicy(nil)("room:1").Size != 100 || p("late").Size != 0 {
		t.Error("policies share routes")
	}
	defer func() {
		if recover() == nil {
			t.Error("History accepted a bad pattern")
		}
	}()
	r.History("a*b", pubsub.HistoryOptions{Size: 1})
}

// A broadcast without a position on a topic with history (a node whose
// Gate was still closed wrote it, yet it took an offset) lets the join
// accept one step forward in its epoch: the next positioned broadcast,
// past last+1, is delivered rather than taken for a hole. It keeps last: a
// duplicate is still dropped after it, and a position of another epoch
// (Redis restarted empty, and the first broadcast of the new epoch went
// out without a position) still fails the channel.
func TestUnpositionedBroadcastLoosensPosition(t *testing.T) {
	// joined: a join of room:a that has received broadcasts 1 and 2.
	joined := func() (*histEnv, *frameConn, *channels.ChannelSocket, pubsub.Position) {
		ch := &histChannel{joined: make(chan *channels.ChannelSocket, 1), terminated: make(chan channels.Reason, 1)}
		e := newHistEnv(t, 10, func(string) channels.Channel { return ch }, nil)
		_, c, cs := joinCaptured(t, e, ch, "1", `{}`)
		last := e.publish(t, "room:a", 1, 2)
		c.take()
		return e, c, cs, last
	}
	e, c, cs, last := joined()
	at := func(off uint64) pubsub.Position { return pubsub.Position{Epoch: last.Epoch, Offset: off} }
	bare := &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":3}`)}
	channels.Deliver(cs, bare)
	channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":2}`), Pos: last})
	channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":4}`), Pos: at(last.Offset + 2)})
	ms := decode(t, channels.V2, c.take())
	if len(ms) != 2 || ms[0].Event != "new_msg" || ms[0].Ref.Text() != "" || ms[1].Event != "new_msg" || ms[1].Ref.Text() != at(last.Offset+2).String() {
		t.Fatalf("delivered %v, want the unpositioned broadcast, then the one past the duplicate, and no phx_error", ms)
	}
	if n := e.ep.Stats().HistoryGaps.Load(); n != 0 {
		t.Fatalf("HistoryGaps = %d after an unpositioned broadcast", n)
	}
	// Following positions again: a real hole after that one still fails.
	channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":9}`), Pos: at(last.Offset + 9)})
	if ms := decode(t, channels.V2, c.take()); len(ms) != 1 || ms[0].Event != channels.EventError {
		t.Fatalf("a hole after the position was taken again: %v, want phx_error", ms)
	}

	// The join's own broadcast_from without a position, which it does
	// not receive (ExcludedObserver), loosens its position all the same.
	_, c3, cs3, last3 := joined()
	channels.Excluded(cs3, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":3}`), From: "self"})
	next := pubsub.Position{Epoch: last3.Epoch, Offset: last3.Offset + 2}
	channels.Deliver(cs3, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":4}`), Pos: next})
	if ms := decode(t, channels.V2, c3.take()); len(ms) != 1 || ms[0].Ref.Text() != next.String() {
		t.Fatalf("after its own unpositioned broadcast_from: %v, want the next broadcast and no phx_error", ms)
	}

	// A new epoch after an unpositioned broadcast fails the channel.
	_, c2, cs2, last2 := joined()
	channels.Deliver(cs2, bare)
	channels.Deliver(cs2, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":1}`), Pos: pubsub.Position{Epoch: last2.Epoch + "x", Offset: 2}})
	ms = decode(t, channels.V2, c2.take())
	if len(ms) != 2 || ms[0].Ref.Text() != "" || ms[1].Event != channels.EventError || string(ms[1].Payload) != `{"reason":"history_gap"}` {
		t.Fatalf("a new epoch after an unpositioned broadcast: %v, want the unpositioned broadcast, then phx_error history_gap", ms)
	}
}

// A message delivered to this node only (Message.Local: a presence
// repair's presence_state) took no offset: it reaches the client, and a
// hole after it still fails the channel. It once loosened the position
// as a broadcast without one does, and a Redis Cluster failover, which
// both repairs presence and loses live broadcasts, let the hole through
// to the client silently.
func TestLocalMessageKeepsHoleDetection(t *testing.T) {
	ch := &histChannel{joined: make(chan *channels.ChannelSocket, 1), terminated: make(chan channels.Reason, 1)}
	e := newHistEnv(t, 10, func(string) channels.Channel { return ch }, nil)
	_, c, cs := joinCaptured(t, e, ch, "1", `{}`)
	last := e.publish(t, "room:a", 1, 2)
	c.take()
	channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "presence_state", Payload: []byte(`{}`), Local: true})
	channels.Deliver(cs, &pubsub.Message{Topic: "room:a", Event: "new_msg", Payload: []byte(`{"n":9}`), Pos: pubsub.Position{Epoch: last.Epoch, Offset: last.Offset + 5}})
	ms := decode(t, channels.V2, c.take())
	if len(ms) != 2 || ms[0].Event != "presence_state" || ms[1].Event != channels.EventError || string(ms[1].Payload) != `{"reason":"history_gap"}` {
		t.Fatalf("a hole after a local presence_state: %v, want the presence_state, then phx_error history_gap", ms)
	}
}
