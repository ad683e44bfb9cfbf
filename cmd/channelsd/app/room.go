package app

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/presence"
)

// roomChannel is one join of a room:<name> (or private:<name>) topic: a
// chat room with presence.
type roomChannel struct {
	*roomConfig // shared by the joins of one configured channel
	user        string
}

// roomConfig is what a configured room channel's joins share: one per
// channel, not a copy per join (an idle join's memory counts).
type roomConfig struct {
	maxUser  int  // Options.MaxUserLength, default applied
	presence bool // the configuration's presence: track the user
}

var (
	_ channels.Channel     = (*roomChannel)(nil)
	_ channels.AfterJoiner = (*roomChannel)(nil)
)

// Join picks the user: on a socket authenticated by a token, its sub;
// otherwise the join parameter user, else the socket's connect parameter
// user, else a generated anonymous name. A user longer than
// Options.MaxUserLength is refused with {"reason":"user name too long"}
// (not UTF-8: "invalid user name"): the name is the user's presence
// key, which the tracker would refuse, and the join would be a member
// nobody sees.
func (c *roomChannel) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	if claims := auth.ClaimsOf(s); claims != nil {
		// A token's sub is bounded too (channels/auth), but
		// --presence-max-key-length may be set below that bound.
		c.user = claims.Subject
		if reason, ok := checkUser(c.user, c.maxUser); !ok {
			return nil, channels.Refuse(reason)
		}
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
	if reason, ok := checkUser(c.user, c.maxUser); !ok {
		return nil, channels.Refuse(reason)
	}
	if c.user == "" {
		c.user = anonymousUser()
	}
	return nil, nil
}

// AfterJoin tracks the user, then pushes presence_state, when the
// configuration gives the room presence.
func (c *roomChannel) AfterJoin(s *channels.ChannelSocket) {
	if !c.presence {
		return
	}
	if err := s.Track(c.user, onlineMeta()); err != nil {
		// The join stands without presence. A limit (a full room) is
		// counted by the tracker; a line per join would let one client
		// fill the log.
		level := slog.LevelWarn
		if errors.Is(err, presence.ErrTopicFull) || errors.Is(err, presence.ErrKeyTooLong) || errors.Is(err, presence.ErrInvalidKey) {
			level = slog.LevelDebug
		}
		slog.Log(context.Background(), level, "app: tracking room presence failed", "topic", s.Topic(), "user", c.user, "err", err)
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
			return channels.ErrorReason(reasonInvalidPayload)
		}
		body, ok := m["body"]
		if !ok {
			return channels.ErrorReason(reasonInvalidPayload)
		}
		if err := s.Broadcast("new_msg", map[string]any{"body": body, "user": c.user}); err != nil {
			return channels.ErrorReason(errorReason(err))
		}
		return channels.Ok(nil)
	case "typing":
		m, ok := object(in.Payload)
		if !ok {
			return channels.ErrorReason(reasonInvalidPayload)
		}
		user, _ := json.Marshal(c.user)
		m["user"] = user
		if err := s.BroadcastFrom("typing", m); err != nil {
			return channels.ErrorReason(errorReason(err))
		}
		return channels.Ok(nil)
	case "ping":
		return channels.Ok(echo(in.Payload))
	}
	return channels.ErrorReason(reasonUnknownEvent)
}
