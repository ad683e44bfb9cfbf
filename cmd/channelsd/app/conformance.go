package app

import (
	"context"
	"encoding/json"
	"log/slog"

	"github.com/channelsd/channelsd/channels"
)

// ForbiddenTopic is the conformance topic whose joins are always refused.
const ForbiddenTopic = "conformance:forbidden"

// InterceptedEvent is the broadcast event the conformance channel
// intercepts: each subscriber receives it with its own "join_ref" added.
const InterceptedEvent = "intercepted"

// conformanceChannel is one join of a conformance:* topic, a channel whose
// events make the server do each thing a client library must cope with.
type conformanceChannel struct {
	opts Options
	user string
}

var (
	_ channels.Channel     = (*conformanceChannel)(nil)
	_ channels.AfterJoiner = (*conformanceChannel)(nil)
	_ channels.Interceptor = (*conformanceChannel)(nil)
)

func (c *conformanceChannel) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	if s.Topic() == ForbiddenTopic {
		return nil, channels.Refuse("unauthorized")
	}
	if m, ok := object(params); ok {
		c.user, _ = stringField(m, "user")
	}
	return map[string]string{"topic": s.Topic()}, nil
}

// AfterJoin tracks the join's user, if it gave one, and pushes
// presence_state.
func (c *conformanceChannel) AfterJoin(s *channels.ChannelSocket) {
	if c.user == "" {
		return
	}
	if err := s.Track(c.user, onlineMeta()); err != nil {
		slog.Warn("app: tracking conformance presence failed", "topic", s.Topic(), "user", c.user, "err", err)
	}
	if err := s.PushPresenceState(); err != nil {
		slog.Warn("app: pushing presence_state failed", "topic", s.Topic(), "err", err)
	}
}

func (c *conformanceChannel) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	switch in.Event {
	case "ping":
		return channels.Ok(echo(in.Payload))
	case "fail":
		return channels.ErrorReply(echo(in.Payload))
	case "noreply":
		return channels.NoReply()
	case "broadcast", InterceptedEvent:
		return okOrError(s.Broadcast(in.Event, echo(in.Payload)))
	case "shout":
		return okOrError(s.BroadcastFrom("shout", echo(in.Payload)))
	case "crash":
		panic("app: conformance crash requested")
	case "close_socket":
		s.CloseSocket(channels.CloseGoingAway, "closed by server")
		return channels.NoReply()
	case "binary_echo":
		if !in.Payload.Binary {
			return channels.ErrorReason(reasonBinaryExpected)
		}
		return channels.Ok(channels.Binary(in.Payload.Data))
	case "binary_push":
		if !in.Payload.Binary {
			return channels.ErrorReason(reasonBinaryExpected)
		}
		return okOrError(s.Push("binary_push", channels.Binary(in.Payload.Data)))
	case "binary_broadcast":
		if !in.Payload.Binary {
			return channels.ErrorReason(reasonBinaryExpected)
		}
		return okOrError(s.Broadcast("binary_broadcast", channels.Binary(in.Payload.Data)))
	case "disconnect_id":
		return c.disconnect(in.Payload)
	case "stop":
		return channels.Stop()
	case "stop_reply":
		return channels.Ok(nil).AndStop()
	case "push":
		return push(s, in.Payload)
	case "track", "update", "untrack":
		return c.presence(s, in)
	case "async_reply":
		ref, payload := in.Ref, echo(in.Payload)
		go func() {
			if err := s.Reply(ref, channels.StatusOK, payload); err != nil {
				slog.Warn("app: async reply failed", "topic", s.Topic(), "err", err)
			}
		}()
		return channels.NoReply()
	}
	return channels.ErrorReason(reasonUnknownEvent)
}

// disconnect handles disconnect_id {"id": ID}.
func (c *conformanceChannel) disconnect(p channels.Payload) channels.Result {
	m, ok := object(p)
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	id, ok := stringField(m, "id")
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	var ep *channels.Endpoint
	if c.opts.Endpoint != nil {
		ep = c.opts.Endpoint()
	}
	if ep == nil {
		return channels.ErrorReason("no endpoint")
	}
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	return okOrError(ep.Disconnect(ctx, id))
}

// push handles push {"event": E, "payload": P}: P (an object, {} when
// absent or null) goes to the caller as event E.
func push(s *channels.ChannelSocket, p channels.Payload) channels.Result {
	m, ok := object(p)
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	event, ok := stringField(m, "event")
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	payload, ok := object(channels.Payload{Data: m["payload"]})
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	return okOrError(s.Push(event, payload))
}

// presence handles track and update {"key": K, "meta": M} and untrack
// {"key": K}. M is an object, {} when absent or null.
func (c *conformanceChannel) presence(s *channels.ChannelSocket, in channels.In) channels.Result {
	m, ok := object(in.Payload)
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	key, ok := stringField(m, "key")
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	if in.Event == "untrack" {
		return okOrError(s.Untrack(key))
	}
	meta, ok := object(channels.Payload{Data: m["meta"]})
	if !ok {
		return channels.ErrorReason(reasonInvalidPayload)
	}
	if in.Event == "track" {
		return okOrError(s.Track(key, meta))
	}
	return okOrError(s.UpdatePresence(key, meta))
}

// Intercepts implements channels.Interceptor.
func (c *conformanceChannel) Intercepts() []string { return []string{InterceptedEvent} }

// HandleOut pushes an intercepted broadcast with this join's join_ref
// added to its object payload ("join_ref": null for a join without one).
// Other payloads go out unchanged.
func (c *conformanceChannel) HandleOut(s *channels.ChannelSocket, out channels.Out) {
	payload := any(out.Payload)
	if m, ok := object(out.Payload); ok {
		m["join_ref"] = json.RawMessage("null")
		if jr := s.JoinRef(); !jr.IsNull() {
			m["join_ref"], _ = json.Marshal(jr.Text())
		}
		payload = m
	}
	if err := s.Push(out.Event, payload); err != nil {
		slog.Warn("app: pushing intercepted broadcast failed", "topic", s.Topic(), "err", err)
	}
}

// okOrError replies ok {} when err is nil, else error {"reason": ...}.
func okOrError(err error) channels.Result {
	if err != nil {
		return channels.ErrorReason(errorReason(err))
	}
	return channels.Ok(nil)
}
