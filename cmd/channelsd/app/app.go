package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/channels/auth"
	"github.com/channelsd/channelsd/presence"
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
}

// Policy is the default application's join policy: private:* topics
// are private, joined only with a token whose topics claim names them
// (never without tokens); a token's topics claim bounds every join.
var Policy = &auth.Policy{Private: []string{"private:*"}}

// Router returns the application's routes: room:* and private:* always,
// conformance:* when opts.Conformance is set. Every route is guarded by
// Policy.
func Router(opts Options) *channels.Router {
	r := &channels.Router{}
	r.Handle("room:*", Policy.Guard(func(string) channels.Channel { return &roomChannel{} }))
	r.Handle("private:*", Policy.Guard(func(string) channels.Channel { return &roomChannel{} }))
	if opts.Conformance {
		r.Handle("conformance:*", Policy.Guard(func(string) channels.Channel { return &conformanceChannel{opts: opts} }))
	}
	return r
}

// SocketHandler returns the application's connect handler.
//
// With opts.Tokens, only sockets with a valid token connect (the bearer
// token, else the connect parameter token); the socket is named
// "user:<sub>" and its assign "user" is sub (auth.SocketHandler).
//
// Without, it accepts every connection. The connect parameter user, when
// non-empty, becomes the assign "user" and names the socket
// "user:<user>". With opts.Conformance, a non-empty socket_id parameter
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
		if user != "" {
			id.ID = "user:" + user
		}
		if opts.Conformance {
			if sid := info.Params["socket_id"]; sid != "" {
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

// Replies shared by the channels.
var (
	replyInvalidPayload = reason("invalid payload")
	replyUnknownEvent   = reason("unknown event")
	replyBinaryExpected = reason("binary payload expected")
)

func reason(r string) map[string]string { return map[string]string{"reason": r} }

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
// the presence errors that Phoenix also has.
func errorReason(err error) map[string]string {
	switch {
	case errors.Is(err, presence.ErrAlreadyTracked):
		return reason("already_tracked")
	case errors.Is(err, presence.ErrNotTracked):
		return reason("nopresence")
	}
	return reason(err.Error())
}
