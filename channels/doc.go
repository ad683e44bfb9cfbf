// Package channels is the Phoenix Channels programming model in Go and the
// runtime that speaks it to clients.
//
// The wire protocol (PROTOCOL.md at the repository root) is in message.go
// and the serializers: a Message is [join_ref, ref, topic, event,
// payload]; V1 writes it as a JSON object, V2 as a JSON array or, for raw
// bytes, a binary frame. Payloads stay raw JSON (or raw bytes) all the way
// through, so a broadcast is never decoded and encoded again. They are
// checked once where they enter (validate.go): every text frame a client
// is sent is valid UTF-8 and valid JSON, whoever sent the bytes.
//
// An application is a Router of topic patterns to Channel factories and a
// SocketHandler that authenticates connections:
//
//	router := &channels.Router{}
//	router.Handle("room:*", func(topic string) channels.Channel { return &Room{} })
//
// Each join gets a fresh Channel value and a *ChannelSocket through which
// it pushes, replies, broadcasts and tracks presence. The runtime (Socket)
// implements the reserved events exactly as Phoenix does: heartbeats on
// "phoenix", phx_join and its replies, duplicate joins closing the older
// instance, phx_leave, stale join_refs dropped, unmatched topics answered
// with an error, and a panicking callback turned into phx_error for that
// channel alone.
//
// Concurrency: all callbacks of one socket run one at a time (the socket's
// callback lock), on the goroutine that reads the connection, except
// HandleOut, which runs on a short-lived goroutine so that a broadcaster
// never waits for a channel. Push, Reply and Broadcast are safe from any
// goroutine. Lock order: see locksordering.txt at the repository root.
//
// Transports (package transport) bring connections to an Endpoint:
// Endpoint.Connect authenticates, Endpoint.Open starts a Socket over a
// Conn, Socket.HandleFrame feeds it client frames and Socket.HandleClose
// ends it. Broadcasts reach a socket through its ChannelSockets, which are
// pubsub subscribers: the shared encoding of a broadcast for the socket's
// serializer goes straight to Conn.Send.
package channels
