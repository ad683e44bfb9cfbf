package local

import (
	"context"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// PubSub delivers broadcasts to the subscribers of this process only.
// Publish runs delivery on the caller's goroutine, so messages from one
// publisher reach every subscriber in publish order.
type PubSub struct {
	reg    pubsub.Registry
	closed atomic.Bool
	// hist holds the histories of the topics the policy gives one
	// (history.go).
	hist histories
}

// New returns an in-memory PubSub.
func New() *PubSub { return &PubSub{} }

var _ pubsub.PubSub = (*PubSub)(nil)

// Subscribe implements pubsub.PubSub.
func (p *PubSub) Subscribe(topic string, s pubsub.Subscriber) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	p.reg.Add(topic, s)
	return nil
}

// Unsubscribe implements pubsub.PubSub.
func (p *PubSub) Unsubscribe(topic string, s pubsub.Subscriber) { p.reg.Remove(topic, s) }

// SubscribePrefix implements pubsub.PrefixSubscriber.
func (p *PubSub) SubscribePrefix(prefix string, s pubsub.Subscriber) error {
	if p.closed.Load() {
		return pubsub.ErrClosed
	}
	p.reg.AddPrefix(prefix, s)
	return nil
}

// UnsubscribePrefix implements pubsub.PrefixSubscriber.
func (p *PubSub) UnsubscribePrefix(prefix string, s pubsub.Subscriber) { p.reg.RemovePrefix(prefix, s) }

var _ pubsub.PrefixSubscriber = (*PubSub)(nil)

// Publish implements pubsub.PubSub: PublishAt without the
// position. A topic without history costs one atomic load more than a
// bare Dispatch while no policy is set.
func (p *PubSub) Publish(ctx context.Context, m *pubsub.Message) error {
	_, err := p.PublishAt(ctx, m)
	return err
}

// ObserveDispatch implements pubsub.DispatchObservable.
func (p *PubSub) ObserveDispatch(f func(time.Duration)) { p.reg.SetDispatchObserver(f) }

var _ pubsub.DispatchObservable = (*PubSub)(nil)

// Subscribers returns the number of subscribers of topic.
func (p *PubSub) Subscribers(topic string) int { return p.reg.Count(topic) }

// Close implements pubsub.PubSub.
func (p *PubSub) Close() error {
	p.closed.Store(true)
	return nil
}
