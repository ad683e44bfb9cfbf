// Package app is what the channelsd binary serves: a configuration (YAML,
// README "Channels for any backend") that routes topic patterns to an
// application backend's HTTP calls (package proxy) or to channels built
// into channelsd, and the default configuration, embedded
// (default.yaml, DefaultConfig), which serves the demo page and its chat
// rooms.
//
// # Configuration
//
// LoadConfig and ParseConfig read and check a file: a misspelt key, a
// value out of range or a contradiction is an error naming its line.
// Config.Build makes the node's router, connect handler and page of it.
// Every key that can be said in a file is: presence, history, private
// (auth.Policy) and the page (home). What no key can say without a
// backend is a built-in channel that a channel names with app (the hooks
// table): "room", the chat room below, and "conformance", the test
// channel below. An app channel answers its own joins and events, so it
// takes no join, events, leave or client_broadcast; "room" tracks its
// members only when its presence key says so. Options.Conformance adds
// conformance:* (app conformance) to the configuration built.
//
// Router builds DefaultConfig's routes without their history, for tests
// and embedding; the binary builds the whole configuration.
//
// # Connecting
//
// SocketHandler accepts every connection. The connect parameter user, when
// non-empty, becomes the assign "user" (the default name in rooms) and
// names the socket "user:<user>", so that Endpoint.Disconnect("user:ann")
// closes all of ann's sockets. Without it the socket is anonymous and has
// no id. When the conformance channel is enabled, a non-empty connect
// parameter socket_id names the socket instead, whatever user says. A
// user (or socket_id) longer than Options.MaxUserLength (256 bytes by
// default) or not UTF-8 refuses the connection: 403 with the reason
// "user name too long" or "invalid user name".
//
// With Options.Tokens (channelsd --token-secret), a socket needs a signed
// token instead (channels/auth): the bearer token of the handshake or the
// connect parameter token. The token's sub is the user and names the
// socket "user:<sub>"; user and socket_id parameters are ignored.
//
// Joins go through an auth.Policy whose private topics are the patterns
// marked private (private:* in the default configuration): they are
// joined only with a token whose topics claim names them (so never
// without tokens), and a topics claim bounds every join; a refused join
// gets error {"reason": "unauthorized"}.
//
// # Rooms: room:<name> and private:<name>
//
// Both are the same chat room; private ones are open only as above.
// Join parameters: {"user": string}, optional. The user is the token's
// sub on a socket that has one; else that parameter, else the connect
// parameter user, else a generated "anon-<8 hex digits>". A user longer
// than Options.MaxUserLength gets error {"reason": "user name too long"}
// (not UTF-8: "invalid user name"); the name is the presence key, which
// every presence message of the room repeats to every member.
// The join replies ok {}. A room at the tracker's limit of entries keeps
// the join without presence. With presence (as in the default
// configuration), right after the join the channel tracks its presence
// under the user's name with the meta {"online_at": <unix ms>}
// (so the room gets a presence_diff) and pushes presence_state to the
// joiner. Several sockets of one user show as several metas of one key.
//
// Events from the client:
//
//	new_msg  {"body": B}  broadcast new_msg {"body": B, "user": <user>} to every
//	                      subscriber, the sender included; reply ok {}. B is
//	                      any JSON value, passed on as sent. A payload that is
//	                      not an object with a body gets error
//	                      {"reason": "invalid payload"}.
//	typing   {...}        broadcast typing to every subscriber but the sender,
//	                      with the sent object ({} if none) and "user" set to
//	                      the sender's user; reply ok {}. A payload that is not
//	                      an object gets error {"reason": "invalid payload"}.
//	ping     any          reply ok with the payload as received: JSON stays the
//	                      same JSON, a binary payload comes back binary.
//	other                 reply error {"reason": "unknown event"}.
//
// A broadcast that the PubSub reports as failed (other nodes may have
// missed it; local subscribers got it) is answered with error
// {"reason": <error>}.
//
// # The conformance channel: conformance:<anything>
//
// A tool for testing client libraries against channelsd, off by default
// (Options.Conformance, which the node sets from its configuration). Do not
// enable it on a public server: any client may crash its channel, close
// its own socket and disconnect any socket by id.
//
// Joining replies ok {"topic": <topic>}, except conformance:forbidden,
// whose joins are refused with {"reason": "unauthorized"}. A join with a
// non-empty string parameter user tracks presence under that key (meta
// {"online_at": <unix ms>}) and then pushes presence_state; a join without
// one tracks nothing and pushes no presence_state.
//
// Events from the client, each answering as described:
//
//	ping              reply ok with the payload received (binary stays binary)
//	fail              reply error with the payload received
//	noreply           no reply at all (the client's push times out)
//	broadcast         broadcast "broadcast" with the payload to every subscriber,
//	                  the sender included; reply ok {}
//	shout             broadcast "shout" with the payload to every subscriber but
//	                  the sender; reply ok {}
//	intercepted       broadcast "intercepted" with the payload to every subscriber;
//	                  reply ok {}. See interception below.
//	crash             the callback panics: phx_error follows, the client rejoins
//	close_socket      the server closes the caller's connection with code 1001
//	                  (never 1000, after which phoenix.js would not reconnect);
//	                  no reply
//	binary_echo       reply ok with the binary payload received, as a binary reply
//	binary_push       push "binary_push" with the binary payload received to the
//	                  caller (a binary push frame); reply ok {}
//	binary_broadcast  broadcast "binary_broadcast" with the binary payload received
//	                  to every subscriber, the sender included; reply ok {}
//	disconnect_id     {"id": ID}: Endpoint.Disconnect(ID), closing every socket
//	                  named ID on every node with code 1001; reply ok {}
//	stop              the channel stops without a reply: phx_close follows
//	stop_reply        reply ok {}, then phx_close
//	push              {"event": E, "payload": P}: push E with P (an object; {} if
//	                  absent) to the caller; reply ok {}
//	track             {"key": K, "meta": M}: track K with meta M (an object; {} if
//	                  absent) for this join; reply ok {}
//	update            {"key": K, "meta": M}: replace the meta of K; reply ok {}
//	untrack           {"key": K}: untrack K; reply ok {}
//	async_reply       reply ok with the payload received, later, from another
//	                  goroutine (the callback itself returns no reply)
//	other             reply error {"reason": "unknown event"}
//
// binary_echo, binary_push and binary_broadcast answer a JSON payload with
// error {"reason": "binary payload expected"}. Malformed payloads of
// disconnect_id, push, track, update and untrack get error
// {"reason": "invalid payload"}. Presence errors are worded as in Phoenix:
// {"reason": "already_tracked"} for a second track of a key by the same
// join, {"reason": "nopresence"} for an update of a key the join does not
// track; other failures give the error's text.
//
// Interception: the conformance channel intercepts the broadcast event
// "intercepted" (channels.Interceptor). Each subscribing join receives it
// as a push whose object payload is the broadcast's plus
// "join_ref": <that join's join_ref as text, or null>, so a test sees that
// every subscriber's copy went through its own HandleOut. A payload that
// is not an object is pushed unchanged.
//
// # Demo page
//
// DemoHandler serves a small chat page (embedded, no external resources,
// no build step) that speaks the V2 protocol over a plain WebSocket: it
// joins room:<name> under a user name, shows messages, who is present
// (presence_state and presence_diff merged as phoenix.js's Presence does)
// and who is typing, sends heartbeats every 30 s and reconnects and
// rejoins with backoff.
package app
