package channels

import "github.com/channelsd/channelsd/pubsub"

// Deliver hands m to the join as its topic's PubSub would, for the
// external tests that inject broadcasts (positions out of order, holes)
// which a real PubSub does not produce on demand.
func Deliver(c *ChannelSocket, m *pubsub.Message) { c.subscriber().Deliver(m) }

func Excluded(c *ChannelSocket, m *pubsub.Message) { c.subscriber().Excluded(m) }
