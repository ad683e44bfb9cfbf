package redis

import (
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/historytest"
)

// TestHistoryContract runs pubsub.History's contract suite, each subtest
// on its own node of one Redis.
func TestHistoryContract(t *testing.T) {
	srv := startRedis(t)
	var n atomic.Int64
	historytest.Run(t, func(t *testing.T) pubsub.History {
		id := "contract-" + strconv.FormatInt(n.Add(1), 10)
		p := node(t, srv, id)
		p.SetGate(openGate(id))
		return p
	}, historytest.Options{MinTTL: time.Second, Timeout: 10 * time.Second})
}
