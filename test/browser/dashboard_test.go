package browser

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/channelsd/channelsd/test/harness"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// dashboardKey is the cluster's API key in TestDashboard.
const dashboardKey = "browser-test-key"

// reportWait bounds how long a change takes to show on the dashboard: a
// node reports every 2 s (node.Config.ReportInterval; no flag sets it)
// and the dashboard redraws on its own node's next push, 2 s later at most.
const reportWait = 12 * time.Second

func TestDashboard(t *testing.T) {
	chromiumPath(t) // fail before starting a cluster
	cl := harness.Start(t, harness.Options{Nodes: 3, Env: map[string]string{"CHANNELS_API_KEY": dashboardKey}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// The page needs the key, from its login form, never from the URL;
	// plain HTTP first.
	base := cl.Node(1).HTTPURL() + "/dashboard"
	for _, c := range []struct {
		url  string
		want int
	}{
		{base, http.StatusUnauthorized},
		{base + "?key=" + dashboardKey, http.StatusUnauthorized},
	} {
		if got := httpStatus(t, ctx, c.url); got != c.want {
			t.Fatalf("GET %s: %d, want %d", c.url, got, c.want)
		}
	}

	b := newBrowser(t, ctx)
	tab := b.tab(nil)
	b.do(tab, "opening the dashboard's login form", chromedp.Navigate(base), chromedp.WaitVisible("form.login"))
	b.do(tab, "logging in with a wrong key",
		chromedp.SendKeys("#key", "wrong"), chromedp.Submit("#key"), chromedp.WaitVisible("form.login .error"))
	b.do(tab, "logging in with the key",
		chromedp.SendKeys("#key", dashboardKey), chromedp.Submit("#key"), chromedp.WaitVisible("#nodes"))
	// The session is a cookie the page's scripts cannot read.
	if c := eval[string](b, tab, "document.cookie"); c != "" {
		t.Fatalf("document.cookie = %q: the session cookie must be HttpOnly", c)
	}
	b.await(tab, "the dashboard is live and lists node1, node2 and node3", `
		document.getElementById("status").textContent === "live" &&
		["node1", "node2", "node3"].every(n => document.querySelector('#nodes tbody tr[data-node="' + n + '"]')) &&
		document.querySelectorAll("#nodes tbody tr").length === 3 &&
		document.getElementById("t-nodes").textContent === "3"`, reportWait)
	// The dashboard's own WebSocket is one of node 1's sockets.
	b.await(tab, "node1 counts the dashboard's socket", socketsExpr("node1")+" >= 1", reportWait)
	base2 := eval[int](b, tab, socketsExpr("node2"))
	t.Logf("node2 sockets before: %d", base2)
	b.screenshot(tab, "three-nodes")

	const n = 5
	var clients []*wsclient.Client
	for i := range n {
		clients = append(clients, cl.Dial(ctx, 2, map[string]string{"user": fmt.Sprintf("dash-%d", i)}))
	}
	b.await(tab, fmt.Sprintf("node2 shows %d sockets (%d more)", base2+n, n),
		fmt.Sprintf("%s === %d", socketsExpr("node2"), base2+n), reportWait)
	b.screenshot(tab, "node2-plus-5")

	for _, c := range clients {
		_ = c.Close()
	}
	b.await(tab, fmt.Sprintf("node2 is back to %d sockets", base2),
		fmt.Sprintf("%s === %d", socketsExpr("node2"), base2), reportWait)
	b.screenshot(tab, "node2-back")
}

// socketsExpr is node's sockets count in the dashboard's table, -1 while
// the node has no row.
func socketsExpr(node string) string {
	return `(() => {
		const td = document.querySelector('#nodes tbody tr[data-node=` + jsString(node) + `] td:nth-child(2)');
		return td ? Number(td.textContent.replace(/,/g, "")) : -1;
	})()`
}

func httpStatus(t *testing.T, ctx context.Context, url string) int {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	_ = resp.Body.Close()
	return resp.StatusCode
}
