// Package auth authenticates sockets with signed tokens and authorizes
// their joins from the token's claims.
//
// A token is a JWT (RFC 7519) signed with HMAC-SHA256 (alg HS256) under a
// shared secret. Its claims:
//
//	sub     required: who the socket belongs to; the socket id becomes
//	        "user:<sub>", so disconnect by that id reaches every socket of
//	        the user, on every node
//	exp     required: expiry (seconds since the epoch); an expired token
//	        is refused. Checked at connect only: a socket outlives its
//	        token, as in Phoenix; disconnect by id to cut it off
//	nbf,iat optional; a token used before nbf is refused
//	topics  optional: topic patterns, each exact ("private:team-1") or a
//	        prefix ending in '*' ("room:*"; "*" alone is every topic).
//	        When present, the socket may join only topics they match,
//	        and an empty list allows none
//
// Any other alg (none, RS256, HS384...) is refused, whatever the key.
//
// A Verifier checks tokens against the current secret and, during a
// rotation, the previous one: tokens signed with either are accepted,
// and Sign always uses the current one. Rotating without downtime: deploy
// with previous = the old secret and secret = a new one, wait until every
// token signed with the old one has expired, then deploy without
// previous.
//
// SocketHandler is a channels.SocketHandler that accepts only sockets with
// a valid token, taken from the bearer token of the handshake
// (channels.ConnectInfo.AuthToken: the WebSocket subprotocol or the
// long-poll X-Phoenix-AuthToken header) or else the connect parameter
// "token" (phoenix.js `params: {token}`). A refused socket gets HTTP 403
// (long-poll {"status":403}) and no reason: the client learns nothing
// about why. The claims are in the socket's assigns (ClaimsOf reads them).
//
// A Policy decides joins from those claims: Guard wraps a route's
// ChannelFactory so that a join the policy does not allow is refused with
// {"reason":"unauthorized"} before the channel's own Join runs. Topics
// the policy marks private can only be joined with a topics claim that
// matches them; the others are open to any socket whose token has no
// topics claim.
//
// Embedding:
//
//	v, err := auth.NewVerifier(secret, previousSecret) // previousSecret may be ""
//	policy := &auth.Policy{Private: []string{"private:*"}}
//	router.Handle("private:*", policy.Guard(newPrivateChannel))
//	router.Handle("room:*", policy.Guard(newRoom))
//	cfg.SocketHandler = &auth.SocketHandler{Verifier: v}
package auth
