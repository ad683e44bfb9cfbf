package lpclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Vsn is the protocol version the client speaks (phoenix.js long-poll is
// always V2).
const Vsn = "2.0.0"

// DefaultPollTimeout bounds one request when Options.PollTimeout is 0:
// phoenix.js's long-poll timeout (the server answers a poll within 10 s).
const DefaultPollTimeout = 20 * time.Second

// MaxBatch is the most lines one POST carries (Phoenix reads no more).
const MaxBatch = 100

// ServedByHeader is the response header recorded in Request.ServedBy.
const ServedByHeader = "X-Served-By"

// maxAnswer bounds the body of an answer read.
const maxAnswer = 64 << 20

// Options configure Open. The zero value connects with no params, gives up
// when the session is lost and uses an http.Client of its own.
type Options struct {
	// Params are connect params added to the URL's query.
	Params map[string]string
	// HTTPClient makes the requests; nil means a client of its own
	// (http.DefaultTransport's settings), whose idle connections Close
	// closes. Its Timeout should be 0 or above PollTimeout.
	HTTPClient *http.Client
	// Header is sent with every request, e.g. Origin.
	Header http.Header
	// PollTimeout bounds each request, a poll included; 0 means
	// DefaultPollTimeout. A request not answered in time loses the
	// session.
	PollTimeout time.Duration
	// Reconnect reopens a lost session and rejoins its channels, as
	// phoenix.js does; without it a lost session ends the client.
	Reconnect bool
	// ReconnectAfter is the wait before the tries-th attempt (from 1) to
	// open a new session; nil means phoenix.js's schedule (10 ms up to
	// 2 s, then 5 s).
	ReconnectAfter func(tries int) time.Duration
	// Buffer is the capacity of the queue between the poll goroutine and
	// Await; 0 means wsclient.DefaultBuffer. When it is full the client
	// stops polling until a message is taken (and the server may end the
	// session after 15 s without a poll).
	Buffer int
	// RejoinAfter is the wait before the tries-th consecutive rejoin of a
	// channel the server ended with phx_error (or whose rejoin it
	// refused); nil means phoenix.js's rejoinAfterMs: 1, 2, 5 s, then 10 s.
	RejoinAfter func(tries int) time.Duration
	// Observe, when set, is called by the poll goroutine with every
	// message received, in order, before it is queued for Await: a client
	// that recovers what it missed notes the last position it saw there,
	// so that a rejoin (which reads it, through join params given as a
	// function) never depends on how far Await has got. It must not block
	// for long.
	Observe func(wsclient.Message)
	// RequestLog bounds the requests kept for Requests and ServedBy: 0
	// keeps every one, a negative value none (a load generator's choice),
	// N > 0 the last N.
	RequestLog int
}

// Request is one HTTP request of the client, as Requests reports it.
type Request struct {
	Method string // GET or POST
	Open   bool   // an opening GET (without a token)
	Lines  int    // for a POST, the lines it carried
	// ServedBy is the answer's X-Served-By header ("" when absent or
	// without an answer).
	ServedBy string
	// HTTPStatus is the answer's HTTP status (0 without an answer).
	HTTPStatus int
	// Status is the "status" of the JSON answer (0 without one).
	Status     int
	Start, End time.Time // End is zero while it is in flight
	Err        error     // a network error or an answer that is not JSON
}

// Loss is one session's end, as Losses reports it.
type Loss struct {
	At  time.Time
	Err error // wraps ErrSessionGone, ErrBadAnswer, ErrForbidden, ...
}

// Errors reported by a Client.
var (
	// ErrClosed is returned, wrapped with the reason, by Await and
	// friends once the client has ended and no queued message matches.
	ErrClosed = errors.New("lpclient: client ended")
	// ErrClientClosed is the Err of a client ended by Close.
	ErrClientClosed = errors.New("lpclient: closed by the client")
	// ErrSessionGone: a GET answered {"status":410} while the client
	// held a token, or a POST answered {"status":410}.
	ErrSessionGone = errors.New("lpclient: session gone (410)")
	// ErrForbidden: {"status":403}, the connect or the origin refused.
	ErrForbidden = errors.New("lpclient: refused (403)")
	// ErrBadAnswer: an answer that is not a JSON object with a status,
	// or an unexpected status.
	ErrBadAnswer = errors.New("lpclient: unexpected answer")
)

// Stats are a client's counters.
type Stats struct {
	Gets, Posts int // requests answered or failed
	Lines       int // lines posted
	MaxBatch    int // most lines in one POST
	Dropped     int // lines dropped unsent because their session was lost
	Received    int // messages received
}

// joined is what a rejoin needs of a channel.
type joined struct {
	ref    string
	params any // a value, or func() any evaluated at every (re)join
	// tries counts the rejoins after a phx_error since the channel was
	// last joined; 0 when it is not being rejoined that way.
	tries int
}

// joinParams is what to send as j's join params now.
func (j joined) joinParams() any { return wsclient.JoinParams(j.params) }

// session is one server session; its ctx ends when it is lost (or the
// client closes).
type session struct {
	ctx    context.Context
	cancel context.CancelFunc
	err    error // why it was lost; guarded by Client.mu
}

// Client is one long-poll session (or a series of them, with Reconnect).
// Its methods are safe for concurrent use, except that the receiving
// methods (Await, AwaitReply, Next, Join, Queued) take turns.
type Client struct {
	query   string // connect params and vsn, encoded
	base    string // the URL without its query
	opts    Options
	hc      *http.Client
	ownHC   bool
	timeout time.Duration
	refs    atomic.Uint64

	ctx    context.Context // ended by Close
	cancel context.CancelFunc

	mu         sync.Mutex
	sess       *session // nil while none is open; guarded by mu
	token      string   // the current session's latest token
	joins      map[string]joined
	outq       []string      // lines not yet posted
	posting    bool          // a POST is in flight
	progress   chan struct{} // closed and replaced when the send queue moves
	requests   []Request
	reqBase    int // index of requests[0] among all requests
	reconnects int
	losses     []Loss
	stats      Stats
	err        error // why the client ended

	wake      chan struct{} // wakes the send goroutine
	msgs      chan wsclient.Message
	closing   chan struct{}
	closeOnce sync.Once
	sendDone  chan struct{}
	done      chan struct{} // closed when the poll goroutine has ended

	inbox *wsclient.Inbox // the receiving side, over msgs
}

// Open opens a session at baseURL (e.g.
// "http://127.0.0.1:4000/socket/longpoll") and starts the client's
// goroutines. A refused connect returns an error wrapping ErrForbidden.
// ctx bounds the opening GET only.
func Open(ctx context.Context, baseURL string, opts Options) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil {
		return nil, fmt.Errorf("lpclient: %w", err)
	}
	q := u.Query()
	for k, v := range opts.Params {
		q.Set(k, v)
	}
	q.Set("vsn", Vsn)
	u.RawQuery = ""
	c := &Client{
		query:    q.Encode(),
		base:     u.String(),
		opts:     opts,
		hc:       opts.HTTPClient,
		timeout:  opts.PollTimeout,
		joins:    make(map[string]joined),
		progress: make(chan struct{}),
		wake:     make(chan struct{}, 1),
		closing:  make(chan struct{}),
		sendDone: make(chan struct{}),
		done:     make(chan struct{}),
	}
	if c.timeout <= 0 {
		c.timeout = DefaultPollTimeout
	}
	if c.hc == nil {
		c.hc = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
		c.ownHC = true
	}
	buffer := opts.Buffer
	if buffer <= 0 {
		buffer = wsclient.DefaultBuffer
	}
	c.msgs = make(chan wsclient.Message, buffer)
	c.inbox = wsclient.NewInbox(c.msgs)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, c.cancel)
	sess, err := c.open()
	stop()
	if err != nil {
		c.cancel()
		if c.ownHC {
			c.hc.CloseIdleConnections()
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, err
	}
	c.sess = sess
	go c.pollLoop(sess)
	go c.sendLoop()
	return c, nil
}

