// Package conformance holds black-box tests of channelsd against the
// conformance checklist of PROTOCOL.md §11, plus the contract of the
// default application.
//
// Each test starts a real node in-process on 127.0.0.1:0, serving the
// default application with the conformance channel (conformance:*), and
// drives it over real WebSocket connections with the wsclient package.
// Tests are named after the checklist item they cover (TestItem01_… to
// TestItem34_…); items that concern both protocol versions run V2 and V1
// as subtests. Frames are compared as decoded JSON, so that key order does
// not matter, except binary frames, which are compared byte for byte.
//
// Covered here: items 1 to 34, everything one node can exercise over
// WebSocket (item 21's "on every node" and item 27's "on every node" are
// checked on one node; item 34's "excludes entries of dead nodes" is not).
//
// Covered later, by the cluster and long-poll test suites:
//   - 35: presence leaves of a dead node (needs a cluster).
//   - 36 to 39, 41, 42: the long-poll transport.
//   - 40: long-poll requests reaching a node other than the session owner
//     (needs a cluster).
//
// Beyond the checklist, the package tests the default application's rooms
// (new_msg, typing, ping, unknown events, presence_state after the join
// reply, unmatched topics), malformed frames, oversized frames, slow
// consumers and graceful shutdown.
//
// Set CONFORMANCE_LOG=1 to see the nodes' logs on stderr.
package conformance
