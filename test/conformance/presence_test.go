package conformance

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"testing"

	"github.com/channelsd/channelsd/transport/wsclient"
)

// presenceState is the payload of presence_state and each side of a
// presence_diff: key → {"metas": [...]}.
type presenceState map[string][]map[string]any

type presenceDiff struct {
	Joins, Leaves presenceState
}

// decodeState checks the shape key → {"metas":[object...]} strictly.
func decodeState(t *testing.T, raw json.RawMessage) presenceState {
	t.Helper()
	var entries map[string]map[string]json.RawMessage
	if err := json.Unmarshal(raw, &entries); err != nil || entries == nil {
		t.Fatalf("presence map %s: not an object of objects (%v)", raw, err)
	}
	st := presenceState{}
	for key, e := range entries {
		if len(e) != 1 || e["metas"] == nil {
			t.Fatalf("presence entry %q = %s, want exactly {\"metas\":[...]}", key, raw)
		}
		var metas []map[string]any
		if err := json.Unmarshal(e["metas"], &metas); err != nil || len(metas) == 0 {
			t.Fatalf("metas of %q in %s: want a non-empty array of objects (%v)", key, raw, err)
		}
		for _, m := range metas {
			if ref, ok := m["phx_ref"].(string); !ok || ref == "" {
				t.Fatalf("meta %v of %q has no phx_ref string", m, key)
			}
		}
		st[key] = metas
	}
	return st
}

func decodeDiff(t *testing.T, m wsclient.Message) presenceDiff {
	t.Helper()
	var sides map[string]json.RawMessage
	payloadOf(t, m, &sides)
	if len(sides) != 2 || sides["joins"] == nil || sides["leaves"] == nil {
		t.Fatalf("presence_diff payload %s, want exactly joins and leaves", m.Payload)
	}
	return presenceDiff{Joins: decodeState(t, sides["joins"]), Leaves: decodeState(t, sides["leaves"])}
}

// awaitDiff waits for the next presence_diff on topic.
func (c *conn) awaitDiff(topic string) presenceDiff {
	c.t.Helper()
	m := c.await("presence_diff", wsclient.IsEvent(topic, "presence_diff"))
	if !m.Ref.IsNull() {
		c.t.Fatalf("presence_diff is a broadcast, ref must be null: %s", m)
	}
	return decodeDiff(c.t, m)
}

// awaitState waits for presence_state on topic; it is a push, carrying
// the join_ref.
func (c *conn) awaitState(topic string) presenceState {
	c.t.Helper()
	return c.awaitStateFor(topic, c.JoinRef(topic))
}

// awaitStateFor is awaitState for the join with join_ref jr.
func (c *conn) awaitStateFor(topic, jr string) presenceState {
	c.t.Helper()
	m := c.await("presence_state", wsclient.IsEvent(topic, "presence_state"))
	if c.v == v2 && m.JoinRef.Text() != jr {
		c.t.Fatalf("presence_state join_ref %s, want %q: %s", m.JoinRef, jr, m)
	}
	var raw json.RawMessage
	payloadOf(c.t, m, &raw)
	return decodeState(c.t, raw)
}

// only asserts that st holds exactly key with one meta and returns it.
func only(t *testing.T, st presenceState, key string) map[string]any {
	t.Helper()
	if len(st) != 1 || len(st[key]) != 1 {
		t.Fatalf("presence %v, want exactly one meta under %q", st, key)
	}
	return st[key][0]
}

func metaRefs(metas []map[string]any) []string {
	var refs []string
	for _, m := range metas {
		refs = append(refs, m["phx_ref"].(string))
	}
	sort.Strings(refs)
	return refs
}

