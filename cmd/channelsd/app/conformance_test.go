package app

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels"
)

const ctopic = "conformance:t"

func conformanceEnv(t *testing.T) *env { return newEnv(t, Options{Conformance: true}) }

func TestConformanceJoin(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	_, resp := c.join(ctopic, `{}`)
	jsonEq(t, resp, `{"topic":"conformance:t"}`)
	c.none() // no user: no presence

	ref := c.nextRef()
	frame, _ := json.Marshal([]any{ref, ref, ForbiddenTopic, "phx_join", map[string]any{"user": "ann"}})
	c.sock.HandleFrame(frame, false)
	m := c.expectReply(ref, "error", `{"reason":"unauthorized"}`)
	if m.JoinRef != ref {
		t.Errorf("refusal join_ref %q, want %q", m.JoinRef, ref)
	}
	c.none()
}

func TestConformanceJoinWithUser(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	jr, _ := c.join(ctopic, `{"user":"ann"}`)
	st := c.nextEvent("presence_state")
	if st.JoinRef != jr {
		t.Errorf("presence_state join_ref %q, want %q", st.JoinRef, jr)
	}
	if keys := presenceKeys(t, st.Payload); len(keys) != 1 || len(keys["ann"]) != 1 || keys["ann"][0]["online_at"] == nil {
		t.Errorf("presence_state %s, want ann with online_at", st.Payload)
	}
}

func TestConformanceReplies(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	jr, _ := c.join(ctopic, `{}`)

	ref := c.push(jr, ctopic, "ping", `{"x":[1,2]}`)
	c.expectReply(ref, "ok", `{"x":[1,2]}`)
	ref = c.push(jr, ctopic, "fail", `{"why":"because"}`)
	c.expectReply(ref, "error", `{"why":"because"}`)
	c.push(jr, ctopic, "noreply", `{}`)
	c.none()
	ref = c.push(jr, ctopic, "whatever", `{}`)
	c.expectReply(ref, "error", `{"reason":"unknown event"}`)

	// A message with a null join_ref still reaches the channel (§3.5).
	ref = c.push("", ctopic, "ping", `{}`)
	if m := c.expectReply(ref, "ok", `{}`); m.JoinRef != jr {
		t.Errorf("reply join_ref %q, want the channel's %q", m.JoinRef, jr)
	}
}

func TestConformanceBinary(t *testing.T) {
	e := conformanceEnv(t)
	a, b := e.connect(nil), e.connect(nil)
	jr, _ := a.join(ctopic, `{}`)
	b.join(ctopic, `{}`)
	data := []byte{0xde, 0xad, 0xbe, 0xef}

	ref := a.pushBinary(jr, ctopic, "binary_echo", data)
	m := a.next()
	if !m.Binary || m.Event != "phx_reply" || m.Ref != ref || m.Status != "ok" || !bytes.Equal(m.Payload, data) {
		t.Fatalf("binary_echo: got %+v", m)
	}

	ref = a.pushBinary(jr, ctopic, "binary_push", data)
	m = a.next()
	if !m.Binary || m.Event != "binary_push" || m.JoinRef != jr || !bytes.Equal(m.Payload, data) {
		t.Fatalf("binary_push: got %+v", m)
	}
	a.expectReply(ref, "ok", `{}`)

	ref = a.pushBinary(jr, ctopic, "binary_broadcast", data)
	for _, c := range []*client{a, b} {
		m := c.next()
		if !m.Binary || m.Event != "binary_broadcast" || m.JoinRef != "" || !bytes.Equal(m.Payload, data) {
			t.Fatalf("binary_broadcast: got %+v", m)
		}
	}
	a.expectReply(ref, "ok", `{}`)

	// A binary ping comes back binary.
	ref = a.pushBinary(jr, ctopic, "ping", data)
	if m := a.next(); !m.Binary || m.Ref != ref || !bytes.Equal(m.Payload, data) {
		t.Fatalf("binary ping: got %+v", m)
	}

	for _, ev := range []string{"binary_echo", "binary_push", "binary_broadcast"} {
		ref := a.push(jr, ctopic, ev, `{}`)
		a.expectReply(ref, "error", `{"reason":"binary payload expected"}`)
	}
	b.none()
}

