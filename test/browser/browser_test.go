package browser

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// chromiumNames are looked up on PATH, in this order; $CHROMIUM, when
// set, is used instead.
var chromiumNames = []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"}

// chromiumPath finds the browser or fails the test with what to install.
func chromiumPath(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			t.Fatalf("browser: $CHROMIUM=%q is not an executable: %v", p, err)
		}
		return p
	}
	for _, name := range chromiumNames {
		if p, err := exec.LookPath(name); err == nil {
			return realBinary(p)
		}
	}
	t.Fatalf("browser: no Chromium found (looked for %s on PATH).\n"+
		"The browser tests need Debian's package: apt-get install chromium (make test installs it); "+
		"or set CHROMIUM to the browser's path.", strings.Join(chromiumNames, ", "))
	return ""
}

// debianChromium is the browser itself in Debian's package; its
// /usr/bin/chromium is a shell script that adds flags (remote extensions)
// and Google API keys (which turn on sign-in requests) from
// /etc/chromium.d. The tests run the binary directly with flags of their
// own.
const debianChromium = "/usr/lib/chromium/chromium"

// realBinary returns Debian's binary when path is the launcher script.
func realBinary(path string) string {
	b, err := os.ReadFile(path)
	if err == nil && strings.HasPrefix(string(b), "#!") {
		if _, err := os.Stat(debianChromium); err == nil {
			return debianChromium
		}
	}
	return path
}

// sinkProxy is the proxy Chromium is given for every address that is not
// loopback: it answers 403 to every request and records what was asked,
// so nothing leaves the machine and any attempt shows up in the test.
type sinkProxy struct {
	ln   net.Listener
	mu   sync.Mutex
	seen []string
	wg   sync.WaitGroup
}

func startSinkProxy(t testing.TB) *sinkProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("browser: sink proxy: %v", err)
	}
	p := &sinkProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				line, _ := bufio.NewReader(c).ReadString('\n')
				p.mu.Lock()
				p.seen = append(p.seen, strings.TrimSpace(line))
				p.mu.Unlock()
				_, _ = c.Write([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		p.wg.Wait()
	})
	return p
}

// knownAttempts are requests Chromium makes that no flag turns off; the
// sink blocks them like any other, and the test only logs them.
var knownAttempts = map[string]string{
	// Spell-check dictionaries (https://redirector.gvt1.com/edgedl/chrome/dict/...),
	// fetched now and then when text is typed in a second window; turning
	// spell checking off in the profile's preferences did not stop it.
	"CONNECT redirector.gvt1.com:443 ": "spell-check dictionary download",
}

// knownAttempt says why a request line is expected, or "" when it is not.
func knownAttempt(line string) string {
	for prefix, why := range knownAttempts {
		if strings.HasPrefix(line, prefix) {
			return why
		}
	}
	return ""
}

func (p *sinkProxy) Addr() string { return p.ln.Addr().String() }

// Attempts returns the request lines the sink received.
func (p *sinkProxy) Attempts() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.seen...)
}

// browserFlags confine Chromium to loopback; see the package doc.
func browserFlags(execPath, proxy string) []chromedp.ExecAllocatorOption {
	opts := append([]chromedp.ExecAllocatorOption{}, chromedp.DefaultExecAllocatorOptions[:]...)
	return append(opts,
		chromedp.ExecPath(execPath),
		chromedp.NoSandbox, // the tests run as root
		chromedp.DisableGPU,
		chromedp.WindowSize(1280, 860),
		// No name resolves except localhost; loopback addresses need none.
		chromedp.Flag("host-resolver-rules", "MAP * ~NOTFOUND , EXCLUDE localhost, EXCLUDE 127.0.0.1"),
		// Loopback is never proxied; everything else goes to the sink.
		chromedp.ProxyServer("http://"+proxy),
		chromedp.Flag("proxy-bypass-list", "127.0.0.1;localhost"),
		// Background services that talk to the outside.
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-translate", true),
		chromedp.Flag("disable-domain-reliability", true),
		chromedp.Flag("disable-client-side-phishing-detection", true),
		chromedp.Flag("safebrowsing-disable-auto-update", true),
		chromedp.Flag("disable-breakpad", true),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("no-pings", true),
		chromedp.Flag("dns-prefetch-disable", true),
		chromedp.Flag("disable-field-trial-config", true),
		chromedp.Flag("no-service-autorun", true),
		chromedp.Flag("disable-search-engine-choice-screen", true),
		chromedp.Flag("disable-features", "Translate,BlinkGenPropertyTrees,OptimizationHints,"+
			"MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,"+
			"CertificateTransparencyComponentUpdater,DnsOverHttps,InterestFeedContentSuggestions,"+
			"NetworkTimeServiceQuerying,PrivacySandboxSettings4,SafeBrowsing"),
		// Google's sign-in and component-update services, which run even
		// so, get an address on loopback where nothing listens (port 9 is
		// one Chromium refuses to connect to at all).
		chromedp.Flag("gaia-url", "http://127.0.0.1:9"),
		chromedp.Flag("component-updater", "url-source=http://127.0.0.1:9/"),
		// No Google API keys: no sign-in or other Google services.
		chromedp.Env("GOOGLE_API_KEY=no", "GOOGLE_DEFAULT_CLIENT_ID=no", "GOOGLE_DEFAULT_CLIENT_SECRET=no"),
	)
}