// NextRef returns a fresh ref: decimal strings from one counter starting
// at "1", as phoenix.js makes them.
func (c *Client) NextRef() string { return strconv.FormatUint(c.refs.Add(1), 10) }

// JoinRef returns the join_ref of topic's last join or rejoin ("" if
// none, or after Leave).
func (c *Client) JoinRef(topic string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.joins[topic].ref
}

// Token is the current session's latest token ("" while reconnecting).
func (c *Client) Token() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token
}

// Reconnects is how many sessions the client opened after losing one.
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// Losses lists why each lost session ended, in order.
func (c *Client) Losses() []Loss {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.losses)
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Requests returns the recorded requests in the order they were started
// (see Options.RequestLog); those in flight have a zero End.
func (c *Client) Requests() []Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.requests)
}

// ServedBy returns the X-Served-By header of every recorded request, in
// the order they were started ("" when absent or not answered yet).
func (c *Client) ServedBy() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, len(c.requests))
	for i, r := range c.requests {
		out[i] = r.ServedBy
	}
	return out
}

// Send queues m as one line of the next POST: a V2 text frame, or the
// base64 of a binary push (wsclient.EncodeClientBinary) when m.Binary is
// set. It fails only for a message it cannot encode or once the client
// has ended.
func (c *Client) Send(m channels.Message) error {
	line, err := encodeLine(m)
	if err != nil {
		return err
	}
	return c.SendLine(line)
}

