package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/channelsd/channelsd/node"
)

// defaultDrainWindow is --drain-window's default.
const defaultDrainWindow = 20 * time.Second

// drainMargin is how long `channelsd drain` waits beyond the drain window:
// the last batch is closed shortly before the window ends, and a WebSocket
// may take the transport's close timeout (2 s) to end after that.
const drainMargin = 5 * time.Second

// drainOptions are the settings of `channelsd drain`.
type drainOptions struct {
	addr   string        // the node's listen address (CHANNELS_ADDR)
	apiKey string        // CHANNELS_API_KEY
	window time.Duration // used when the node does not report its window
	margin time.Duration // waited beyond the window
	poll   time.Duration // between two GET /api/drain
	client *http.Client
}

// drainCommand runs `channelsd drain [flags]`, the Kubernetes preStop hook
// (the image has no shell, so the binary itself asks): it starts the drain
// of the node on this host and waits for it. It reads the same CHANNELS_*
// variables as the node, so the hook needs no arguments.
func drainCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("channelsd drain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o := drainOptions{margin: drainMargin, poll: 500 * time.Millisecond}
	env := envDefaults{fs: fs}
	env.str(&o.addr, "addr", "CHANNELS_ADDR", ":4000", "the node's listen address; no host, or an unspecified one, means 127.0.0.1")
	env.str(&o.apiKey, "api-key", "CHANNELS_API_KEY", "", "the node's API key, if it has one (without one the node answers only loopback clients, which this command is)")
	env.duration(&o.window, "drain-window", "CHANNELS_DRAIN_WINDOW", defaultDrainWindow, "the node's drain window, used only when the node does not report its own")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: channelsd drain [flags]\n\n"+
			"Asks the node on this host to drain (POST /api/drain): it turns not-ready, refuses new\n"+
			"sockets and closes its sockets over its drain window. Then waits, polling GET /api/drain,\n"+
			"until no socket is left or the window plus %s has passed, and exits 0; non-zero when the\n"+
			"node cannot be asked. The node exits on SIGTERM afterwards.\n\n", drainMargin)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := env.err(); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return drainNode(ctx, o, stderr)
}

// drainNode starts the drain of the node at o.addr and waits for it.
func drainNode(ctx context.Context, o drainOptions, out io.Writer) error {
	base, err := localURL(o.addr)
	if err != nil {
		return err
	}
	if o.client == nil {
		// No keep-alive: a handful of requests, and nothing left behind.
		o.client = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	}
	start := time.Now()
	st, err := drainCall(ctx, o, http.MethodPost, base+"/api/drain", http.StatusAccepted)
	if err != nil {
		return err
	}
	window := o.window
	if w, err := time.ParseDuration(st.Window); err == nil {
		window = w
	}
	fmt.Fprintf(out, "channelsd drain: %s is draining: %d sockets left, drain window %s\n", base, st.SocketsLeft, window)
	deadline := start.Add(window + o.margin)
	for st.SocketsLeft > 0 {
		if !time.Now().Before(deadline) {
			// Not a failure: the shutdown after SIGTERM closes the rest.
			fmt.Fprintf(out, "channelsd drain: %d sockets still open after %s (drain window %s plus %s); stopping the wait\n",
				st.SocketsLeft, time.Since(start).Round(time.Millisecond), window, o.margin)
			return nil
		}
		t := time.NewTimer(min(o.poll, time.Until(deadline)))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		if st, err = drainCall(ctx, o, http.MethodGet, base+"/api/drain", http.StatusOK); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "channelsd drain: drained in %s\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// drainCall sends one request to the drain API and decodes the answer.
func drainCall(ctx context.Context, o drainOptions, method, url string, want int) (node.DrainStatus, error) {
	var st node.DrainStatus
	var body io.Reader
	if method == http.MethodPost {
		body = strings.NewReader("{}")
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return st, err
	}
	if body != nil {
		// The node takes state-changing calls only as JSON, which a web
		// page cannot send it (README "Security").
		req.Header.Set("Content-Type", "application/json")
	}
	if o.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+o.apiKey)
	}
	resp, err := o.client.Do(req)
	if err != nil {
		return st, fmt.Errorf("cannot reach the node: %w", err)
	}
	defer resp.Body.Close()
	answer, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		return st, fmt.Errorf("%s %s: HTTP 401: the node wants its API key (CHANNELS_API_KEY or --api-key)", method, url)
	case resp.StatusCode != want:
		return st, fmt.Errorf("%s %s: HTTP %d, want %d: %s", method, url, resp.StatusCode, want, strings.TrimSpace(string(answer)))
	}
	if err := json.Unmarshal(answer, &st); err != nil {
		return st, fmt.Errorf("%s %s: unexpected answer %q: %w", method, url, answer, err)
	}
	if !st.Draining {
		return st, fmt.Errorf("%s %s: the node does not report draining: %s", method, url, strings.TrimSpace(string(answer)))
	}
	return st, nil
}

// localURL turns a listen address into the URL of that node from this
// host: ":4000" and "0.0.0.0:4000" become http://127.0.0.1:4000.
func localURL(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--addr %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	if port == "" {
		return "", errors.New("--addr " + addr + ": no port")
	}
	return "http://" + net.JoinHostPort(host, port), nil
}
