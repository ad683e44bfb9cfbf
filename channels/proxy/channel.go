package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
)

// ReasonUnavailable is the reason of the error reply a client gets when
// the backend gave no usable answer (down, slow, 5xx, malformed, too
// large): {"reason":"backend unavailable"}.
const ReasonUnavailable = "backend unavailable"

// Spec is what the channels of one topic pattern do.
type Spec struct {
	// Presence tracks each join under its user (meta {"online_at": unix
	// ms}) and pushes presence_state after the join reply.
	Presence bool
	// ClientBroadcast lists the events a client may push to be broadcast
	// as they are to every subscriber of the topic, the sender included,
	// answered ok {}, with no backend call.
	ClientBroadcast []string
	// Join, Event and Leave are the URLs of the calls; "" makes none: a
	// join is accepted with {}, an event not in ClientBroadcast gets
	// {"reason":"unknown event"}, a leave is not told.
	Join, Event, Leave string
}

// Factory returns the ChannelFactory of spec's channels, calling the
// backend through c. Route a pattern to it:
//
//	router.Handle("order:*", client.Factory(proxy.Spec{Join: url, Event: url2}))
func (c *Client) Factory(spec Spec) channels.ChannelFactory {
	spec.ClientBroadcast = slices.Clone(spec.ClientBroadcast)
	return func(string) channels.Channel { return &channel{c: c, spec: &spec} }
}

// channel is one join of a proxied topic. Its fields are the join's
// state, used by its callbacks only (one at a time, channels.Channel).
type channel struct {
	c    *Client
	spec *Spec
	user string // set by Join, then only read
	// assigns, a JSON object, is written by Join, then by the calls of the
	// join's worker (the join call among them); Terminate reads it only when no worker runs (seen
	// under mu), so that each write happens before the next read.
	assigns json.RawMessage

	mu sync.Mutex
	// queue holds the pushes waiting for the worker, which runs while
	// running is set (queue.go). guarded by mu.
	queue   []channels.In
	running bool // guarded by mu
	// ended: the join ended while the worker ran; the worker sends the
	// leave, with endReason, once the queue is empty. guarded by mu.
	ended     bool
	endReason channels.Reason
	// refused: the backend did not accept the join, so no leave is sent.
	// Written by the worker's first task, then read by the worker.
	refused bool
}

var (
	_ channels.Channel     = (*channel)(nil)
	_ channels.AfterJoiner = (*channel)(nil)
	_ channels.Terminator  = (*channel)(nil)
)

// identityKey holds, in a socket's assigns, what the connect call
// answered (connect.go).
const identityKey = "channelsd.proxy.identity"

// identity is a socket's user and assigns as the connect call gave them.
type identity struct {
	user    string
	assigns json.RawMessage
}

var emptyObject = json.RawMessage("{}")

// who sets the join's user and assigns from the socket: the connect
// call's answer, else a signed token's sub, else the socket id's
// "user:<name>".
func (ch *channel) who(s *channels.ChannelSocket) {
	ch.assigns = emptyObject
	if id, ok := s.Assigned(identityKey).(*identity); ok {
		ch.user = id.user
		if present(id.assigns) {
			ch.assigns = id.assigns
		}
		return
	}
	if claims := auth.ClaimsOf(s); claims != nil {
		ch.user = claims.Subject
		return
	}
	if u, ok := s.Assigned("user").(string); ok {
		ch.user = u
		return
	}
	ch.user, _ = strings.CutPrefix(s.SocketID(), "user:")
}

func (ch *channel) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	ch.who(s)
	if ch.spec.Join == "" {
		return nil, nil
	}
	if params.Binary {
		return nil, channels.Refuse("binary payload not supported")
	}
	req := &JoinRequest{SocketID: s.SocketID(), User: ch.user, Assigns: ch.assigns, Topic: s.Topic(), Params: orEmpty(params.Data)}
	// The call runs on the join's worker (queue.go), its first task: the
	// socket reads on meanwhile, and the join answers when the backend
	// does.
	ctx := s.Context()
	ch.mu.Lock()
	ch.running = true
	ch.mu.Unlock()
	ch.c.work.Add(1)
	go ch.joinLater(ctx, s, req)
	return channels.Pending(), nil
}