// SendLine queues line, whatever it holds, for the next POST.
func (c *Client) SendLine(line string) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("%w: %w", ErrClosed, err)
	}
	c.outq = append(c.outq, line)
	c.mu.Unlock()
	c.kick()
	return nil
}

func (c *Client) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// Flush waits until every line queued so far has been posted and
// answered, or dropped with a lost session.
func (c *Client) Flush(ctx context.Context) error {
	for {
		c.mu.Lock()
		if len(c.outq) == 0 && !c.posting {
			c.mu.Unlock()
			return nil
		}
		if c.err != nil {
			err := c.err
			c.mu.Unlock()
			return fmt.Errorf("%w: %w", ErrClosed, err)
		}
		ch := c.progress
		c.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("lpclient: flushing: %w", ctx.Err())
		}
	}
}

// Join sends phx_join for topic with params (see Push for payload types;
// or a func() any returning them, called now and before every rejoin, as
// phoenix.js's socket.channel(topic, () => params)) and a fresh ref as
// both join_ref and ref, then waits for the reply. The topic is rejoined
// after a reconnect until Leave, and after the server ends its channel
// with phx_error (Options.RejoinAfter), as phoenix.js does; the replies to
// rejoins are queued like any message.
func (c *Client) Join(ctx context.Context, topic string, params any) (wsclient.Message, error) {
	ref := c.NextRef()
	m, err := wsclient.JoinMessage(topic, ref, wsclient.JoinParams(params))
	if err != nil {
		return wsclient.Message{}, err
	}
	c.mu.Lock()
	c.joins[topic] = joined{ref: ref, params: params}
	c.mu.Unlock()
	if err := c.Send(m); err != nil {
		return wsclient.Message{}, err
	}
	return c.AwaitReply(ctx, ref)
}

// Push sends event with payload to topic, with the topic's join_ref (null
// if it is not joined) and a fresh ref, which it returns. payload is nil
// for {}, json.RawMessage or []byte for JSON text, channels.Binary for raw
// bytes (a binary push), or any value to marshal as JSON.
func (c *Client) Push(topic, event string, payload any) (string, error) {
	ref := c.NextRef()
	m, err := wsclient.PushMessage(topic, event, c.JoinRef(topic), ref, payload)
	if err != nil {
		return "", err
	}
	return ref, c.Send(m)
}

// Leave sends phx_leave for topic, forgets it (no rejoin) and returns the
// ref.
func (c *Client) Leave(topic string) (string, error) {
	ref, err := c.Push(topic, channels.EventLeave, nil)
	c.mu.Lock()
	delete(c.joins, topic)
	c.mu.Unlock()
	return ref, err
}

// Await returns the first received message for which match is true,
// waiting until one arrives, ctx ends or the client ends (ErrClosed).
// Messages it passes over stay queued, in order, for later calls.
func (c *Client) Await(ctx context.Context, match func(wsclient.Message) bool) (wsclient.Message, error) {
	m, err := c.inbox.Await(ctx, match)
	switch {
	case errors.Is(err, wsclient.ErrInboxClosed):
		return wsclient.Message{}, fmt.Errorf("%w: %w", ErrClosed, c.Err())
	case err != nil:
		return wsclient.Message{}, fmt.Errorf("lpclient: awaiting a message: %w", err)
	}
	return m, nil
}

// Next returns the oldest message not yet taken.
func (c *Client) Next(ctx context.Context) (wsclient.Message, error) {
	return c.Await(ctx, func(wsclient.Message) bool { return true })
}

// AwaitReply returns the phx_reply whose ref is the string ref.
func (c *Client) AwaitReply(ctx context.Context, ref string) (wsclient.Message, error) {
	return c.Await(ctx, wsclient.IsReply(ref))
}

