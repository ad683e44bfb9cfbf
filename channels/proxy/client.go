package proxy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Defaults of Config's zero fields.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultMaxConns        = 64
	DefaultRetries         = 1
	DefaultMaxResponseSize = 1 << 20
	// MaxRetries bounds Config.Retries: retries share the call's timeout,
	// and a backend that refuses connections is not helped by more.
	MaxRetries = 5
	// maxPendingLeaves bounds the leave notifications in flight at once;
	// past it a leave is dropped and counted (ErrorDropped).
	maxPendingLeaves = 1024
)

// SignatureHeader carries the HMAC-SHA256 of the request body under the
// shared secret, as "sha256=" and 64 lowercase hex digits.
const SignatureHeader = "X-Channelsd-Signature"

// CallHeader names the call: connect, join, event or leave.
const CallHeader = "X-Channelsd-Call"

// Config tunes a Client. Zero fields take the defaults; negative Retries
// turns retries off.
type Config struct {
	// Timeout bounds one call, retries included. Default DefaultTimeout.
	Timeout time.Duration
	// MaxConns bounds the connections open to one backend host at once;
	// calls beyond wait for one (within Timeout). Default DefaultMaxConns.
	MaxConns int
	// Retries is how many times a call is tried again when no connection
	// to the backend could be made (the request never left this node), at
	// most MaxRetries. An answer, even a 500, and an error once the
	// request was sent are never retried: the backend may have acted on
	// it. Default DefaultRetries.
	Retries int
	// MaxResponseSize bounds an answer's body in bytes; a larger one is an
	// error. Default DefaultMaxResponseSize.
	MaxResponseSize int64
	// Secret signs every request body (SignatureHeader). Empty: requests
	// are not signed.
	Secret []byte
	// Metrics counts the calls; nil counts nothing.
	Metrics *Metrics
	// Transport replaces the HTTP transport, for tests; nil builds one
	// bounded by MaxConns.
	Transport http.RoundTripper
}

// Client calls an application's HTTP backend. It is safe for concurrent
// use; Close it when the node has stopped.
type Client struct {
	cfg    Config
	http   *http.Client
	own    *http.Transport // the transport the Client built, if any
	work   sync.WaitGroup  // the joins' workers (queue.go)
	leaves sync.WaitGroup
	slots  chan struct{} // bounds the leave notifications in flight
}

