// Package wsclient is a small Phoenix Channels client over WebSocket
// (github.com/gobwas/ws), for channelsd's tests and load generator.
//
// It speaks the wire protocol of PROTOCOL.md as phoenix.js does: version
// 2.0.0 (JSON arrays and binary frames) by default or 1.0.0 (JSON
// objects), refs as decimal strings from one counter per client, join_ref
// equal to the join's ref. It keeps no channel state beyond the join_ref
// of each topic it joined, and never retries: tests drive every step.
//
// A read goroutine decodes every frame the server sends, with the
// channels serializers (channels.V1, channels.V2 and
// channels.DecodeServerBinary), and queues it. Await, AwaitReply and Next
// take messages from that queue; messages that an Await passes over stay
// queued, in order, for later calls. The close frame the server sent, if
// any, and the end of the connection are reported by AwaitClose and Done.
//
// The queue is bounded (Options.Buffer): when it is full the read
// goroutine stops reading from the connection until a message is taken,
// so a client that does not consume behaves like a slow consumer. Close
// ends the read goroutine in every case.
//
// Typical use:
//
//	c, err := wsclient.Dial(ctx, "ws://127.0.0.1:4000/socket/websocket", wsclient.Options{})
//	if err != nil { ... }
//	defer c.Close()
//	reply, err := c.Join(ctx, "room:lobby", map[string]string{"user": "ann"})
//	ref, err := c.Push("room:lobby", "new_msg", map[string]string{"body": "hi"})
//	reply, err = c.AwaitReply(ctx, ref)
//	msg, err := c.Await(ctx, wsclient.IsEvent("room:lobby", "new_msg"))
//
// A refused handshake returns a *HandshakeError carrying the HTTP status,
// headers and body; it unwraps to ws.StatusError.
package wsclient