// Queued returns a copy of the messages received and not yet taken,
// without waiting.
func (c *Client) Queued() []wsclient.Message { return c.inbox.Queued() }

// Done is closed when the client has ended (Close, or a lost session
// without Reconnect) and every received message has been queued.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the client ended (nil while it runs).
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close cancels the requests in flight, ends the client's goroutines and
// closes its own http.Client's idle connections. It is safe to call more
// than once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		if c.err == nil {
			c.err = ErrClientClosed
		}
		c.mu.Unlock()
		close(c.closing)
		c.cancel()
		<-c.sendDone
		<-c.done
		if c.ownHC {
			c.hc.CloseIdleConnections()
		}
	})
	<-c.done
	return nil
}

// ---- the poll goroutine ----

func (c *Client) pollLoop(sess *session) {
	defer close(c.done)
	defer close(c.msgs)
	for {
		err := c.poll(sess)
		if err == nil {
			continue
		}
		err = c.lose(sess, err)
		if c.closed() {
			return
		}
		if !c.opts.Reconnect {
			c.end(err)
			return
		}
		if sess = c.reopen(); sess == nil {
			return // closed
		}
	}
}

// poll sends one GET and queues what it brings; it returns why the
// session is lost, or nil.
func (c *Client) poll(sess *session) error {
	c.mu.Lock()
	token := c.token
	c.mu.Unlock()
	ans, err := c.do(sess.ctx, http.MethodGet, token, nil, 0)
	if err != nil {
		return err
	}
	switch ans.Status {
	case 200, 204:
		c.mu.Lock()
		if c.sess == sess && ans.Token != "" {
			c.token = ans.Token
		}
		c.stats.Received += len(ans.Messages)
		c.mu.Unlock()
		for _, s := range ans.Messages {
			m := wsclient.Decode(channels.V2, []byte(s), false)
			if c.opts.Observe != nil {
				c.opts.Observe(m)
			}
			c.followJoin(sess, m)
			select {
			case c.msgs <- m:
			case <-c.closing:
				return ErrClientClosed
			}
		}
		return nil
	case 410:
		return ErrSessionGone
	case 403:
		return ErrForbidden
	default:
		return fmt.Errorf("%w: GET answered status %d", ErrBadAnswer, ans.Status)
	}
}

// open sends an opening GET and returns the new session.
func (c *Client) open() (*session, error) {
	ctx, cancel := context.WithCancel(c.ctx)
	sess := &session{ctx: ctx, cancel: cancel}
	ans, err := c.do(ctx, http.MethodGet, "", nil, 0)
	if err == nil {
		switch {
		case ans.Status == 410 && ans.Token != "":
			c.mu.Lock()
			c.token = ans.Token
			c.mu.Unlock()
			return sess, nil
		case ans.Status == 403:
			err = ErrForbidden
		default:
			err = fmt.Errorf("%w: opening GET answered status %d", ErrBadAnswer, ans.Status)
		}
	}
	cancel()
	return nil, fmt.Errorf("lpclient: opening a session at %s: %w", c.base, err)
}

// reopen opens a new session after the backoff, retrying until it
// succeeds or the client is closed (nil), then queues the rejoins.
func (c *Client) reopen() *session {
	for tries := 1; ; tries++ {
		t := time.NewTimer(c.backoff(tries))
		select {
		case <-t.C:
		case <-c.closing:
			t.Stop()
			return nil
		}
		sess, err := c.open()
		if c.closed() {
			if sess != nil {
				sess.cancel()
			}
			return nil
		}
		if err != nil {
			continue
		}
		// The join params are evaluated outside c.mu: they may look at
		// what Observe recorded.
		c.mu.Lock()
		joins := maps.Clone(c.joins)
		c.mu.Unlock()
		params := make(map[string]any, len(joins))
		for topic, j := range joins {
			params[topic] = j.joinParams()
		}
		c.mu.Lock()
		c.sess = sess
		c.reconnects++
		topics := slices.Sorted(maps.Keys(c.joins))
		lines := make([]string, 0, len(topics))
		for _, topic := range topics {
			j := c.joins[topic]
			p, ok := params[topic]
			if !ok {
				p = j.joinParams()
			}
			j.ref, j.tries = c.NextRef(), 0
			c.joins[topic] = j
			if line, err := joinLine(topic, j.ref, p); err == nil {
				lines = append(lines, line)
			}
		}
		c.outq = append(lines, c.outq...)
		c.mu.Unlock()
		c.kick()
		return sess
	}
}

