// Package browser tests what people see: the operators' dashboard
// (/dashboard) and the demo chat page (/) in a real browser, headless
// Chromium from Debian's package driven by chromedp, against a cluster of
// node containers started by test/harness.
//
// TestDashboard opens /dashboard on node 1, logs in through its form (a
// wrong key first, which the form refuses), checks that the session cookie
// is out of the page's reach (HttpOnly), waits until the table lists every
// node, connects WebSocket clients to node 2 from Go and waits until node
// 2's sockets go up by that many, then down again when they close;
// /dashboard without a session, or with the key in its URL, must answer
// 401. TestDemoPageTwoTabs
// opens the demo page in two tabs of one browser, one on node 1 and one on
// node 2, joins the same room in both through the page's form, and checks
// that each tab sees the other's messages, typing indicator and presence.
//
// TestDemoPageRecoversAcrossDrain covers history and recovery (PROTOCOL.md
// §12) as the demo page does it, with two nodes behind the harness's load
// balancer and the page opened through it. First a room that already has
// 10 messages: the page's first join ({"history":50}) shows those 10, in
// order. Then a new room: a Go publisher posts 60 numbered new_msg
// broadcasts ("n=1".."n=60", one every 100 ms) through the HTTP API of the
// node that does not hold the page's socket (found from the nodes'
// metrics), while the node that does is drained with SIGTERM and replaced,
// as in a rolling update. Until the replacement is ready the page's new
// WebSockets are sent to a loopback port that closes them (the test wraps
// the page's WebSocket constructor), so the page is certainly away while
// messages are published. It then reconnects through the load balancer and
// rejoins with {"since": last}; the test checks that #messages lists n=1
// to n=60 once each and in order, that the page rejoined (the join record
// app.js keeps on <body>: data-joins, data-since, data-position,
// data-recovered) and that the reply said recovered:true, and that the
// replay brought at least one message published while the page was away.
// The official phoenix.js is not available on this machine (no npm
// registry), so the client under test is the demo page's own Phoenix V2
// client, which follows PROTOCOL.md §12.8 the way phoenix.js does with a
// params function.
//
// Chromium is confined to loopback: every outside host name resolves to
// nothing (--host-resolver-rules), background services are off (updates,
// sync, translation, safe browsing, metrics), and the proxy for every
// address other than loopback is a sink in the test process that answers
// 403 and records the attempt; an attempt fails the test, except the few
// that Chromium makes whatever its flags (knownAttempts: spell-check
// dictionaries), which are only logged. Google's sign-in and
// component-update services are pointed at a closed port on loopback. The
// browser is driven over a pipe, not a DevTools port.
//
// Screenshots (PNG) of every step go to $TEST_ARTIFACTS, or to artifacts/
// in this directory when that is unset; their paths are logged. Without
// Chromium the tests fail (never skip): apt-get install chromium.
package browser
