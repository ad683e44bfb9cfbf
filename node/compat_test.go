package node

import (
	"context"
	"encoding/json"
	"maps"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/redis"
)

// Every report announces what its build reads, and every node's Gate
// learns it.
func TestClusterReportsAnnounceWhatEachNodeReads(t *testing.T) {
	ps := newShared()
	a := startListening(t, Config{NodeID: "a", PubSub: ps})
	startListening(t, Config{NodeID: "b", PubSub: ps})
	awaitView(t, a, "b announced", func(v []NodeReport) bool {
		for _, r := range v {
			if r.Node == "b" && maps.Equal(r.Reads, redis.BuildReads()) {
				return true
			}
		}
		return false
	})
	if got := a.Gate().NodeReads("b", redis.FormCall, time.Now()); got != redis.BuildReads()[redis.FormCall] {
		t.Fatalf("a's Gate: b reads call %d, want %d", got, redis.BuildReads()[redis.FormCall])
	}
}

// A report as the release of b847059 writes it (no "reads"), with fields
// a later release might add besides: the view keeps it, unknown fields
// ignored, and the Gate holds every form at the floor while that node
// reports, then lets the newer forms through once it has gone quiet.
func TestOlderAndNewerReportsAreReadAndGateTheForms(t *testing.T) {
	ps := newShared()
	a := startListening(t, Config{NodeID: "a", PubSub: ps, ReportInterval: 50 * time.Millisecond})
	send := func(payload string) {
		if err := ps.Publish(context.Background(), &pubsub.Message{Topic: clusterTopic, Event: "report", Payload: []byte(payload)}); err != nil {
			t.Fatal(err)
		}
	}
	sent := time.Now().UnixMilli()
	send(`{"node":"next","sockets":3,"started":1,"sent":` + itoa(sent) +
		`,"reads":{"envelope":9,"call":9,"relay":9,"token":9,"presence":9,"history":1},"writes":{"envelope":3},"shards":[1,2],"release":"v9"}`)
	send(`{"node":"old","sockets":7,"websockets":7,"longpoll":0,"channels":2,"messages_in":1,"messages_out":1,"draining":false,"started":1,"sent":` + itoa(sent) + `}`)
	v := awaitView(t, a, "both reports", func(v []NodeReport) bool { return len(v) == 3 })
	for _, r := range v {
		switch r.Node {
		case "next":
			if r.Sockets != 3 || r.Release != "v9" || r.Reads["history"] != 1 {
				t.Fatalf("newer report read as %+v", r)
			}
		case "old":
			if r.Sockets != 7 || r.Reads != nil {
				t.Fatalf("older report read as %+v", r)
			}
		}
	}
	g := a.Gate()
	now := time.Now()
	if g.NodeReads("old", redis.FormEnvelope, now) != redis.FloorReads()[redis.FormEnvelope] {
		t.Fatal("a node without an announcement is not read at the floor")
	}
	// Past the Gate's start-up wait (three intervals), the old node still
	// holds the newer envelope back while it reports (the local PubSub
	// delivers a report before Publish returns).
	time.Sleep(200 * time.Millisecond) // the start-up wait: 150 ms
	send(`{"node":"old","sockets":7,"started":1,"sent":` + itoa(time.Now().UnixMilli()) + `}`)
	if g.MayWrite(redis.FormEnvelope, 3, time.Now()) {
		t.Fatal("newer envelope allowed while a node of the floor reports")
	}
	// Silent for three intervals: forgotten.
	deadline := time.Now().Add(10 * time.Second)
	for !g.MayWrite(redis.FormEnvelope, 3, time.Now()) {
		if time.Now().After(deadline) {
			t.Fatal("newer envelope still refused long after the old node went quiet")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The announcement is added to the report, nothing else changes: the
// fields the release of b847059 reads keep their names and types.
func TestReportKeepsTheFloorsFields(t *testing.T) {
	data, err := json.Marshal(NodeReport{Node: "n", Sockets: 1, Reads: redis.BuildReads()})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	for k, kind := range map[string]string{
		"node": "string", "sockets": "number", "websockets": "number", "longpoll": "number",
		"channels": "number", "messages_in": "number", "messages_out": "number",
		"draining": "bool", "started": "number", "sent": "number",
	} {
		var ok bool
		switch kind {
		case "string":
			_, ok = m[k].(string)
		case "number":
			_, ok = m[k].(float64)
		case "bool":
			_, ok = m[k].(bool)
		}
		if !ok {
			t.Errorf("field %q is %T, want a %s", k, m[k], kind)
		}
	}
}

func itoa(v int64) string { b, _ := json.Marshal(v); return string(b) }