// joinLine is the POST line of a phx_join of topic with ref as its
// join_ref and ref.
func joinLine(topic, ref string, params any) (string, error) {
	m, err := wsclient.JoinMessage(topic, ref, params)
	if err != nil {
		return "", err
	}
	return encodeLine(m)
}

// followJoin rejoins, after RejoinAfter, a channel of the client that the
// server ended with phx_error (m, received on sess), or whose rejoin after
// one it refused; an ok reply to the rejoin ends the series.
func (c *Client) followJoin(sess *session, m wsclient.Message) {
	if m.Err != nil || (m.Event != channels.EventError && m.Event != channels.EventReply) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	j, ok := c.joins[m.Topic]
	if !ok || m.JoinRef != channels.StringRef(j.ref) {
		return
	}
	switch {
	case m.Event == channels.EventReply && m.Ref == channels.StringRef(j.ref) && m.Status == "ok":
		j.tries = 0
	case m.Event == channels.EventError, m.Event == channels.EventReply && m.Ref == channels.StringRef(j.ref) && j.tries > 0:
		j.tries++
		ref := j.ref
		time.AfterFunc(c.rejoinAfter(j.tries), func() { c.rejoin(sess, m.Topic, ref) })
	default:
		return
	}
	c.joins[m.Topic] = j
}

// rejoin queues a phx_join of topic with a fresh ref, unless the session
// is gone or the channel was joined again since (its join_ref is no
// longer oldRef).
func (c *Client) rejoin(sess *session, topic, oldRef string) {
	c.mu.Lock()
	j, ok := c.joins[topic]
	if !ok || j.ref != oldRef || c.sess != sess {
		c.mu.Unlock()
		return
	}
	c.mu.Unlock()
	params := j.joinParams() // outside c.mu, as in reopen
	c.mu.Lock()
	j, ok = c.joins[topic]
	if !ok || j.ref != oldRef || c.sess != sess {
		c.mu.Unlock()
		return
	}
	j.ref = c.NextRef()
	c.joins[topic] = j
	line, err := joinLine(topic, j.ref, params)
	if err == nil {
		c.outq = append(c.outq, line)
	}
	c.mu.Unlock()
	c.kick()
}

// rejoinAfter is the wait before the tries-th rejoin of a channel.
func (c *Client) rejoinAfter(tries int) time.Duration {
	if c.opts.RejoinAfter != nil {
		return c.opts.RejoinAfter(tries)
	}
	return wsclient.JSRejoinBackoff(tries)
}

// backoff is the wait before the tries-th reconnection attempt.
func (c *Client) backoff(tries int) time.Duration {
	if c.opts.ReconnectAfter != nil {
		return c.opts.ReconnectAfter(tries)
	}
	schedule := []int{10, 50, 100, 150, 200, 250, 500, 1000, 2000}
	if tries-1 < len(schedule) {
		return time.Duration(schedule[tries-1]) * time.Millisecond
	}
	return 5 * time.Second
}

// lose ends sess (once) for err: its requests in flight are cancelled and
// the lines not yet posted are dropped. It returns the reason the session
// was lost for, err or an earlier one (a failed POST cancels the poll).
func (c *Client) lose(sess *session, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if sess.err != nil {
		return sess.err
	}
	sess.err = err
	if c.sess != sess {
		return err
	}
	sess.cancel()
	c.sess = nil
	c.token = ""
	if c.err == nil {
		c.losses = append(c.losses, Loss{At: time.Now(), Err: err})
	}
	c.stats.Dropped += len(c.outq)
	c.outq = nil
	c.moved()
	return err
}

// end records why the client ended, unless Close did first.
func (c *Client) end(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
	c.moved()
}

func (c *Client) closed() bool {
	select {
	case <-c.closing:
		return true
	default:
		return false
	}
}

// moved wakes Flush; c.mu is held.
func (c *Client) moved() {
	close(c.progress)
	c.progress = make(chan struct{})
}

// ---- the send goroutine ----

