package pubsub

import (
	"context"
	"errors"
	"sync"
	"time"
)

// Message is one broadcast on a topic. A PubSub hands the same *Message to
// every local subscriber of the topic; subscribers must treat it, and the
// bytes it holds, as read-only.
type Message struct {
	Topic string
	Event string
	// Payload is raw JSON, or raw bytes when Binary is set. It is carried,
	// never decoded.
	Payload []byte
	Binary  bool
	// From names the subscriber that published the message with
	// broadcast_from semantics; that subscriber does not receive it. Empty
	// for an ordinary broadcast. It only matters on the origin node:
	// subscriber names are unique per node.
	From string
	// Pos is the message's place in its topic's history (History); zero
	// for a topic without history.
	Pos Position
	// Local marks a message delivered to this node's subscribers only,
	// never published (a presence repair's fresh presence_state): it took
	// no place in its topic's history, so, unlike a broadcast without a
	// position, it tells a subscriber following the positions nothing
	// about the next one.
	Local bool

	encodings encodingCache
}

// Subscriber receives the messages of the topics it subscribed to.
type Subscriber interface {
	// SubscriberID is unique among this node's subscribers; Message.From
	// is compared with it.
	SubscriberID() string
	// Deliver is called from the PubSub's dispatch path, once per message,
	// in publish order for messages of one origin. It must not block: a
	// subscriber that cannot keep up queues or drops, it never stalls the
	// broadcaster or the other subscribers.
	Deliver(m *Message)
}

// PubSub fans broadcasts out to subscribers, on this node and, for
// clustered implementations, on every other node.
//
// Contract shared by all implementations:
//   - Delivery is at most once. A message is delivered to every subscriber
//     that was subscribed on its node when the message reached that node.
//   - Messages published on one node to one topic reach every subscriber
//     in publish order. There is no order across origin nodes or topics.
//   - Publish delivers to this node's subscribers before it returns, so a
//     publisher sees its own broadcasts in order with its other output.
//     (Topics with history, History, may be delivered after: in their
//     offset order instead.)
//   - Subscribe and Unsubscribe are idempotent per (topic, subscriber) and
//     safe under any concurrency.
type PubSub interface {
	Subscribe(topic string, s Subscriber) error
	Unsubscribe(topic string, s Subscriber)
	// Publish delivers m locally and relays it to the cluster. Publish
	// takes ownership of m. An error means other nodes may have missed the
	// message; local subscribers still got it, except with ErrTooLarge:
	// a message the cluster cannot carry reaches nobody.
	Publish(ctx context.Context, m *Message) error
	// Close releases connections; Publish after Close fails with ErrClosed.
	Close() error
}

// PrefixSubscriber is implemented by the PubSubs that can hand every
// message whose topic begins with a prefix to one subscriber, besides the
// topic's own subscribers: pubsub/local, and pubsub/redis for prefixes
// its pattern subscription receives (Options.PatternTopics). A table of
// topics that each have one subscriber (the socket id topics, one per
// socket) can so be one route and an index of the caller's, instead of a
// subscription per topic.
//
// SubscribePrefix fails when the PubSub cannot receive the prefix's
// topics from the cluster; the caller then subscribes topic by topic.
// The route receives messages published after SubscribePrefix returns,
// with Deliver's guarantees; both calls are idempotent.
type PrefixSubscriber interface {
	SubscribePrefix(prefix string, s Subscriber) error
	UnsubscribePrefix(prefix string, s Subscriber)
}

// DispatchObservable is implemented by the PubSubs that can report how
// long handing one broadcast to this node's subscribers takes
// (pubsub/local and pubsub/redis, through Registry.SetDispatchObserver).
// The node uses it for its fan-out histogram; pubsub itself stays free of
// any metrics library.
type DispatchObservable interface {
	// ObserveDispatch sets f as the dispatch observer; see
	// Registry.SetDispatchObserver.
	ObserveDispatch(f func(time.Duration))
}

// ErrClosed is returned by a PubSub that has been closed.
var ErrClosed = errors.New("pubsub: closed")

// ErrTooLarge is returned (wrapped) by Publish and by Caller.Call for a
// message above what the cluster's transport carries in one piece
// (pubsub/redis's MaxMessageSize). Nothing was delivered, locally or
// elsewhere: the sender can tell its client, rather than some nodes
// getting the message and others not.
var ErrTooLarge = errors.New("pubsub: message too large")

// LimitCounter is implemented by the PubSubs and presence trackers that
// refuse input over a resource limit. LimitHits names each limit as in
// channelsd_limit_hits_total's label (README "Limits") and gives the
// counter of its refusals; the node reads them at scrape time.
type LimitCounter interface {
	LimitHits() map[string]func() uint64
}

// Encoder encodes a broadcast into the bytes a transport writes. Keys
// compare with ==; use one long-lived value per wire format.
type Encoder interface {
	EncodeBroadcast(m *Message) (data []byte, binary bool, err error)
}

// Encoded returns enc's encoding of m. The first subscriber that asks for
// an encoder's bytes pays for the encoding; every later one gets the same
// bytes (the "fastlane": one encoding per wire format per node, however
// many sockets receive the message).
func (m *Message) Encoded(enc Encoder) (data []byte, binary bool, err error) {
	return m.encodings.get(m, enc)
}

// encodingCache holds a few encodings; nodes speak at most a handful of
// wire formats, so a short slice beats a map.
type encodingCache struct {
	mu      sync.Mutex
	entries []encoding
}

type encoding struct {
	enc    Encoder
	data   []byte
	binary bool
	err    error
}

func (c *encodingCache) get(m *Message, enc Encoder) ([]byte, bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.entries {
		if e := &c.entries[i]; e.enc == enc {
			return e.data, e.binary, e.err
		}
	}
	data, binary, err := enc.EncodeBroadcast(m)
	c.entries = append(c.entries, encoding{enc, data, binary, err})
	return data, binary, err
}