func TestConformanceBroadcasts(t *testing.T) {
	e := conformanceEnv(t)
	a, b := e.connect(nil), e.connect(nil)
	jr, _ := a.join(ctopic, `{}`)
	b.join(ctopic, `{}`)

	ref := a.push(jr, ctopic, "broadcast", `{"n":1}`)
	for _, c := range []*client{a, b} {
		m := c.next()
		if m.Event != "broadcast" || m.JoinRef != "" || m.Ref != "" {
			t.Fatalf("broadcast: got %+v", m)
		}
		jsonEq(t, m.Payload, `{"n":1}`)
	}
	a.expectReply(ref, "ok", `{}`)

	ref = a.push(jr, ctopic, "shout", `{"n":2}`)
	a.expectReply(ref, "ok", `{}`)
	a.none()
	m := b.next()
	if m.Event != "shout" {
		t.Fatalf("shout: got %+v", m)
	}
	jsonEq(t, m.Payload, `{"n":2}`)
}

func TestConformanceIntercepted(t *testing.T) {
	e := conformanceEnv(t)
	a, b := e.connect(nil), e.connect(nil)
	ajr, _ := a.join(ctopic, `{}`)
	b.ref = 40 // a different join_ref on the second socket
	bjr, _ := b.join(ctopic, `{}`)

	ref := a.push(ajr, ctopic, "intercepted", `{"n":1}`)
	// The reply and the intercepted push race: HandleOut runs on its own
	// goroutine.
	var sawReply, sawPush bool
	for !sawReply || !sawPush {
		m := a.next()
		switch m.Event {
		case "phx_reply":
			if m.Ref != ref || m.Status != "ok" {
				t.Fatalf("reply: %+v", m)
			}
			sawReply = true
		case "intercepted":
			if m.JoinRef != ajr {
				t.Errorf("intercepted push join_ref %q, want %q", m.JoinRef, ajr)
			}
			jsonEq(t, m.Payload, `{"n":1,"join_ref":"`+ajr+`"}`)
			sawPush = true
		default:
			t.Fatalf("unexpected %+v", m)
		}
	}
	m := b.next()
	if m.Event != "intercepted" || m.JoinRef != bjr {
		t.Fatalf("b got %+v", m)
	}
	jsonEq(t, m.Payload, `{"n":1,"join_ref":"`+bjr+`"}`)
}

func TestConformanceCrashAndStop(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)

	jr, _ := c.join(ctopic, `{}`)
	c.push(jr, ctopic, "crash", `{}`)
	m := c.next()
	if m.Event != "phx_error" || m.JoinRef != jr || m.Ref != jr {
		t.Fatalf("crash: got %+v", m)
	}
	c.none()

	jr, _ = c.join(ctopic, `{}`)
	c.push(jr, ctopic, "stop", `{}`)
	if m := c.next(); m.Event != "phx_close" || m.JoinRef != jr || m.Ref != jr {
		t.Fatalf("stop: got %+v", m)
	}
	c.none()

	jr, _ = c.join(ctopic, `{}`)
	ref := c.push(jr, ctopic, "stop_reply", `{}`)
	c.expectReply(ref, "ok", `{}`)
	if m := c.next(); m.Event != "phx_close" || m.JoinRef != jr {
		t.Fatalf("stop_reply: got %+v", m)
	}
	// The channel is gone.
	ref = c.push(jr, ctopic, "ping", `{}`)
	c.expectReply(ref, "error", `{"reason":"unmatched topic"}`)
}

