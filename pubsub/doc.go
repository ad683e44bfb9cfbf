// Package pubsub defines how broadcasts travel: the PubSub interface that
// channels publish to and subscribe through, and the Registry of local
// subscribers that every implementation shares.
//
// A broadcast's path, top to bottom:
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
// Implementations live side by side in subpackages: pubsub/local keeps
// everything in this process (a single node, the default), pubsub/redis
// relays through Redis pub/sub. The contract (at-most-once, per-origin
// order) is stated on PubSub.
package pubsub
