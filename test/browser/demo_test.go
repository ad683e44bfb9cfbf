package browser

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/channelsd/channelsd/test/harness"
)

// presenceWait bounds a cross-node change: presence is coalesced over
// 30 ms and written to Redis before the diff goes out; a message is one
// Redis publish.
const presenceWait = 10 * time.Second

func TestDemoPageTwoTabs(t *testing.T) {
	chromiumPath(t) // fail before starting a cluster
	cl := harness.Start(t, harness.Options{Nodes: 2})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const room = "browser-two-tabs"
	b := newBrowser(t, ctx)
	alice := b.tab(nil) // node 1
	bob := b.tab(alice) // node 2, another tab of the same browser
	join := func(tab context.Context, node int, user string) {
		t.Helper()
		b.do(tab, fmt.Sprintf("%s joins %s on node %d", user, room, node),
			chromedp.Navigate(cl.Node(node).HTTPURL()+"/"),
			chromedp.WaitVisible("#login"),
			chromedp.SetValue("#name", user),
			chromedp.SetValue("#room", room),
			chromedp.Click("#login button"),
			chromedp.WaitVisible("#chat"),
		)
		b.await(tab, user+"'s page is online", `document.getElementById("status").textContent === "online as `+user+`"`, presenceWait)
	}
	join(alice, 1, "alice")
	join(bob, 2, "bob")

	// Both lists show both users, whichever node each is on.
	both := `(() => {
		const names = [...document.querySelectorAll("#people li")].map(li => li.textContent);
		return names.length === 2 && names.includes("alice") && names.includes("bob") &&
			document.getElementById("count").textContent === "2";
	})()`
	b.await(alice, "alice's 'Here now' lists alice and bob", both, presenceWait)
	b.await(bob, "bob's 'Here now' lists alice and bob", both, presenceWait)
	b.screenshot(alice, "alice-presence")
	b.screenshot(bob, "bob-presence")

	say := func(tab context.Context, user, body string) {
		t.Helper()
		b.do(tab, user+" sends a message",
			chromedp.SendKeys("#body", body),
			chromedp.Click("#composer button"),
		)
	}
	sees := func(tab context.Context, who, from, body string) {
		t.Helper()
		b.await(tab, who+" sees "+from+"'s message", `[...document.querySelectorAll("#messages li")].some(li =>
			li.querySelector("b").textContent === `+jsString(from)+` &&
			li.querySelector("span").textContent === `+jsString(body)+`)`, presenceWait)
	}

	say(alice, "alice", "hello from node 1")
	sees(bob, "bob", "alice", "hello from node 1")
	sees(alice, "alice", "alice", "hello from node 1")

	// Typing in bob's tab shows in alice's before the message is sent.
	b.do(bob, "bob types", chromedp.SendKeys("#body", "hi alice, node 2 here"))
	b.await(alice, "alice sees that bob is typing", `document.getElementById("typing").textContent === "bob is typing…"`, presenceWait)
	b.screenshot(alice, "alice-sees-bob-typing")
	b.do(bob, "bob sends", chromedp.Click("#composer button"))
	sees(alice, "alice", "bob", "hi alice, node 2 here")
	sees(bob, "bob", "bob", "hi alice, node 2 here")
	b.await(alice, "the typing indicator goes when bob's message arrives", `document.getElementById("typing").textContent === ""`, presenceWait)

	b.screenshot(alice, "alice-chat")
	b.screenshot(bob, "bob-chat")
}
