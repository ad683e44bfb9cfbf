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