// Item 31: track gives every subscriber one presence_diff joining the key
// with a fresh phx_ref, and leaves {}.
func TestItem31_TrackDiff(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "conformance:p31"
	a := tn.dial(t, v2)
	b := tn.dial(t, v2)
	c := tn.dial(t, v1)
	for _, x := range []*conn{a, b, c} {
		x.join(topic, `{}`) // no user: nothing tracked
	}

	a.call(topic, "track", `{"key":"k1","meta":{"device":"web"}}`, "ok", `{}`)
	var ref string
	for _, x := range []*conn{a, b, c} {
		d := x.awaitDiff(topic)
		meta := only(t, d.Joins, "k1")
		if len(d.Leaves) != 0 {
			t.Fatalf("%s: leaves %v, want {}", x.v.name, d.Leaves)
		}
		r := meta["phx_ref"].(string)
		if want := map[string]any{"device": "web", "phx_ref": r}; !reflect.DeepEqual(meta, want) {
			t.Fatalf("%s: joined meta %v, want %v", x.v.name, meta, want)
		}
		if ref != "" && r != ref {
			t.Fatalf("subscribers saw different phx_refs %q and %q", ref, r)
		}
		ref = r
		x.quiet() // one diff only
	}

	// Every track gets a fresh ref: another key, and the same key from
	// another socket.
	a.call(topic, "track", `{"key":"k2","meta":{}}`, "ok", `{}`)
	r2 := only(t, b.awaitDiff(topic).Joins, "k2")["phx_ref"]
	only(t, c.awaitDiff(topic).Joins, "k2")
	b.call(topic, "track", `{"key":"k1","meta":{"device":"ios"}}`, "ok", `{}`)
	r3 := only(t, c.awaitDiff(topic).Joins, "k1")["phx_ref"]
	if r2 == ref || r3 == ref || r2 == r3 {
		t.Fatalf("phx_refs not fresh: %q %q %q", ref, r2, r3)
	}
	// Tracking the same key twice from one join is refused.
	a.call(topic, "track", `{"key":"k1","meta":{}}`, "error", `{"reason":"already_tracked"}`)
}

// Item 32: update gives one presence_diff joining the new meta (new
// phx_ref, phx_ref_prev = old) and leaving the old one.
func TestItem32_UpdateDiff(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "conformance:p32"
	a := tn.dial(t, v2)
	b := tn.dial(t, v2)
	a.join(topic, `{}`)
	b.join(topic, `{}`)

	a.call(topic, "track", `{"key":"k1","meta":{"device":"web"}}`, "ok", `{}`)
	old := only(t, b.awaitDiff(topic).Joins, "k1")
	oldRef := old["phx_ref"].(string)

	a.call(topic, "update", `{"key":"k1","meta":{"device":"web","status":"away"}}`, "ok", `{}`)
	d := b.awaitDiff(topic)
	b.quiet() // a single diff
	joined, left := only(t, d.Joins, "k1"), only(t, d.Leaves, "k1")
	newRef, _ := joined["phx_ref"].(string)
	if newRef == oldRef {
		t.Fatalf("update kept phx_ref %q", oldRef)
	}
	if want := map[string]any{"device": "web", "status": "away", "phx_ref": newRef, "phx_ref_prev": oldRef}; !reflect.DeepEqual(joined, want) {
		t.Fatalf("joined meta %v, want %v", joined, want)
	}
	if !reflect.DeepEqual(left, old) {
		t.Fatalf("left meta %v, want the old meta %v", left, old)
	}

	// The state shows the new meta only.
	c := tn.dial(t, v2)
	c.join(topic, `{"user":"carol"}`)
	st := c.awaitState(topic)
	if got := st["k1"]; len(got) != 1 || !reflect.DeepEqual(got[0], joined) {
		t.Fatalf("state k1 = %v, want [%v]", got, joined)
	}
	only(t, b.awaitDiff(topic).Joins, "carol")

	// Updating or untracking what is not tracked.
	a.call(topic, "update", `{"key":"nope","meta":{}}`, "error", `{"reason":"nopresence"}`)
	a.call(topic, "untrack", `{"key":"k1"}`, "ok", `{}`)
	d = b.awaitDiff(topic)
	if len(d.Joins) != 0 || only(t, d.Leaves, "k1")["phx_ref"] != newRef {
		t.Fatalf("untrack diff %+v, want a leave of %q", d, newRef)
	}
}