// browser is one Chromium process for a test.
type browser struct {
	t     testing.TB
	sink  *sinkProxy
	alloc context.Context
	dir   string // screenshots
	shots int
}

// newBrowser starts Chromium (it fails the test when there is none) and
// stops it in t.Cleanup, after checking that it asked for no outside
// address. The browser and its tabs live until ctx ends.
func newBrowser(t *testing.T, ctx context.Context) *browser {
	t.Helper()
	path := chromiumPath(t)
	sink := startSinkProxy(t)
	alloc, cancel := chromedp.NewExecAllocator(ctx, browserFlags(path, sink.Addr())...)
	b := &browser{t: t, sink: sink, alloc: alloc, dir: artifactsDir(t)}
	t.Cleanup(func() {
		cancel() // waits for the browser to exit
		for _, a := range sink.Attempts() {
			if known := knownAttempt(a); known != "" {
				t.Logf("browser: blocked by the sink proxy (%s): %s", known, a)
				continue
			}
			t.Errorf("browser: Chromium tried to reach an outside address (blocked by the sink proxy): %s", a)
		}
	})
	return b
}

// tab opens a new tab. The first one starts the browser; later ones are
// tabs of the same browser.
func (b *browser) tab(parent context.Context) context.Context {
	b.t.Helper()
	var opts []chromedp.ContextOption
	if parent == nil {
		parent = b.alloc
		opts = append(opts, chromedp.WithLogf(b.t.Logf), chromedp.WithErrorf(b.t.Logf))
	}
	ctx, cancel := chromedp.NewContext(parent, opts...)
	b.t.Cleanup(cancel)
	// Start it now, so that a browser that cannot start fails here.
	if err := chromedp.Do(ctx); err != nil {
		b.t.Fatalf("browser: starting %s: %v", chromiumPath(b.t), err)
	}
	return ctx
}

// artifactsDir is $TEST_ARTIFACTS, else artifacts/ here (git ignores it).
func artifactsDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("TEST_ARTIFACTS")
	if dir == "" {
		dir = "artifacts"
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		t.Fatalf("browser: artifacts directory: %v", err)
	}
	if err := os.MkdirAll(abs, 0o755); err != nil {
		t.Fatalf("browser: artifacts directory: %v", err)
	}
	return abs
}

// screenshot saves a full-page PNG of the tab as
// <dir>/<Test>-<nn>-<name>.png and logs its path.
func (b *browser) screenshot(ctx context.Context, name string) {
	b.t.Helper()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		b.t.Errorf("browser: screenshot %s: %v", name, err)
		return
	}
	b.shots++
	file := filepath.Join(b.dir, fmt.Sprintf("%s-%02d-%s.png", sanitize(b.t.Name()), b.shots, name))
	if err := os.WriteFile(file, png, 0o644); err != nil {
		b.t.Errorf("browser: saving screenshot: %v", err)
		return
	}
	b.t.Logf("screenshot: %s", file)
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '/' || r == ' ' || r == ':' {
			return '_'
		}
		return r
	}, s)
}

// await polls a JavaScript expression in the tab every 100 ms until it is
// truthy. On timeout it saves a screenshot, logs the page's text and
// fails the test with what.
func (b *browser) await(ctx context.Context, what, expr string, timeout time.Duration) {
	b.t.Helper()
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr,
		chromedp.WithPollingInterval(100*time.Millisecond),
		chromedp.WithPollingTimeout(timeout)))
	if err == nil {
		return
	}
	if errors.Is(err, chromedp.ErrPollingTimeout) {
		err = fmt.Errorf("not within %v", timeout)
	}
	b.screenshot(ctx, "FAILED")
	if text, terr := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body.innerText")); terr == nil {
		b.t.Logf("page text:\n%s", text)
	}
	b.t.Fatalf("browser: waiting until %s: %v", what, err)
}

// eval evaluates a JavaScript expression in the tab.
func eval[T any](b *browser, ctx context.Context, expr string) T {
	b.t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("browser: evaluating %s: %v", expr, err)
	}
	return v
}

// do runs actions in the tab and fails the test on an error.
func (b *browser) do(ctx context.Context, what string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		b.screenshot(ctx, "FAILED")
		b.t.Fatalf("browser: %s: %v", what, err)
	}
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	var sb strings.Builder
	sb.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			sb.WriteByte('\\')
			sb.WriteRune(r)
		case r < 0x20:
			fmt.Fprintf(&sb, "\\u%04x", r)
		default:
			sb.WriteRune(r)
		}
	}
	sb.WriteByte('"')
	return sb.String()
}
