package auth

import (
	"context"
	"fmt"
	"strings"

	"github.com/channelsd/channelsd/channels"
)

// Assign keys SocketHandler sets on an accepted socket.
const (
	// AssignClaims holds the token's *Claims.
	AssignClaims = "auth.claims"
	// AssignUser holds the token's sub, as a string.
	AssignUser = "user"
)

// TokenParam is the connect parameter a token may travel in.
const TokenParam = "token"

// TokenOf returns the token a connection carries: the bearer token of the
// handshake (WebSocket subprotocol, long-poll X-Phoenix-AuthToken header)
// if any, else the connect parameter "token".
func TokenOf(info *channels.ConnectInfo) string {
	if info.AuthToken != "" {
		return info.AuthToken
	}
	return info.Params[TokenParam]
}

// SocketHandler accepts a connection only with a valid token (TokenOf);
// others are refused with HTTP 403 and an empty body.
type SocketHandler struct {
	Verifier *Verifier
	// Identify, when set, makes the socket's identity from the verified
	// claims. By default the socket id is "user:<sub>" and the assign
	// "user" is sub. Either way the claims are added to the assigns under
	// AssignClaims.
	Identify func(ctx context.Context, info *channels.ConnectInfo, claims *Claims) (channels.Identity, error)
}

var _ channels.SocketHandler = (*SocketHandler)(nil)

// Connect implements channels.SocketHandler.
func (h *SocketHandler) Connect(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
	claims, err := h.Verifier.Verify(TokenOf(info))
	if err != nil {
		// The ConnectError sets the status and the (empty) body; the
		// wrapped cause reaches the transport's debug log only.
		return channels.Identity{}, fmt.Errorf("%w (%w)", &channels.ConnectError{}, err)
	}
	var id channels.Identity
	if h.Identify != nil {
		if id, err = h.Identify(ctx, info, claims); err != nil {
			return channels.Identity{}, err
		}
	} else {
		id = channels.Identity{ID: "user:" + claims.Subject, Assigns: map[string]any{AssignUser: claims.Subject}}
	}
	assigns := make(map[string]any, len(id.Assigns)+1)
	for k, v := range id.Assigns {
		assigns[k] = v
	}
	assigns[AssignClaims] = claims
	id.Assigns = assigns
	return id, nil
}

// ClaimsOf returns the claims the channel's socket connected with, or nil
// for a socket accepted without a token.
func ClaimsOf(s *channels.ChannelSocket) *Claims {
	c, _ := s.Assigned(AssignClaims).(*Claims)
	return c
}

// Policy decides which topics a socket may join from its claims. The
// zero Policy marks nothing private: it only applies topics claims.
type Policy struct {
	// Private lists the patterns of private topics: a socket may join one
	// only when its token's topics claim matches it. Sockets without
	// claims (no token required) never may.
	Private []string
}

// Allows reports whether a socket with claims (nil: none) may join topic.
func (p *Policy) Allows(claims *Claims, topic string) bool {
	if matchAny(p.Private, topic) {
		return claims != nil && claims.GrantsTopic(topic)
	}
	return claims == nil || claims.AllowsTopic(topic)
}

// AllowsAllWithoutClaims reports whether the policy allows every topic
// that pattern (a route's pattern: exact, or a prefix ending in '*')
// matches to a socket without claims: whether no private pattern matches
// any of them. Where sockets never have claims (no tokens), such a route
// needs no Guard.
func (p *Policy) AllowsAllWithoutClaims(pattern string) bool {
	for _, q := range p.Private {
		if patternsOverlap(pattern, q) {
			return false
		}
	}
	return true
}

// patternsOverlap reports whether some topic matches both patterns.
func patternsOverlap(a, b string) bool {
	pa, wa := strings.CutSuffix(a, "*")
	pb, wb := strings.CutSuffix(b, "*")
	switch {
	case wa && wb:
		return strings.HasPrefix(pa, pb) || strings.HasPrefix(pb, pa)
	case wa:
		return strings.HasPrefix(b, pa)
	case wb:
		return strings.HasPrefix(a, pb)
	}
	return a == b
}

// ReasonUnauthorized is the reason of a join Guard refuses.
const ReasonUnauthorized = "unauthorized"

// Guard wraps f so that a join the policy does not allow is refused with
// {"reason":"unauthorized"} before the channel's Join runs. The wrapped
// channel keeps f's channel's AfterJoiner, Interceptor and Terminator
// behaviours (found by type assertion, so the wrapper has each exactly
// when the channel has it).
func (p *Policy) Guard(f channels.ChannelFactory) channels.ChannelFactory {
	return func(topic string) channels.Channel {
		inner := f(topic)
		// One allocation per join, not two: the wrapper lives as long as
		// the join, idle or not.
		g := guarded{Channel: inner, policy: p}
		aj, isAJ := inner.(channels.AfterJoiner)
		ic, isIC := inner.(channels.Interceptor)
		t, isT := inner.(channels.Terminator)
		switch {
		case isAJ && isIC && isT:
			return &guardedAIT{guarded: g, AfterJoiner: aj, Interceptor: ic, Terminator: t}
		case isAJ && isIC:
			return &guardedAI{guarded: g, AfterJoiner: aj, Interceptor: ic}
		case isAJ && isT:
			return &guardedAT{guarded: g, AfterJoiner: aj, Terminator: t}
		case isIC && isT:
			return &guardedIT{guarded: g, Interceptor: ic, Terminator: t}
		case isAJ:
			return &guardedA{guarded: g, AfterJoiner: aj}
		case isIC:
			return &guardedI{guarded: g, Interceptor: ic}
		case isT:
			return &guardedT{guarded: g, Terminator: t}
		}
		return &g
	}
}

type guarded struct {
	channels.Channel
	policy *Policy
}

func (g *guarded) Join(s *channels.ChannelSocket, params channels.Payload) (any, error) {
	if !g.policy.Allows(ClaimsOf(s), s.Topic()) {
		return nil, channels.Refuse(ReasonUnauthorized)
	}
	return g.Channel.Join(s, params)
}

// The wrappers of each combination of optional behaviours: A AfterJoiner,
// I Interceptor, T Terminator.
type (
	guardedA struct {
		guarded
		channels.AfterJoiner
	}
	guardedI struct {
		guarded
		channels.Interceptor
	}
	guardedT struct {
		guarded
		channels.Terminator
	}
	guardedAI struct {
		guarded
		channels.AfterJoiner
		channels.Interceptor
	}
	guardedAT struct {
		guarded
		channels.AfterJoiner
		channels.Terminator
	}
	guardedIT struct {
		guarded
		channels.Interceptor
		channels.Terminator
	}
	guardedAIT struct {
		guarded
		channels.AfterJoiner
		channels.Interceptor
		channels.Terminator
	}
)
