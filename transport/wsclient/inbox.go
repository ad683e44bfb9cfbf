package wsclient

import (
	"context"
	"errors"
	"slices"
	"sync"
)

// Inbox is the receiving side of a test client, shared by this package's
// Client and the long-poll client (transport/lpclient): the client's own
// goroutine sends every message it receives on a channel, and closes it
// when the client ends; Await takes the first message that matches and
// keeps the ones it passes over, in order, for later calls. Receivers
// take turns: one call runs at a time.
type Inbox struct {
	msgs    <-chan Message
	mu      sync.Mutex
	pending []Message // received, passed over by an Await
}

// ErrInboxClosed is returned by Inbox.Await when the channel has closed
// and no queued message matches; clients wrap it with why they ended.
var ErrInboxClosed = errors.New("wsclient: no more messages")

// NewInbox reads msgs.
func NewInbox(msgs <-chan Message) *Inbox { return &Inbox{msgs: msgs} }

// Await returns the first message, queued or arriving, for which match is
// true; ErrInboxClosed once the channel has closed without one; ctx's
// error when it ends first.
func (in *Inbox) Await(ctx context.Context, match func(Message) bool) (Message, error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for i, m := range in.pending {
		if match(m) {
			in.pending = slices.Delete(in.pending, i, i+1)
			return m, nil
		}
	}
	for {
		select {
		case m, ok := <-in.msgs:
			if !ok {
				return Message{}, ErrInboxClosed
			}
			if match(m) {
				return m, nil
			}
			in.pending = append(in.pending, m)
		case <-ctx.Done():
			return Message{}, ctx.Err()
		}
	}
}

// Queued returns a copy of the messages received and not yet taken,
// without waiting.
func (in *Inbox) Queued() []Message {
	in.mu.Lock()
	defer in.mu.Unlock()
	for {
		select {
		case m, ok := <-in.msgs:
			if !ok {
				return slices.Clone(in.pending)
			}
			in.pending = append(in.pending, m)
		default:
			return slices.Clone(in.pending)
		}
	}
}

// AwaitClosed queues every message until the channel closes, or returns
// ctx's error first.
func (in *Inbox) AwaitClosed(ctx context.Context) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	for {
		select {
		case m, ok := <-in.msgs:
			if !ok {
				return nil
			}
			in.pending = append(in.pending, m)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
