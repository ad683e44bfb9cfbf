package local_test

import (
	"testing"
	"time"

	"github.com/channelsd/channelsd/pubsub"
	"github.com/channelsd/channelsd/pubsub/historytest"
	"github.com/channelsd/channelsd/pubsub/local"
)

func TestHistoryContract(t *testing.T) {
	historytest.Run(t, func(t *testing.T) pubsub.History {
		ps := local.New()
		t.Cleanup(func() { _ = ps.Close() })
		return ps
	}, historytest.Options{MinTTL: 100 * time.Millisecond, Timeout: 5 * time.Second})
}
