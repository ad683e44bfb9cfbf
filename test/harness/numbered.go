package harness

import (
	"encoding/json"
	"maps"
	"sync"

	"github.com/channelsd/channelsd/transport/wsclient"
)

// Numbered counts the numbered broadcasts a client receives: payloads
// {"n": N} of one event on one topic, the ledger of the delivery checks
// (which broadcast reached whom, how many times). Its OnMessage goes in
// wsclient.ReconnectOptions; it is safe for concurrent use.
type Numbered struct {
	topic, event string

	mu  sync.Mutex
	got map[int]int // broadcast number -> times received
}

// NewNumbered counts event's broadcasts on topic.
func NewNumbered(topic, event string) *Numbered {
	return &Numbered{topic: topic, event: event, got: map[int]int{}}
}

// OnMessage counts m if it is one of the broadcasts.
func (c *Numbered) OnMessage(m wsclient.Message) {
	if m.Topic != c.topic || m.Event != c.event {
		return
	}
	var p struct{ N int }
	if json.Unmarshal(m.Payload, &p) == nil {
		c.mu.Lock()
		c.got[p.N]++
		c.mu.Unlock()
	}
}

// Times is how many times broadcast n arrived.
func (c *Numbered) Times(n int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.got[n]
}

// Received returns a copy of the counts: broadcast number -> times.
func (c *Numbered) Received() map[int]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return maps.Clone(c.got)
}
