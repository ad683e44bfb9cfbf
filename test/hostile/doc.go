// Package hostile is the soak test of issue 16: every attack an
// anonymous client was seen to make on a node, all at once against one
// channelsd process with its default flags, while well-behaved clients
// exchange messages through it.
//
// TestMain builds ./cmd/channelsd (without the race detector, so that the
// memory figures are a real binary's); TestSoak starts it on a free
// loopback port and reads its /metrics (go_memstats_heap_inuse_bytes, and
// the live heap the GC's goal implies) and /proc (descriptors, RSS) every
// second. Every address is on loopback: each attack sends from a
// 127.0.1.x address of its own, the well-behaved long-poll clients from
// 127.0.0.x and the newcomers of the session-flood probe from 127.0.4.x
// to 127.0.7.x, so that a bound per client address meets only the client
// that earns it.
//
// Well-behaved: 20 WebSocket clients (V2 and V1) and 5 long-poll clients
// in 4 rooms push numbered new_msg four times a second (two of them pad
// every fourth with 8 KiB, over what a WebSocket server reads in one go)
// and heartbeat. At the end each must still be connected, hold every
// message of its room exactly once in each sender's order, have every
// push acknowledged, list the room's members in its presence exactly once
// each, and never have received a text frame that is not UTF-8 (a browser
// closes its socket on one, RFC 6455 §8.1).
//
// The attacks that pin memory run in slots of 10 s, one after the other,
// and keep what they pinned (until the end, or until their long-poll
// sessions expire), so that the live heap's largest rise in a slot is
// that attack's cost: long-poll sessions filled with 60 KB ping answers,
// and polls never read; long-poll sessions with 500 KB user names joining
// and leaving; 200 KB join_refs on 100 channels a socket; unfinished
// fragmented messages just under the frame size, kept alive with pings,
// then sockets beginning 6 KiB messages one after the other, which keep a
// node-wide budget for unfinished messages full (well-behaved clients'
// 8 KiB messages must still be taken). The
// others run all along: 300 KB user names joining and leaving
// well-behaved rooms, bytes that are not UTF-8 through every entry point,
// the HTTP API (forged presence_diff, bodies without application/json,
// long-poll CORS), idle keep-alive connections and slow request bodies, a
// long-poll session flood from one address (once the long-poll slots are
// over: on a node without a bound per address it would take the slot
// attackers' sessions too) with newcomers from other addresses, 1 MiB
// request lines, malformed V2 frames, ping and heartbeat floods. Last, a
// cross-site form POST to /api/drain, after which the node must still be
// ready and accept sockets.
//
// Each attack has its own expectation and row in the figures (the rows
// say which fixes hold), besides the bounds on the node's heap and
// descriptors (heapBound, fdBound) and the well-behaved clients' verdict.
// The figures are printed at the end (with -v, when the test fails, and
// to $HOSTILE_TABLE, which `make test-hostile` prints). The whole package
// takes about 75 s; a heap past a safety ceiling (3 GiB) stops the
// attacks early. HOSTILE_ONLY=<name>,<name> runs only the attacks named
// (the first column of the figures), to look at a few alone.
package hostile