// joinLater is the worker's first task for a join that calls the
// backend: the call, the join's answer, then the pushes that came
// meanwhile (run).
func (ch *channel) joinLater(ctx context.Context, s *channels.ChannelSocket, req *JoinRequest) {
	response, err := ch.askJoin(ctx, s, req)
	// A join the backend did not accept is not told it ended.
	ch.refused = err != nil
	if err := s.CompleteJoin(response, err); err != nil {
		// The join ended first (left, replaced, closed, timed out):
		// Terminate has been called, and run sends the leave.
		s.Logger().Debug("proxy: join answer dropped, the join has ended", "topic", s.Topic())
	}
	ch.run(s)
}

// askJoin makes the join call and returns the join's answer.
func (ch *channel) askJoin(ctx context.Context, s *channels.ChannelSocket, req *JoinRequest) (any, error) {
	ans := &Answer{}
	if err := ch.c.call(ctx, CallJoin, ch.spec.Join, req, ans); err != nil {
		if ctx.Err() != nil {
			return nil, channels.Refuse(ReasonUnavailable) // ended meanwhile: no one to tell
		}
		s.Logger().Warn("proxy: join refused, backend unavailable", "topic", s.Topic(), "err", err)
		return nil, channels.Refuse(ReasonUnavailable)
	}
	if ans.Status != "ok" {
		return nil, &channels.JoinError{Reply: errorReply(ans)}
	}
	if present(ans.Assigns) {
		ch.assigns = ans.Assigns
	}
	if present(ans.Reply) {
		return ans.Reply, nil
	}
	return nil, nil
}

func (ch *channel) AfterJoin(s *channels.ChannelSocket) {
	if !ch.spec.Presence {
		return
	}
	key := ch.user
	if key == "" {
		key = s.SocketID()
	}
	if key == "" {
		key = anonymous()
	}
	if err := s.Track(key, map[string]int64{"online_at": time.Now().UnixMilli()}); err != nil {
		s.Logger().Debug("proxy: tracking presence failed", "topic", s.Topic(), "err", err)
	}
	if err := s.PushPresenceState(); err != nil {
		s.Logger().Warn("proxy: pushing presence_state failed", "topic", s.Topic(), "err", err)
	}
}

func (ch *channel) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	ch.mu.Lock()
	if ch.running {
		// Behind a call in progress: wait in line, so that this topic's
		// replies keep the order of its pushes, whatever the event.
		return ch.enqueueLocked(s, in)
	}
	if !ch.proxied(in) {
		ch.mu.Unlock()
		status, response, _ := ch.handle(s, in)
		return channels.Reply(status, response)
	}
	return ch.enqueueLocked(s, in)
}

// proxied reports whether handling in calls the backend.
func (ch *channel) proxied(in channels.In) bool {
	return ch.spec.Event != "" && !in.Payload.Binary && !slices.Contains(ch.spec.ClientBroadcast, in.Event)
}

// handle does what a push asks and returns the reply; reply false: none
// (the backend answered noreply). It runs on the join's worker for every
// push queued, inline for the others.
func (ch *channel) handle(s *channels.ChannelSocket, in channels.In) (status string, response any, reply bool) {
	if slices.Contains(ch.spec.ClientBroadcast, in.Event) {
		if err := s.Broadcast(in.Event, in.Payload); err != nil {
			s.Logger().Warn("proxy: client broadcast failed", "topic", s.Topic(), "event", in.Event, "err", err)
			return channels.StatusError, reason("broadcast failed"), true
		}
		return channels.StatusOK, nil, true
	}
	if ch.spec.Event == "" {
		return channels.StatusError, reason("unknown event"), true
	}
	if in.Payload.Binary {
		return channels.StatusError, reason("binary payload not supported"), true
	}
	req := &EventRequest{SocketID: s.SocketID(), User: ch.user, Assigns: ch.assigns, Topic: s.Topic(),
		Event: in.Event, Payload: orEmpty(in.Payload.Data), Ref: in.Ref.Text()}
	ans := &Answer{event: true}
	if err := ch.c.call(context.Background(), CallEvent, ch.spec.Event, req, ans); err != nil {
		s.Logger().Warn("proxy: event answered with an error, backend unavailable", "topic", s.Topic(), "event", in.Event, "err", err)
		return channels.StatusError, reason(ReasonUnavailable), true
	}
	if present(ans.Assigns) {
		ch.assigns = ans.Assigns
	}
	for _, b := range ans.Broadcasts {
		payload := json.RawMessage(orEmpty(b.Payload))
		publish := s.Broadcast
		if b.ExcludeSender {
			publish = s.BroadcastFrom
		}
		if err := publish(b.Event, payload); err != nil {
			s.Logger().Warn("proxy: broadcast of an event answer failed", "topic", s.Topic(), "event", b.Event, "err", err)
		}
	}
	switch ans.Status {
	case "noreply":
		return "", nil, false
	case "ok":
		return channels.StatusOK, json.RawMessage(orEmpty(ans.Reply)), true
	}
	return channels.StatusError, errorReply(ans), true
}