// Item 33: when a channel that tracked a presence ends (leave, crash,
// socket close), its meta leaves.
func TestItem33_LeaveOnTerminate(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	for _, tc := range []struct {
		name string
		end  func(c *conn, topic string)
	}{
		{name: "leave", end: func(c *conn, topic string) {
			ref, err := c.Leave(topic)
			if err != nil {
				c.t.Fatal(err)
			}
			c.awaitReply(ref)
		}},
		{name: "crash", end: func(c *conn, topic string) {
			c.push(topic, "crash", `{}`)
			c.await("phx_error", wsclient.IsEvent(topic, "phx_error"))
		}},
		{name: "stop", end: func(c *conn, topic string) {
			c.push(topic, "stop", `{}`)
			c.await("phx_close", wsclient.IsEvent(topic, "phx_close"))
		}},
		{name: "socket close", end: func(c *conn, topic string) {
			c.Close()
		}},
		{name: "server closes the socket", end: func(c *conn, topic string) {
			c.push(topic, "close_socket", `{}`)
			c.awaitClose()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic := "conformance:p33-" + tc.name
			observer := tn.dial(t, v2)
			observer.join(topic, `{}`)
			a := tn.dial(t, v2)
			a.join(topic, `{"user":"ann"}`)
			joined := only(t, observer.awaitDiff(topic).Joins, "ann")
			if _, ok := joined["online_at"].(float64); !ok {
				t.Fatalf("meta %v has no numeric online_at", joined)
			}
			// A presence tracked by event, too.
			a.call(topic, "track", `{"key":"extra","meta":{"k":"v"}}`, "ok", `{}`)
			extra := only(t, observer.awaitDiff(topic).Joins, "extra")

			tc.end(a, topic)
			left := presenceState{}
			for len(left) < 2 {
				d := observer.awaitDiff(topic)
				if len(d.Joins) != 0 {
					t.Fatalf("unexpected joins %v", d.Joins)
				}
				for k, metas := range d.Leaves {
					left[k] = append(left[k], metas...)
				}
			}
			if want := (presenceState{"ann": {joined}, "extra": {extra}}); !reflect.DeepEqual(left, want) {
				t.Fatalf("leaves %v, want %v", left, want)
			}
			observer.quiet()
		})
	}
}

// Item 34: presence_state after a (re)join lists every live entry grouped
// by key, with one meta per tracking socket.
func TestItem34_PresenceState(t *testing.T) {
	t.Parallel()
	tn := startNode(t)
	const topic = "conformance:p34"
	a1 := tn.dial(t, v2)
	a2 := tn.dial(t, v1)
	b := tn.dial(t, v2)
	a1.join(topic, `{"user":"ann"}`)
	s1 := a1.awaitState(topic)
	a2.join(topic, `{"user":"ann"}`)
	s2 := a2.awaitState(topic)
	if len(s1["ann"]) != 1 || len(s2["ann"]) != 2 || len(s2) != 1 {
		t.Fatalf("states %v then %v, want ann with one then two metas", s1, s2)
	}

	b.join(topic, `{"user":"bob"}`)
	st := b.awaitState(topic)
	if len(st) != 2 || len(st["ann"]) != 2 || len(st["bob"]) != 1 {
		t.Fatalf("state %v, want ann with two metas and bob with one", st)
	}
	annRefs := metaRefs(st["ann"])
	if !reflect.DeepEqual(annRefs, metaRefs(s2["ann"])) || annRefs[0] == annRefs[1] {
		t.Fatalf("ann's refs %v, want the two distinct refs of %v", annRefs, s2["ann"])
	}
	bobRef := st["bob"][0]["phx_ref"]

	// A rejoin (duplicate join) gets a fresh state: bob's old meta has
	// left and the new join's meta is there.
	oldJR := b.JoinRef(topic)
	b.join(topic, `{"user":"bob"}`)
	b.await("phx_close", func(m wsclient.Message) bool {
		return wsclient.IsEvent(topic, "phx_close")(m) && m.JoinRef.Text() == oldJR
	})
	st = b.awaitState(topic)
	if len(st) != 2 || len(st["ann"]) != 2 || len(st["bob"]) != 1 || st["bob"][0]["phx_ref"] == bobRef {
		t.Fatalf("state after rejoin %v, want ann's two metas and one new bob meta (old ref %v)", st, bobRef)
	}

	// One of ann's sockets goes: her key stays with the other meta.
	a1.Close()
	for {
		if d := b.awaitDiff(topic); len(d.Leaves["ann"]) == 1 {
			break
		}
	}
	c := tn.dial(t, v2)
	c.join(topic, `{"user":"carol"}`)
	st = c.awaitState(topic)
	if len(st["ann"]) != 1 || !slices.Contains(annRefs, st["ann"][0]["phx_ref"].(string)) || len(st["bob"]) != 1 || len(st["carol"]) != 1 {
		t.Fatalf("state %v, want one of ann's metas, bob and carol", st)
	}
}