// NewClient returns a Client for cfg.
func NewClient(cfg Config) (*Client, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = DefaultMaxConns
	}
	switch {
	case cfg.Retries == 0:
		cfg.Retries = DefaultRetries
	case cfg.Retries < 0:
		cfg.Retries = 0
	}
	if cfg.MaxResponseSize == 0 {
		cfg.MaxResponseSize = DefaultMaxResponseSize
	}
	if cfg.Timeout < 0 || cfg.MaxConns < 0 || cfg.MaxResponseSize < 0 || cfg.Retries > MaxRetries {
		return nil, fmt.Errorf("proxy: Timeout, MaxConns and MaxResponseSize must be positive, Retries at most %d", MaxRetries)
	}
	c := &Client{cfg: cfg, slots: make(chan struct{}, maxPendingLeaves)}
	rt := cfg.Transport
	if rt == nil {
		c.own = &http.Transport{
			Proxy:               nil, // the backend is the application's, not the Internet's
			DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
			MaxConnsPerHost:     cfg.MaxConns,
			MaxIdleConns:        cfg.MaxConns,
			MaxIdleConnsPerHost: cfg.MaxConns,
			IdleConnTimeout:     90 * time.Second,
			ForceAttemptHTTP2:   false,
		}
		rt = c.own
	}
	c.http = &http.Client{
		Transport: rt,
		// A redirect would send the signed body elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// Close waits for the pushes still queued and the leave notifications in
// flight, each bounded by Config.Timeout, then closes the idle
// connections.
func (c *Client) Close() {
	c.work.Wait() // before leaves: a worker may send a leave as it ends
	c.leaves.Wait()
	if c.own != nil {
		c.own.CloseIdleConnections()
	}
}

// Kinds of call, the label "call" of the metrics.
const (
	CallConnect = "connect"
	CallJoin    = "join"
	CallEvent   = "event"
	CallLeave   = "leave"
)

// Error kinds, the label "kind" of channelsd_proxy_errors_total.
const (
	ErrorConnection = "connection" // no connection, or it broke before an answer
	ErrorTimeout    = "timeout"    // no whole answer within Timeout
	ErrorStatus     = "status"     // an HTTP status other than 2xx
	ErrorMalformed  = "malformed"  // not the JSON answer the call expects
	ErrorTooLarge   = "too_large"  // a body above MaxResponseSize
	ErrorDropped    = "dropped"    // not sent: too many leaves in flight, or pushes waiting on the join
)

// CallError is a call that got no usable answer. Its text is for the
// log; the client is told only "backend unavailable".
type CallError struct {
	Call string // CallJoin...
	Kind string // ErrorConnection...
	Err  error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("proxy: %s call: %s: %v", e.Call, e.Kind, e.Err)
}

func (e *CallError) Unwrap() error { return e.Err }

// Sign returns the SignatureHeader value of body under secret: what a
// backend computes to check a request.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verify reports whether sig is body's signature under secret, in
// constant time: the check a Go backend makes.
func Verify(secret, body []byte, sig string) bool {
	return hmac.Equal([]byte(Sign(secret, body)), []byte(sig))
}

// call posts req as JSON to url and decodes the answer into ans, within
// the Client's timeout, retrying only when no connection could be made.
func (c *Client) call(ctx context.Context, kind, url string, req, ans any) error {
	start := time.Now()
	err := c.do(ctx, kind, url, req, ans)
	c.cfg.Metrics.observe(kind, time.Since(start), err)
	return err
}

func (c *Client) do(ctx context.Context, kind, url string, req, ans any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return &CallError{Call: kind, Kind: ErrorMalformed, Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var sig string
	if len(c.cfg.Secret) > 0 {
		sig = Sign(c.cfg.Secret, body)
	}
	for attempt := 0; ; attempt++ {
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return &CallError{Call: kind, Kind: ErrorConnection, Err: err}
		}
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set(CallHeader, kind)
		if sig != "" {
			r.Header.Set(SignatureHeader, sig)
		}
		resp, err := c.http.Do(r)
		if err != nil {
			if attempt < c.cfg.Retries && notConnected(err) && pause(ctx, attempt) {
				continue
			}
			return &CallError{Call: kind, Kind: transportKind(ctx, err), Err: err}
		}
		return c.read(ctx, kind, resp, ans)
	}
}

// read decodes a response, bounded by MaxResponseSize.
func (c *Client) read(ctx context.Context, kind string, resp *http.Response, ans any) error {
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		// Drain a little so that the connection can serve the next call.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return &CallError{Call: kind, Kind: ErrorStatus, Err: fmt.Errorf("HTTP %d", resp.StatusCode)}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxResponseSize+1))
	if err != nil {
		return &CallError{Call: kind, Kind: transportKind(ctx, err), Err: err}
	}
	if int64(len(data)) > c.cfg.MaxResponseSize {
		return &CallError{Call: kind, Kind: ErrorTooLarge, Err: fmt.Errorf("answer above %d bytes", c.cfg.MaxResponseSize)}
	}
	if ans == nil {
		return nil
	}
	if err := json.Unmarshal(data, ans); err != nil {
		return &CallError{Call: kind, Kind: ErrorMalformed, Err: err}
	}
	if v, ok := ans.(interface{ check() error }); ok {
		if err := v.check(); err != nil {
			return &CallError{Call: kind, Kind: ErrorMalformed, Err: err}
		}
	}
	return nil
}

// notConnected reports whether err happened before any connection to the
// backend was made, so that the backend cannot have seen the request.
func notConnected(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// pause waits a little before a retry, longer each time, so that a
// backend restarting is not hammered; false when ctx ends first.
func pause(ctx context.Context, attempt int) bool {
	t := time.NewTimer(time.Duration(attempt+1) * 25 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func transportKind(ctx context.Context, err error) string {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return ErrorTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ErrorTimeout
	}
	return ErrorConnection
}

// notify sends a call whose answer nobody waits for (leave) on a
// goroutine of its own, at most maxPendingLeaves at once.
func (c *Client) notify(kind, url string, req any) {
	select {
	case c.slots <- struct{}{}:
	default:
		c.cfg.Metrics.observe(kind, 0, &CallError{Call: kind, Kind: ErrorDropped, Err: errors.New("too many in flight")})
		return
	}
	c.leaves.Add(1)
	go func() {
		defer c.leaves.Done()
		defer func() { <-c.slots }()
		_ = c.call(context.Background(), kind, url, req, nil)
	}()
}
