// Package lpclient is a Phoenix Channels client over long-poll (PROTOCOL.md
// §8), the sibling of transport/wsclient, for channelsd's tests and load
// generator. It behaves as phoenix.js 1.8.16's LongPoll transport does.
//
// It always speaks V2 (vsn 2.0.0). Open sends the opening GET (connect
// params and vsn in the query) and expects {"status":410,"token":T}: the
// session is open. One poll goroutine then GETs in a loop with the latest
// token (the last query parameter "token", as phoenix.js appends it),
// decodes every message of a 200 answer with wsclient.Decode and queues it
// as a wsclient.Message; Await, AwaitReply and Next take messages from that
// queue exactly as in wsclient, and the wsclient matchers (IsEvent,
// IsReply) apply.
//
// Sending. Send queues one ndjson line (a V2 text frame, or standard base64
// of a binary push) and returns. One send goroutine POSTs the queue with
// Content-Type application/x-ndjson, at most 100 lines per POST, and waits
// for each POST's answer before the next: the sends made while a POST is in
// flight go in the next one, as phoenix.js batches them. Flush waits until
// everything queued has been answered.
//
// Losing the session. A GET answered {"status":410} while a token is held
// (the session is gone; the answer's new token is ignored, as phoenix.js
// 1.8.16 does), an answer that is not JSON (a proxy's HTTP 502, say), a
// network error, a GET not answered within Options.PollTimeout, {"status":403}
// or another status, and a POST answered anything but {"status":200} end the
// session. Without Options.Reconnect the client then ends (Done, Err). With
// it, the client drops the lines not yet posted, waits phoenix.js's
// reconnect backoff (10, 50, 100, 150, 200, 250, 500, 1000, 2000 ms, then 5
// s), opens a new session and rejoins every channel it had joined, with the
// same join params (or, when they were given as a function, what it returns
// then) and a fresh join_ref (the replies to those joins are queued like any
// message). Reconnects counts the sessions opened that way, and Losses says
// why each session ended. A channel the server ends with phx_error is
// rejoined in the same session after Options.RejoinAfter, as phoenix.js
// does.
//
// Every request (opening GET, poll, POST) is recorded in the order it was
// started, with the X-Served-By header of its answer (the test load
// balancer's; "" when absent): Requests, ServedBy.
//
// Close cancels the requests in flight (the server is not told, as with
// phoenix.js; the session expires on its own), ends both goroutines and
// closes the idle connections of the client's own http.Client (not of
// Options.HTTPClient).
//
// Typical use:
//
//	c, err := lpclient.Open(ctx, "http://127.0.0.1:4000/socket/longpoll", lpclient.Options{})
//	if err != nil { ... }
//	defer c.Close()
//	reply, err := c.Join(ctx, "room:lobby", map[string]string{"user": "ann"})
//	ref, err := c.Push("room:lobby", "new_msg", map[string]string{"body": "hi"})
//	reply, err = c.AwaitReply(ctx, ref)
//	msg, err := c.Await(ctx, wsclient.IsEvent("room:lobby", "new_msg"))
package lpclient
