package app

import (
	"bytes"
	"encoding/json"
	"regexp"
	"testing"
)

// presenceKeys returns the keys of a presence_state payload.
func presenceKeys(t *testing.T, payload json.RawMessage) map[string][]map[string]any {
	t.Helper()
	var state map[string]struct {
		Metas []map[string]any `json:"metas"`
	}
	if err := json.Unmarshal(payload, &state); err != nil {
		t.Fatalf("bad presence payload %s: %v", payload, err)
	}
	out := make(map[string][]map[string]any)
	for k, v := range state {
		out[k] = v.Metas
	}
	return out
}

func TestRoomJoinTracksUser(t *testing.T) {
	e := newEnv(t, Options{})
	c := e.connect(nil)
	jr, resp := c.join("room:lobby", `{"user":"ann"}`)
	jsonEq(t, resp, `{}`)
	st := c.nextEvent("presence_state")
	if st.JoinRef != jr {
		t.Errorf("presence_state join_ref %q, want %q", st.JoinRef, jr)
	}
	metas := presenceKeys(t, st.Payload)["ann"]
	if len(metas) != 1 {
		t.Fatalf("presence_state %s: want one meta for ann", st.Payload)
	}
	if at, ok := metas[0]["online_at"].(float64); !ok || at < 1e12 {
		t.Errorf("online_at = %v, want unix milliseconds", metas[0]["online_at"])
	}
	if _, ok := metas[0]["phx_ref"].(string); !ok {
		t.Errorf("meta without phx_ref: %v", metas[0])
	}
}

func TestRoomUserFallbacks(t *testing.T) {
	e := newEnv(t, Options{})

	// The connect parameter, when the join names no user.
	c := e.connect(map[string]string{"user": "bob"})
	c.join("room:a", `{}`)
	if keys := presenceKeys(t, c.nextEvent("presence_state").Payload); len(keys) != 1 || keys["bob"] == nil {
		t.Errorf("presence %v, want bob", keys)
	}
	// The join parameter wins over the connect parameter.
	c.join("room:b", `{"user":"carol"}`)
	if keys := presenceKeys(t, c.nextEvent("presence_state").Payload); len(keys) != 1 || keys["carol"] == nil {
		t.Errorf("presence %v, want carol", keys)
	}
	// Neither: a generated name. Odd join params are ignored.
	anon := e.connect(nil)
	anon.join("room:c", `{"user":42}`)
	keys := presenceKeys(t, anon.nextEvent("presence_state").Payload)
	if len(keys) != 1 {
		t.Fatalf("presence %v, want one key", keys)
	}
	for k := range keys {
		if !regexp.MustCompile(`^anon-[0-9a-f]{8}$`).MatchString(k) {
			t.Errorf("generated user %q, want anon-<8 hex>", k)
		}
	}
}

// join joins topic as user and drains the frames that follow a join.
func joinRoom(t *testing.T, c *client, topic, user string) string {
	t.Helper()
	jr, _ := c.join(topic, `{"user":"`+user+`"}`)
	c.nextEvent("presence_state")
	return jr
}

func TestRoomNewMsg(t *testing.T) {
	e := newEnv(t, Options{})
	ann, bob := e.connect(nil), e.connect(nil)
	ajr := joinRoom(t, ann, "room:lobby", "ann")
	joinRoom(t, bob, "room:lobby", "bob")
	ann.drain()
	bob.drain()

	ref := ann.push(ajr, "room:lobby", "new_msg", `{"body":"hi","user":"mallory","extra":1}`)
	got := ann.next()
	if got.Event != "new_msg" || got.JoinRef != "" || got.Ref != "" {
		t.Fatalf("sender got %+v, want the new_msg broadcast", got)
	}
	jsonEq(t, got.Payload, `{"body":"hi","user":"ann"}`)
	ann.expectReply(ref, "ok", `{}`)
	b := bob.next()
	if b.Event != "new_msg" {
		t.Fatalf("bob got %+v", b)
	}
	jsonEq(t, b.Payload, `{"body":"hi","user":"ann"}`)

	// The body passes as sent, whatever JSON value it is.
	ref = ann.push(ajr, "room:lobby", "new_msg", `{"body":{"text":"x","n":[1,2]}}`)
	jsonEq(t, ann.next().Payload, `{"body":{"text":"x","n":[1,2]},"user":"ann"}`)
	ann.expectReply(ref, "ok", `{}`)
	bob.drain()

	for _, bad := range []string{`{}`, `"hi"`, `[1]`, `null`, `{"text":"hi"}`} {
		ref := ann.push(ajr, "room:lobby", "new_msg", bad)
		ann.expectReply(ref, "error", `{"reason":"invalid payload"}`)
	}
	ref = ann.pushBinary(ajr, "room:lobby", "new_msg", []byte("hi"))
	ann.expectReply(ref, "error", `{"reason":"invalid payload"}`)
	bob.none()
}

func TestRoomTyping(t *testing.T) {
	e := newEnv(t, Options{})
	ann, bob := e.connect(nil), e.connect(nil)
	ajr := joinRoom(t, ann, "room:lobby", "ann")
	joinRoom(t, bob, "room:lobby", "bob")
	ann.drain()
	bob.drain()

	ref := ann.push(ajr, "room:lobby", "typing", `{"user":"mallory","state":"on"}`)
	ann.expectReply(ref, "ok", `{}`)
	ann.none()
	got := bob.next()
	if got.Event != "typing" {
		t.Fatalf("bob got %+v", got)
	}
	jsonEq(t, got.Payload, `{"state":"on","user":"ann"}`)

	ref = ann.push(ajr, "room:lobby", "typing", `null`)
	ann.expectReply(ref, "ok", `{}`)
	jsonEq(t, bob.next().Payload, `{"user":"ann"}`)

	ref = ann.push(ajr, "room:lobby", "typing", `"x"`)
	ann.expectReply(ref, "error", `{"reason":"invalid payload"}`)
	bob.none()
}

func TestRoomPingAndUnknown(t *testing.T) {
	e := newEnv(t, Options{})
	c := e.connect(nil)
	jr := joinRoom(t, c, "room:lobby", "ann")
	c.drain()

	ref := c.push(jr, "room:lobby", "ping", `{"a":[1,"two"],"b":null}`)
	m := c.expectReply(ref, "ok", `{"a":[1,"two"],"b":null}`)
	if m.Binary {
		t.Error("JSON ping answered with a binary reply")
	}

	data := []byte{0, 1, 2, 0xff}
	ref = c.pushBinary(jr, "room:lobby", "ping", data)
	m = c.next()
	if !m.Binary || m.Event != "phx_reply" || m.Status != "ok" || m.Ref != ref || !bytes.Equal(m.Payload, data) {
		t.Fatalf("binary ping: got %+v", m)
	}

	ref = c.push(jr, "room:lobby", "dance", `{}`)
	c.expectReply(ref, "error", `{"reason":"unknown event"}`)
}
