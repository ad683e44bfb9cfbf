package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"
	"unicode/utf8"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
)

// Options configures the default application.
type Options struct {
	// Conformance enables the conformance:* channel and the socket_id
	// connect parameter. Off by default: it lets any client crash its
	// channel, close its socket and disconnect other sockets by id.
	Conformance bool
	// Endpoint returns the endpoint serving the application. It is called
	// late, at the time of a conformance disconnect_id event, because the
	// endpoint is built after the router. It may be nil when Conformance
	// is off.
	Endpoint func() *channels.Endpoint
	// Tokens, when set, makes every socket need a signed token (see
	// channels/auth): the token's sub names the user and the socket.
	// Nil accepts every socket, as anonymous or with the user it names.
	Tokens *auth.Verifier
	// MaxUserLength is the longest user name, in bytes, that a connect
	// or join parameter may give: the name is the user's presence key,
	// repeated in every presence message of each room to every member.
	// Keep it equal to the tracker's presence.Limits.MaxKeyLength (the
	// --presence-max-key-length flag sets both). 0 means
	// presence.DefaultMaxKeyLength, -1 no limit.
	MaxUserLength int
	// ProxySecret signs the backend calls of a configuration that makes
	// any (proxy.Config.Secret); empty: unsigned.
	ProxySecret string
	// SocketPath is the socket base path the demo page connects to
	// (DemoHandler).
	SocketPath string

	// noHistory builds the routes without the configuration's history
	// (Router).
	noHistory bool
}

// maxUser returns MaxUserLength with its default applied.
func (o Options) maxUser() int {
	switch {
	case o.MaxUserLength == 0:
		return presence.DefaultMaxKeyLength
	case o.MaxUserLength < 0:
		return -1
	}
	return o.MaxUserLength
}

// Refusals of a user name, as join replies and connect refusals.
const (
	reasonUserTooLong = "user name too long"
	reasonUserInvalid = "invalid user name"
)

// checkUser refuses a user name longer than limit (-1: none) or not
// UTF-8 (a connect parameter can be any bytes; a presence key must be
// valid text in a frame), with the reason the client gets.
func checkUser(user string, limit int) (reason string, ok bool) {
	switch {
	case limit >= 0 && len(user) > limit:
		return reasonUserTooLong, false
	case !utf8.ValidString(user):
		return reasonUserInvalid, false
	}
	return "", true
}

// Router returns the routes of DefaultConfig (room:* and private:*, and
// conformance:* when opts.Conformance is set), without the history that
// it gives room:*, so that a PubSub without history serves them and room
// broadcasts carry no position, as Phoenix's do: for tests and for
// embedding. channelsd serves the whole configuration (Config.Build).
func Router(opts Options) *channels.Router {
	opts.noHistory = true
	b, err := Default().Build(opts)
	if err != nil {
		panic(err) // the default configuration makes no backend call
	}
	return b.Router
}

// SocketHandler returns the application's connect handler.
//
// With opts.Tokens, only sockets with a valid token connect (the bearer
// token, else the connect parameter token); the socket is named
// "user:<sub>" and its assign "user" is sub (auth.SocketHandler).
//
// Without, it accepts every connection whose user parameter, if any,
// passes Options.MaxUserLength and is UTF-8 (else 403 with the reason:
// the name would be held by the socket for its whole life and repeated in
// every room it joins). The connect parameter user, when non-empty,
// becomes the assign "user" and names the socket "user:<user>". With
// opts.Conformance, a non-empty socket_id parameter, bounded alike,
// names the socket instead.
func SocketHandler(opts Options) channels.SocketHandler {
	if opts.Tokens != nil {
		return &auth.SocketHandler{Verifier: opts.Tokens}
	}
	return channels.SocketHandlerFunc(func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
		// The user travels in the socket id ("user:<user>"), where rooms
		// read it; no assigns map, which would cost every idle socket a
		// few hundred bytes.
		var id channels.Identity
		user := info.Params["user"]
		if reason, ok := checkUser(user, opts.maxUser()); !ok {
			return id, &channels.ConnectError{Reason: reason}
		}
		if user != "" {
			id.ID = "user:" + user
		}
		if opts.Conformance {
			if sid := info.Params["socket_id"]; sid != "" {
				if reason, ok := checkUser(sid, opts.maxUser()); !ok {
					return id, &channels.ConnectError{Reason: "socket_id: " + reason}
				}
				id.ID = sid
				if user != "" {
					id.Assigns = map[string]any{"user": user}
				}
			}
		}
		return id, nil
	})
}

// opTimeout bounds the endpoint calls the channels make themselves.
const opTimeout = 5 * time.Second

// Reasons of the error replies shared by the channels.
const (
	reasonInvalidPayload = "invalid payload"
	reasonUnknownEvent   = "unknown event"
	reasonBinaryExpected = "binary payload expected"
)

// object decodes a JSON object payload. An empty or null payload is an
// empty object; a binary payload or any other JSON value is not an object.
func object(p channels.Payload) (map[string]json.RawMessage, bool) {
	if p.Binary {
		return nil, false
	}
	var m map[string]json.RawMessage
	if len(p.Data) > 0 {
		if err := json.Unmarshal(p.Data, &m); err != nil {
			return nil, false
		}
	}
	if m == nil {
		m = make(map[string]json.RawMessage)
	}
	return m, true
}

// stringField returns m[key] when it is a non-empty JSON string.
func stringField(m map[string]json.RawMessage, key string) (string, bool) {
	raw, ok := m[key]
	if !ok {
		return "", false
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil || s == "" {
		return "", false
	}
	return s, true
}

// echo returns a payload as it came, for a reply, push or broadcast: raw
// bytes stay binary, JSON stays the same text.
func echo(p channels.Payload) any {
	if p.Binary {
		return channels.Binary(p.Data)
	}
	return json.RawMessage(p.Data) // empty becomes {}
}

// onlineMeta is the presence meta both channels track.
func onlineMeta() map[string]int64 {
	return map[string]int64{"online_at": time.Now().UnixMilli()}
}

// anonymousUser names a user who gave no name: "anon-" and 8 hex digits.
func anonymousUser() string {
	var b [4]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return "anon-" + hex.EncodeToString(b[:])
}

// errorReason words an error for an error reply, with Phoenix's words for
// the presence errors that Phoenix also has, and a fixed reason for any
// error not made for clients.
func errorReason(err error) string {
	switch {
	case errors.Is(err, presence.ErrAlreadyTracked):
		return "already_tracked"
	case errors.Is(err, presence.ErrNotTracked):
		return "nopresence"
	case errors.Is(err, presence.ErrKeyTooLong):
		return "presence key too long"
	case errors.Is(err, presence.ErrMetaTooLarge):
		return "presence meta too large"
	case errors.Is(err, presence.ErrInvalidKey):
		return "invalid presence key"
	case errors.Is(err, presence.ErrNotObject):
		return "presence meta must be a JSON object"
	case errors.Is(err, presence.ErrTopicFull):
		return "too many presences on this topic"
	case errors.Is(err, presence.ErrTooManyKeys):
		return "too many presence keys"
	case errors.Is(err, pubsub.ErrTooLarge):
		// A broadcast the cluster cannot carry in one message.
		return "payload too large"
	}
	// Anything else (Redis unreachable, a timeout) is the server's business,
	// not the client's: its text stays on the server (the pubsub logs a
	// failed relay) and the client learns only that the call failed.
	return "server error"
}
