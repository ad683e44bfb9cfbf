package redis

import (
	"encoding/json"
	"testing"

	"github.com/channelsd/channelsd/pubsub"
)

// Presence values and diffs are JSON, read with encoding/json: a later
// release may add fields (form "presence" in pubsub/redis gate.go needs
// no new level for that), and this release reads the fields it knows.
// These tests pin it, so that no stricter decoder slips in.

func TestStoredValueWithNextReleaseFieldsIsRead(t *testing.T) {
	tr := &Tracker{}
	v := `{"v":2,"key":"user-1","meta":{"online_at":"1"},"t":1700000000,"node_hint":"b","expires":[1,2],"extra":{"a":null}}`
	s, ok := tr.decodeStored("room:1", "node-b/ref", v)
	if !ok || s.Key != "user-1" || string(s.Meta) != `{"online_at":"1"}` || s.T != 1700000000 {
		t.Fatalf("value with unknown fields read as %+v, %v", s, ok)
	}
	if tr.Invalid() != 0 {
		t.Fatalf("counted invalid: %d", tr.Invalid())
	}
}

// This release writes exactly the floor's value: key, meta, t.
func TestStoredValueIsTheFloorsForm(t *testing.T) {
	b, err := (&entry{key: "k", meta: json.RawMessage(`{}`), t: 5}).value()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil || len(m) != 3 || string(m["key"]) != `"k"` || string(m["t"]) != "5" || string(m["meta"]) != "{}" {
		t.Fatalf("value %s", b)
	}
}

func TestDiffWithNextReleaseFieldsKeepsItsClock(t *testing.T) {
	w := &watcher{t: &Tracker{src: "me"}, topics: map[string]map[string]uint64{"room:1": {}}}
	w.Deliver(&pubsub.Message{Topic: "room:1", Event: "presence_diff", Payload: []byte(
		`{"joins":{},"leaves":{},"src":"b#1","clock":7,"epoch":3,"hist":{"from":1},"compact":true}`)})
	if got, ok := w.topics["room:1"]["b#1"]; !ok || got != 7 {
		t.Fatalf("clock of a diff with unknown fields: %d, %v; want 7", got, ok)
	}
	w.Deliver(&pubsub.Message{Topic: "room:1", Event: "presence_diff", Payload: []byte(
		`{"joins":{},"leaves":{},"src":"b#1","clock":8,"last":true,"why":"gone"}`)})
	if _, ok := w.topics["room:1"]["b#1"]; ok {
		t.Fatal("last of a diff with unknown fields not read")
	}
}
