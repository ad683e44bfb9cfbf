package app

import (
	"encoding/json"
	"log/slog"
	"strings"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
)

// roomChannel is one join of a room:<name> (or private:<name>) topic: a
// chat room with presence.
type roomChannel struct {
	user string
}

var (
	_ channels.Channel     = (*roomChannel)(nil)
	_ channels.AfterJoiner = (*roomChannel)(nil)
)

// Join picks the user: on a socket authenticated by a token, its sub;
// otherwise the join parameter user, else the socket's connect parameter
// user, else a generated anonymous name.
func (c *roomChannel) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	if claims := auth.ClaimsOf(s); claims != nil {
		c.user = claims.Subject
		return nil, nil
	}
	if m, ok := object(params); ok {
		c.user, _ = stringField(m, "user")
	}
	if c.user == "" {
		c.user, _ = s.Assigned("user").(string)
	}
	if c.user == "" {
		c.user, _ = strings.CutPrefix(s.SocketID(), "user:")
	}
	if c.user == "" {
		c.user = anonymousUser()
	}
	return nil, nil
}

// AfterJoin tracks the user, then pushes presence_state.
func (c *roomChannel) AfterJoin(s *channels.ChannelSocket) {
	if err := s.Track(c.user, onlineMeta()); err != nil {
		slog.Warn("app: tracking room presence failed", "topic", s.Topic(), "user", c.user, "err", err)
	}
	if err := s.PushPresenceState(); err != nil {
		slog.Warn("app: pushing presence_state failed", "topic", s.Topic(), "err", err)
	}
}

func (c *roomChannel) HandleIn(s *channels.ChannelSocket, in channels.In) channels.Result {
	switch in.Event {
	case "new_msg":
		m, ok := object(in.Payload)
		if !ok {
			return channels.ErrorReply(replyInvalidPayload)
		}
		body, ok := m["body"]
		if !ok {
			return channels.ErrorReply(replyInvalidPayload)
		}
		if err := s.Broadcast("new_msg", map[string]any{"body": body, "user": c.user}); err != nil {
			return channels.ErrorReply(errorReason(err))
		}
		return channels.Ok(nil)
	case "typing":
		m, ok := object(in.Payload)
		if !ok {
			return channels.ErrorReply(replyInvalidPayload)
		}
		user, _ := json.Marshal(c.user)
		m["user"] = user
		if err := s.BroadcastFrom("typing", m); err != nil {
			return channels.ErrorReply(errorReason(err))
		}
		return channels.Ok(nil)
	case "ping":
		return channels.Ok(echo(in.Payload))
	}
	return channels.ErrorReply(replyUnknownEvent)
}

func (c *roomChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}
