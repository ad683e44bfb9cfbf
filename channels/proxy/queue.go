package proxy

import (
	"errors"
	"strings"

	"github.com/channelsd/channelsd/channels"
)

// maxQueuedEvents bounds the pushes one join keeps waiting behind a call
// in progress (README, "Channels for any backend"): a client pushing
// faster than its backend answers is refused rather than queued without
// end.
const maxQueuedEvents = 64

// A join's pushes that call the backend are handled by a worker of their
// own, Phoenix's channel process: a slow backend holds up that topic
// alone, while the socket's other topics, its heartbeats and its joins go
// on. The worker takes the pushes one at a time, in the order they came,
// and answers each with ChannelSocket.Reply under its ref, so a topic's
// replies and the backend's calls keep the order of the client's pushes.
// It runs only while pushes wait: an idle join has no goroutine. The
// join's own call is its first task (joinLater): the pushes that come
// before the join is answered wait in the socket, which hands them to
// HandleIn after the join reply, so they queue behind that call.
//
// When the join ends, the pushes already taken are still sent to the
// backend, in order, each within Config.Timeout (their replies go
// nowhere, the channel is gone), and the leave goes after them: the
// backend sees what the client did, then that it left, as it did when a
// push held up the socket.

// enqueueLocked queues in for the worker, starting it if it is not
// running. Called with ch.mu held; releases it.
func (ch *channel) enqueueLocked(s *channels.ChannelSocket, in channels.In) channels.Result {
	if len(ch.queue) >= maxQueuedEvents {
		ch.mu.Unlock()
		ch.c.cfg.Metrics.observe(CallEvent, 0, &CallError{Call: CallEvent, Kind: ErrorDropped, Err: errors.New("too many pushes waiting")})
		return channels.ErrorReason(ReasonUnavailable)
	}
	// The strings are slices of the client's frame; clones let it go.
	in.Event, in.Ref = strings.Clone(in.Event), channels.Ref(strings.Clone(string(in.Ref)))
	ch.queue = append(ch.queue, in)
	start := !ch.running
	ch.running = true
	ch.mu.Unlock()
	if start {
		ch.c.work.Add(1)
		go ch.run(s)
	}
	return channels.NoReply()
}

// run is the join's worker: it handles the queue until it is empty, then
// sends the leave if the join ended meanwhile.
func (ch *channel) run(s *channels.ChannelSocket) {
	defer ch.c.work.Done()
	for {
		ch.mu.Lock()
		if len(ch.queue) == 0 {
			ch.running = false
			ch.queue = nil
			ended, r := ch.ended, ch.endReason
			ch.mu.Unlock()
			if ended && !ch.refused {
				ch.leave(s, r)
			}
			return
		}
		in := ch.queue[0]
		ch.queue[0] = channels.In{}
		ch.queue = ch.queue[1:]
		ch.mu.Unlock()

		status, response, reply := ch.handle(s, in)
		if !reply {
			continue
		}
		if err := s.Reply(in.Ref, status, response); err != nil {
			s.Logger().Warn("proxy: reply to a push cannot be sent", "topic", s.Topic(), "event", in.Event, "err", err)
		}
	}
}
