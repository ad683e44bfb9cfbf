// Package pubsub defines how broadcasts travel: the PubSub interface that
// channels publish to and subscribe through, and the Registry of local
// subscribers that every implementation shares.
//
// # Where it fits
//
// Most applications never call it: a channel broadcasts with
// channels.ChannelSocket.Broadcast, and package node builds the PubSub.
// What an application chooses is the implementation, in node.Config:
//
//   - pubsub/local (the default): in this process only, for a single node;
//   - pubsub/redis: relayed through Redis pub/sub to every node sharing it.
//
// Used directly, a PubSub is a topic-based fan-out:
//
//	ps := local.New()
//	defer ps.Close()
//	_ = ps.Subscribe("room:1", sub) // sub implements Subscriber
//	_ = ps.Publish(ctx, &pubsub.Message{Topic: "room:1", Event: "msg", Payload: []byte(`{"body":"hi"}`)})
//	// sub.Deliver has run before Publish returned
//
// # Contract
//
// Delivery is at most once, in publish order per origin node and topic;
// the full list is on PubSub. A Subscriber's Deliver must never block: a
// slow subscriber queues or drops, it never holds up the publisher or the
// other subscribers.
//
// # A broadcast's path
//
//  1. A channel (or the HTTP publish API) calls PubSub.Publish.
//  2. The implementation hands the message to Registry.Dispatch, which walks
//     the topic's subscribers without holding a lock and calls Deliver on
//     each one. Deliver never blocks; the socket behind it queues the frame.
//  3. Each subscriber asks Message.Encoded for the bytes of its wire format.
//     The first caller per format encodes; the rest share those bytes.
//  4. A clustered implementation also sends the message to the other nodes,
//     which run step 2 and 3 for their own subscribers.
//
// # History
//
// An implementation may also be a History: topics its HistoryPolicy
// selects keep their newest broadcasts, each with a Position, so that a
// client that rejoins recovers what it missed (PROTOCOL.md §12, and
// package channels). Topics without history behave and cost as if the
// feature did not exist. A History whose reads are round trips may also
// offer TopNotes: the position its node's dispatches stand at, which a
// join that asks for no broadcasts takes instead of reading.
package pubsub
