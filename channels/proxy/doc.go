// Package proxy runs channels whose decisions an application's HTTP
// backend makes, in any language: who may connect, who may join a topic
// and with what reply, what a client's push does. channelsd calls the
// backend with a JSON POST for each of these and does what it answers;
// broadcasts and presence stay in channelsd, so a broadcast to a proxied
// topic never calls the backend.
//
// # Wiring
//
//	client, err := proxy.NewClient(proxy.Config{Secret: secret, Metrics: proxy.NewMetrics()})
//	router.Handle("order:*", client.Factory(proxy.Spec{
//		Join:  "http://app:3000/channels/join",
//		Event: "http://app:3000/channels/event",
//		Leave: "http://app:3000/channels/leave",
//	}))
//	handler := &proxy.ConnectHandler{Client: client, URL: "http://app:3000/channels/connect",
//		Headers: []string{"Cookie", "Authorization"}}
//	defer client.Close() // after the node has stopped
//
// A Spec may also make the channel track presence and let clients
// broadcast some events as they are, without a call (ClientBroadcast).
//
// # The calls
//
// Every call is a POST with Content-Type application/json, the header
// X-Channelsd-Call naming it, and, with a secret, X-Channelsd-Signature.
// The backend answers 200 with a JSON object.
//
// connect, for each new socket:
//
//	→ {"params": {"token": "abc", "vsn": "2.0.0"}, "headers": {"Cookie": "..."},
//	   "remote_addr": "10.0.0.7:51234", "transport": "websocket", "token": "..."}
//	← {"status": "ok", "socket_id": "user:42", "user": "42", "assigns": {"plan": "pro"}}
//	← {"status": "error", "reason": "bad token", "http_status": 403}
//
// headers holds only the headers configured to be forwarded; token is
// the bearer token of the handshake, if the client sent one. socket_id
// names the socket ("" leaves it anonymous): disconnecting by it closes
// every socket of that id. user and assigns come back in every later call
// of the socket's joins.
//
// join, for each phx_join of a topic whose Spec has a Join URL:
//
//	→ {"socket_id": "user:42", "user": "42", "assigns": {"plan": "pro"},
//	   "topic": "order:7", "params": {"since": "..."}}
//	← {"status": "ok", "reply": {"total": 12}, "assigns": {"order": 7}}
//	← {"status": "error", "reason": "not your order"}
//
// The ok reply's payload is reply ({} when absent); an error is sent as
// Phoenix's error reply, reply when given, else {"reason": reason}.
// assigns, when present, replaces the join's assigns for its later calls.
//
// event, for each push of a client on a joined topic (other than its
// ClientBroadcast events) whose Spec has an Event URL:
//
//	→ {"socket_id": "user:42", "user": "42", "assigns": {"order": 7},
//	   "topic": "order:7", "event": "add_item", "payload": {"sku": "X1"}, "ref": "5"}
//	← {"status": "ok", "reply": {"count": 3},
//	   "broadcasts": [{"event": "item_added", "payload": {"sku": "X1"}, "exclude_sender": false}]}
//
// status is "ok", "error" or "noreply"; the broadcasts go to the topic's
// subscribers, in order, before the reply. A binary push is refused with
// {"reason":"binary payload not supported"} without a call.
//
// leave, when a join ends (the client left, the connection closed, a
// duplicate join, a crash), sent without waiting for the answer:
//
//	→ {"socket_id": "user:42", "user": "42", "assigns": {...}, "topic": "order:7", "reason": "left"}
//
// # When the backend fails
//
// No answer within Config.Timeout (retries included), no connection, an
// HTTP status other than 2xx, a body that is not the JSON the call
// expects, or one above Config.MaxResponseSize: the client gets
// {"reason":"backend unavailable"}, as the error reply of its join or of
// its push, or as a refused connection (503). The socket, its other
// channels and every other socket carry on, and Metrics counts the error
// by kind.
//
// # Order and waiting
//
// Each join handles its pushes as a Phoenix channel process does: one
// at a time, in the order the client sent them, each reply under its
// push's ref. A push waiting for the backend holds up only the later
// pushes of its topic: the socket's other topics, heartbeats and joins
// go on. At most 64 pushes of one join wait behind a call; one more is
// answered {"reason":"backend unavailable"} at once and counted as
// dropped. A join's call holds up nothing else either: the channel
// answers its join later (channels.Pending), the socket reads on, and
// the client's pushes on the topic wait for the join reply. A join that
// ends before its call is answered (leave, closed socket) cancels it, and
// the backend is sent a leave only for a join it accepted. When a join
// ends, the pushes it had taken are still sent, in order, and its leave
// after them.
//
// Connections to the backend are pooled, at most Config.MaxConns per
// host. A call is retried (Config.Retries) only when no connection could
// be made: the backend cannot have seen it, so a push is never acted on
// twice.
//
// # Verifying the signature
//
// With Config.Secret, each request carries
//
//	X-Channelsd-Signature: sha256=<hex HMAC-SHA256 of the raw body under the secret>
//
// The backend computes the same HMAC over the body bytes as received
// (before parsing them) and compares in constant time, refusing the
// request on a mismatch. Verify does it in Go; in Python:
//
//	expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
//	ok = hmac.compare_digest(expected, request.headers["X-Channelsd-Signature"])
//
// The signature proves the sender knows the secret; it does not stop a
// request recorded on the network from being sent again, so keep the
// backend on a private network or behind TLS.
package proxy