func TestConformanceCloseSocket(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	jr, _ := c.join(ctopic, `{}`)
	c.push(jr, ctopic, "close_socket", `{}`)
	select {
	case ci := <-c.conn.closed:
		if ci.code != channels.CloseGoingAway {
			t.Errorf("close code %d, want 1001", ci.code)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("socket not closed")
	}
	c.none()
}

func TestConformanceDisconnectID(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	v1 := e.connect(map[string]string{"socket_id": "victim"})
	v2 := e.connect(map[string]string{"socket_id": "victim"})
	other := e.connect(map[string]string{"socket_id": "other"})
	jr, _ := c.join(ctopic, `{}`)

	ref := c.push(jr, ctopic, "disconnect_id", `{"id":"victim"}`)
	c.expectReply(ref, "ok", `{}`)
	for _, v := range []*client{v1, v2} {
		select {
		case ci := <-v.conn.closed:
			if ci.code != channels.CloseGoingAway {
				t.Errorf("close code %d, want 1001", ci.code)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("victim not disconnected")
		}
	}
	select {
	case <-other.conn.closed:
		t.Error("other socket disconnected")
	default:
	}

	for _, bad := range []string{`{}`, `{"id":""}`, `{"id":3}`, `[]`} {
		ref := c.push(jr, ctopic, "disconnect_id", bad)
		c.expectReply(ref, "error", `{"reason":"invalid payload"}`)
	}

	// Without an endpoint the event fails cleanly.
	e2 := newEnv(t, Options{Conformance: true, Endpoint: func() *channels.Endpoint { return nil }})
	c2 := e2.connect(nil)
	jr2, _ := c2.join(ctopic, `{}`)
	ref = c2.push(jr2, ctopic, "disconnect_id", `{"id":"x"}`)
	c2.expectReply(ref, "error", `{"reason":"no endpoint"}`)
}

func TestConformancePush(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	jr, _ := c.join(ctopic, `{}`)

	ref := c.push(jr, ctopic, "push", `{"event":"notice","payload":{"text":"hello"}}`)
	m := c.next()
	if m.Event != "notice" || m.JoinRef != jr || m.Ref != "" {
		t.Fatalf("push: got %+v", m)
	}
	jsonEq(t, m.Payload, `{"text":"hello"}`)
	c.expectReply(ref, "ok", `{}`)

	ref = c.push(jr, ctopic, "push", `{"event":"bare"}`)
	jsonEq(t, c.nextEvent("bare").Payload, `{}`)
	c.expectReply(ref, "ok", `{}`)

	for _, bad := range []string{`{}`, `{"event":""}`, `{"event":"e","payload":[1]}`, `{"event":"e","payload":"s"}`} {
		ref := c.push(jr, ctopic, "push", bad)
		c.expectReply(ref, "error", `{"reason":"invalid payload"}`)
	}
}

func TestConformancePresence(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	jr, _ := c.join(ctopic, `{}`)

	ref := c.push(jr, ctopic, "track", `{"key":"k1","meta":{"status":"away"}}`)
	diff := c.nextEvent("presence_diff")
	var d struct {
		Joins  map[string]struct{ Metas []map[string]any } `json:"joins"`
		Leaves map[string]struct{ Metas []map[string]any } `json:"leaves"`
	}
	if err := json.Unmarshal(diff.Payload, &d); err != nil || len(d.Joins["k1"].Metas) != 1 || d.Joins["k1"].Metas[0]["status"] != "away" {
		t.Fatalf("track diff %s (%v)", diff.Payload, err)
	}
	c.expectReply(ref, "ok", `{}`)

	ref = c.push(jr, ctopic, "track", `{"key":"k1"}`)
	c.expectReply(ref, "error", `{"reason":"already_tracked"}`)

	ref = c.push(jr, ctopic, "update", `{"key":"k1","meta":{"status":"busy"}}`)
	diff = c.nextEvent("presence_diff")
	d.Joins, d.Leaves = nil, nil
	if err := json.Unmarshal(diff.Payload, &d); err != nil || d.Joins["k1"].Metas[0]["status"] != "busy" || len(d.Leaves["k1"].Metas) != 1 {
		t.Fatalf("update diff %s (%v)", diff.Payload, err)
	}
	c.expectReply(ref, "ok", `{}`)

	ref = c.push(jr, ctopic, "update", `{"key":"nope","meta":{}}`)
	c.expectReply(ref, "error", `{"reason":"nopresence"}`)

	ref = c.push(jr, ctopic, "untrack", `{"key":"k1"}`)
	diff = c.nextEvent("presence_diff")
	d.Joins, d.Leaves = nil, nil
	if err := json.Unmarshal(diff.Payload, &d); err != nil || len(d.Leaves["k1"].Metas) != 1 || len(d.Joins) != 0 {
		t.Fatalf("untrack diff %s (%v)", diff.Payload, err)
	}
	c.expectReply(ref, "ok", `{}`)

	for _, bad := range []string{`{}`, `{"key":""}`, `{"key":"k","meta":[1]}`, `"k"`} {
		ref := c.push(jr, ctopic, "track", bad)
		c.expectReply(ref, "error", `{"reason":"invalid payload"}`)
	}
}

func TestConformanceAsyncReply(t *testing.T) {
	e := conformanceEnv(t)
	c := e.connect(nil)
	jr, _ := c.join(ctopic, `{}`)

	ref := c.push(jr, ctopic, "async_reply", `{"later":true}`)
	m := c.expectReply(ref, "ok", `{"later":true}`)
	if m.JoinRef != jr {
		t.Errorf("async reply join_ref %q, want %q", m.JoinRef, jr)
	}
	data := []byte("bin")
	ref = c.pushBinary(jr, ctopic, "async_reply", data)
	if m := c.next(); !m.Binary || m.Ref != ref || m.Status != "ok" || !bytes.Equal(m.Payload, data) {
		t.Fatalf("binary async reply: got %+v", m)
	}
}
