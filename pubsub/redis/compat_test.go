package redis

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// "Release N reads what N+1 writes", for the call and reply frames: the
// extension kinds 'C' and 'R' (with records this release does not know)
// decode to the same call and reply, and a reply status this release
// does not know is passed on to the caller rather than dropped.
func TestDecodeCallFrameReadsNextReleaseForms(t *testing.T) {
	var ext []byte
	ext = appendExtRecord(ext, 3, []byte("deadline-class=poll"))
	ext = appendExtRecord(ext, 1000, nil)

	call := []byte{callKindExt}
	call = binary.AppendUvarint(call, 42)
	call = appendString(call, "node-1")
	call = appendString(call, "longpoll")
	call = binary.AppendUvarint(call, 1500)
	call = appendString(call, string(ext))
	call = append(call, "body\x00"...)
	c, r, err := decodeCallFrame(call)
	if err != nil || r != nil || c.id != 42 || c.replyTo != "node-1" || c.service != "longpoll" || c.wait != 1500*time.Millisecond || string(c.body) != "body\x00" {
		t.Fatalf("'C' frame = %+v %+v %v", c, r, err)
	}

	reply := []byte{replyKindExt}
	reply = binary.AppendUvarint(reply, 7)
	reply = append(reply, replyOK)
	reply = appendString(reply, string(ext))
	reply = append(reply, "answer"...)
	c, r, err = decodeCallFrame(reply)
	if err != nil || c != nil || r.id != 7 || r.status != replyOK || string(r.body) != "answer" {
		t.Fatalf("'R' frame = %+v %+v %v", c, r, err)
	}

	c, r, err = decodeCallFrame(appendReply(nil, replyFrame{id: 8, status: 9, body: []byte("?")}))
	if err != nil || c != nil || r.id != 8 || r.status != 9 {
		t.Fatalf("reply with status 9 = %+v %+v %v, want it passed on", c, r, err)
	}

	// A malformed area is refused, not guessed at.
	bad := []byte{callKindExt}
	bad = binary.AppendUvarint(bad, 1)
	bad = appendString(bad, "a")
	bad = appendString(bad, "s")
	bad = binary.AppendUvarint(bad, 0)
	bad = appendString(bad, "\x01\x09")
	if _, _, err := decodeCallFrame(bad); err == nil {
		t.Fatal("'C' frame with a record past its area accepted")
	}
}

// The writers of this release still write the floor's kinds.
func TestCallFramesDefaultToTheFloorsKinds(t *testing.T) {
	if b := appendCall(nil, callFrame{id: 1, replyTo: "a"}); b[0] != callKind {
		t.Fatalf("call kind %q", b[0])
	}
	if b := appendReply(nil, replyFrame{id: 1}); b[0] != replyKind {
		t.Fatalf("reply kind %q", b[0])
	}
}

// fakeCallee answers every call on its node's channel with a fixed reply
// status, as a later release might.
type fakeCallee struct {
	p      *PubSub
	status byte
}

func (f fakeCallee) SubscriberID() string { return "fake-callee" }

func (f fakeCallee) Deliver(m *pubsub.Message) {
	c, _, err := decodeCallFrame(m.Payload)
	if err != nil || c == nil {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f.p.publishNow(ctx, nodeTopic(c.replyTo), "reply", appendReply(nil, replyFrame{id: c.id, status: f.status, body: []byte("?")}))
	}()
}

// A reply status this release does not know is an error answer at once:
// the release of b847059 dropped such a reply as malformed and left its
// caller waiting for the deadline (a relayed poll: its window + 5 s).
func TestCallAnsweredWithAnUnknownStatusFailsAtOnce(t *testing.T) {
	srv := startRedis(t)
	a, b := node(t, srv, "a"), node(t, srv, "b")
	if err := b.Subscribe(nodeTopic("b"), fakeCallee{p: b, status: 9}); err != nil {
		t.Fatal(err)
	}
	syncAll(t, a, b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	_, err := a.Call(ctx, "b", "anything", []byte("x"))
	if !errors.Is(err, errReplyStatus) {
		t.Fatalf("call answered with status 9 = %v, want errReplyStatus", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("the unknown status was reported after %s: it should not wait for the deadline", d)
	}
}

func TestGateDecidesTheTooLargeStatus(t *testing.T) {
	srv := startRedis(t)
	b := node(t, srv, "b")
	if got := b.tooLargeStatus("a"); got != replyRejected {
		t.Fatalf("without a Gate: status %d, want replyRejected", got)
	}
	now := time.Now()
	g := NewGate("b", time.Minute, now)
	b.SetGate(g)
	g.Alive("a", now)
	if got := b.tooLargeStatus("a"); got != replyRejected {
		t.Fatalf("caller without an announcement: status %d, want replyRejected", got)
	}
	g.Announce("a", map[string]int{FormCall: 2}, now)
	if got := b.tooLargeStatus("a"); got != replyTooLarge {
		t.Fatalf("caller announcing call 2: status %d, want replyTooLarge", got)
	}
	// Rolled back: its next report announces nothing.
	g.Announce("a", nil, now.Add(time.Second))
	if got := b.tooLargeStatus("a"); got != replyRejected {
		t.Fatalf("caller rolled back: status %d, want replyRejected", got)
	}
}