// Terminate tells the backend, without waiting for it: the socket's other
// channels and its close must not wait for a slow backend. While pushes
// of the join are still queued, the leave goes after them.
func (ch *channel) Terminate(s *channels.ChannelSocket, r channels.Reason) {
	ch.mu.Lock()
	if ch.running {
		ch.ended, ch.endReason = true, r
		ch.mu.Unlock()
		return
	}
	ch.mu.Unlock()
	ch.leave(s, r)
}

func (ch *channel) leave(s *channels.ChannelSocket, r channels.Reason) {
	if ch.spec.Leave == "" {
		return
	}
	ch.c.notify(CallLeave, ch.spec.Leave, &LeaveRequest{SocketID: s.SocketID(), User: ch.user, Assigns: ch.assigns, Topic: s.Topic(), Reason: string(r)})
}

func reason(r string) map[string]string { return map[string]string{"reason": r} }

// errorReply is an error answer's reply payload.
func errorReply(ans *Answer) any {
	if present(ans.Reply) {
		return ans.Reply
	}
	return reason(ans.Reason)
}

func orEmpty(b []byte) json.RawMessage {
	if len(b) == 0 {
		return emptyObject
	}
	return b
}

func anonymous() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "anon-" + hex.EncodeToString(b[:])
}

// ConnectHandler is a channels.SocketHandler that asks the backend to
// accept each connection (the connect call).
type ConnectHandler struct {
	Client *Client
	URL    string
	// Headers names the request headers forwarded to the backend (Cookie,
	// Authorization...); no others are.
	Headers []string
	// Logger records the calls that got no usable answer; nil: the
	// default logger.
	Logger *slog.Logger
}

// Connect implements channels.SocketHandler: the backend's ok names the
// socket and gives its user and assigns; its error refuses with its
// status and reason; no usable answer refuses with 503 "backend
// unavailable".
func (h *ConnectHandler) Connect(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
	req := &ConnectRequest{Params: info.Params, RemoteAddr: info.RemoteAddr, Transport: info.Transport, Token: info.AuthToken}
	for _, name := range h.Headers {
		if v := info.Header.Get(name); v != "" {
			if req.Headers == nil {
				req.Headers = make(map[string]string, len(h.Headers))
			}
			req.Headers[name] = v
		}
	}
	ans := &ConnectAnswer{}
	if err := h.Client.call(ctx, CallConnect, h.URL, req, ans); err != nil {
		log := h.Logger
		if log == nil {
			log = slog.Default()
		}
		log.Warn("proxy: connection refused, backend unavailable", "remote", info.RemoteAddr, "err", err)
		return channels.Identity{}, &channels.ConnectError{Status: 503, Reason: ReasonUnavailable}
	}
	if ans.Status != "ok" {
		return channels.Identity{}, &channels.ConnectError{Status: ans.HTTPStatus, Reason: ans.Reason}
	}
	return channels.Identity{ID: ans.SocketID, Assigns: map[string]any{identityKey: &identity{user: ans.User, assigns: ans.Assigns}}}, nil
}