func (c *Client) sendLoop() {
	defer close(c.sendDone)
	for {
		select {
		case <-c.wake:
		case <-c.closing:
			return
		}
		for !c.closed() {
			c.mu.Lock()
			sess := c.sess
			if sess == nil || len(c.outq) == 0 || c.err != nil {
				c.mu.Unlock()
				break
			}
			n := min(len(c.outq), MaxBatch)
			batch := c.outq[:n:n]
			c.outq = slices.Clone(c.outq[n:])
			c.posting = true
			token := c.token
			c.mu.Unlock()

			if err := c.post(sess, token, batch); err != nil {
				c.lose(sess, err)
			}
			c.mu.Lock()
			c.posting = false
			c.moved()
			c.mu.Unlock()
		}
	}
}

func (c *Client) post(sess *session, token string, lines []string) error {
	body := []byte(strings.Join(lines, "\n"))
	ans, err := c.do(sess.ctx, http.MethodPost, token, body, len(lines))
	if err != nil {
		return err
	}
	switch ans.Status {
	case 200:
		return nil
	case 410:
		return ErrSessionGone
	case 403:
		return ErrForbidden
	default:
		return fmt.Errorf("%w: POST answered status %d", ErrBadAnswer, ans.Status)
	}
}

// ---- HTTP ----

// answer is a JSON answer of the server.
type answer struct {
	Status   int      `json:"status"`
	Token    string   `json:"token"`
	Messages []string `json:"messages"`
}

// do sends one request (a GET when body is nil) with token ("" for an
// opening GET), bounded by PollTimeout, records it and decodes the answer.
// An answer that is not a JSON object with a status is an error wrapping
// ErrBadAnswer.
func (c *Client) do(ctx context.Context, method, token string, body []byte, lines int) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	u := c.base + "?" + c.query
	if token != "" {
		u += "&token=" + url.QueryEscape(token)
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return answer{}, err
	}
	for k, vs := range c.opts.Header {
		req.Header[k] = slices.Clone(vs)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/x-ndjson")
	}
	req.Header.Set("Accept", "application/json")

	rec := c.record(Request{Method: method, Open: token == "", Lines: lines, Start: time.Now()})
	var ans answer
	resp, err := c.hc.Do(req)
	var servedBy string
	var httpStatus int
	if err == nil {
		servedBy, httpStatus = resp.Header.Get(ServedByHeader), resp.StatusCode
		var data []byte
		data, err = io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
		resp.Body.Close()
		if err == nil {
			err = decodeAnswer(data, &ans)
			if err != nil {
				err = fmt.Errorf("%w: HTTP %d %q", err, resp.StatusCode, truncate(data, 200))
			}
		}
	}
	if err != nil {
		err = fmt.Errorf("lpclient: %s: %w", method, err)
	}
	c.mu.Lock()
	rec(func(r *Request) {
		r.End, r.ServedBy, r.HTTPStatus, r.Status, r.Err = time.Now(), servedBy, httpStatus, ans.Status, err
	})
	if method == http.MethodPost {
		c.stats.Posts++
		c.stats.Lines += lines
		c.stats.MaxBatch = max(c.stats.MaxBatch, lines)
	} else {
		c.stats.Gets++
	}
	c.mu.Unlock()
	return ans, err
}

// record appends r to the request log and returns a function that
// updates it later (with c.mu held), if it is still kept.
func (c *Client) record(r Request) func(func(*Request)) {
	if c.opts.RequestLog < 0 {
		return func(func(*Request)) {}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := c.reqBase + len(c.requests)
	c.requests = append(c.requests, r)
	if n := c.opts.RequestLog; n > 0 && len(c.requests) > n {
		drop := len(c.requests) - n
		c.requests = slices.Delete(c.requests, 0, drop)
		c.reqBase += drop
	}
	return func(update func(*Request)) {
		if i := idx - c.reqBase; i >= 0 && i < len(c.requests) {
			update(&c.requests[i])
		}
	}
}

func decodeAnswer(data []byte, ans *answer) error {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return fmt.Errorf("%w: not JSON", ErrBadAnswer)
	}
	if _, ok := probe["status"]; !ok {
		return fmt.Errorf("%w: no status", ErrBadAnswer)
	}
	if err := json.Unmarshal(data, ans); err != nil {
		return fmt.Errorf("%w: %v", ErrBadAnswer, err)
	}
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// encodeLine is one POST line for m (see Send).
func encodeLine(m channels.Message) (string, error) {
	if m.Binary {
		data, err := wsclient.EncodeClientBinary(&m)
		if err != nil {
			return "", err
		}
		return base64.StdEncoding.EncodeToString(data), nil
	}
	f, err := channels.V2.Encode(nil, &m)
	if err != nil {
		return "", err
	}
	return string(f.Data), nil
}
