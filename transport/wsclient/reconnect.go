package wsclient

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// Reconnecting is a client that behaves as phoenix.js's Socket does when
// the server goes away: it reconnects with backoff and rejoins every
// channel it had joined. It is what a test or a load generator needs to
// watch a cluster drain, restart or rebalance from the clients' side: it
// records every connection it had (when it was joined, how it ended) and
// hands every message to OnMessage.
//
// Join params are either a value, sent again as it is on every rejoin, or
// a func() any, called before every join and rejoin, as phoenix.js's
// socket.channel(topic, () => params) does: that is how a client asks to
// recover what it missed ({"since": <the last position it saw>}).
//
// Like a phoenix.js channel, a topic whose channel the server ends with
// phx_error (a crash, or a hole in the channel's history) is joined again
// on the same connection after RejoinAfter; the phx_error itself reaches
// OnMessage first.
type Reconnecting struct {
	url  string
	opts ReconnectOptions

	mu     sync.Mutex
	c      *Client // current connection; nil between connections
	topics []rejoin
	conns  []Conn
	closed bool
	// rejoins of the current connection after a phx_error, by join ref;
	// guarded by mu.
	pending map[string]pendingRejoin
	timers  []*time.Timer // rejoins scheduled on the current connection; guarded by mu
	stop    chan struct{}
	done    chan struct{}
}

// ReconnectOptions configure DialReconnecting.
type ReconnectOptions struct {
	Options
	// Backoff is the wait before the tries-th consecutive attempt (from
	// 1); nil means phoenix.js's reconnectAfterMs: 10, 50, 100, 150,
	// 200, 250, 500, 1000, 2000 ms, then 5 s.
	Backoff func(tries int) time.Duration
	// RejoinAfter is the wait before the tries-th consecutive rejoin of a
	// topic after a phx_error or a refused rejoin; nil means phoenix.js's
	// rejoinAfterMs: 1, 2, 5 s, then 10 s.
	RejoinAfter func(tries int) time.Duration
	// OnMessage, when set, receives every message but join replies, from
	// the client's own goroutine, in order; it must not block for long.
	OnMessage func(Message)
	// OnJoinReply, when set, receives the ok reply of every (re)join of a
	// topic, with the index of the connection (0 for the first), before
	// any later message of that connection reaches OnMessage.
	OnJoinReply func(topic string, conn int, reply Message)
	// OnJoined, when set, is called after every (re)join of a topic, with
	// the index of the connection (0 for the first).
	OnJoined func(topic string, conn int)
}

// Conn is one connection of a Reconnecting client, as Conns reports it.
type Conn struct {
	Opened time.Time   // dialled
	Joined time.Time   // every topic joined (zero if it never was)
	Ended  time.Time   // zero while it is the current one
	Status CloseStatus // how it ended
}

type rejoin struct {
	topic  string
	params any // a value, or func() any
}

// pendingRejoin is a rejoin after phx_error whose reply has not come.
type pendingRejoin struct {
	topic string
	tries int
}

// JoinParams is what to send as join params now: params itself, or, for
// a func() any (phoenix.js's channel(topic, () => params)), what it
// returns at this join.
func JoinParams(params any) any {
	if f, ok := params.(func() any); ok {
		return f()
	}
	return params
}

// joinParams is what to send as t's join params now.
func (t rejoin) joinParams() any { return JoinParams(t.params) }

// JSBackoff is phoenix.js's default reconnect schedule.
func JSBackoff(tries int) time.Duration {
	steps := []int{10, 50, 100, 150, 200, 250, 500, 1000, 2000}
	if tries >= 1 && tries <= len(steps) {
		return time.Duration(steps[tries-1]) * time.Millisecond
	}
	return 5 * time.Second
}

// JSRejoinBackoff is phoenix.js's default channel rejoin schedule.
func JSRejoinBackoff(tries int) time.Duration {
	steps := []time.Duration{time.Second, 2 * time.Second, 5 * time.Second}
	if tries >= 1 && tries <= len(steps) {
		return steps[tries-1]
	}
	return 10 * time.Second
}

// DialReconnecting connects to rawURL, joins topics (topic, params pairs:
// params as for Push, or a func() any returning them) and keeps the client connected and joined until
// Close. It returns once the first connection has joined everything, or
// with the error of the first attempt.
func DialReconnecting(ctx context.Context, rawURL string, opts ReconnectOptions, topics ...any) (*Reconnecting, error) {
	if len(topics)%2 != 0 {
		return nil, errors.New("wsclient: DialReconnecting wants topic, params pairs")
	}
	if opts.Backoff == nil {
		opts.Backoff = JSBackoff
	}
	if opts.RejoinAfter == nil {
		opts.RejoinAfter = JSRejoinBackoff
	}
	r := &Reconnecting{url: rawURL, opts: opts, stop: make(chan struct{}), done: make(chan struct{})}
	for i := 0; i < len(topics); i += 2 {
		t, ok := topics[i].(string)
		if !ok {
			return nil, fmt.Errorf("wsclient: topic %v is not a string", topics[i])
		}
		r.topics = append(r.topics, rejoin{t, topics[i+1]})
	}
	c, conn, err := r.connect(ctx)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.c = c
	r.conns = append(r.conns, conn)
	r.mu.Unlock()
	go r.run(c)
	return r, nil
}

// connect dials and joins every topic.
func (r *Reconnecting) connect(ctx context.Context) (*Client, Conn, error) {
	conn := Conn{Opened: time.Now()}
	c, err := Dial(ctx, r.url, r.opts.Options)
	if err != nil {
		return nil, conn, err
	}
	r.mu.Lock()
	topics := append([]rejoin(nil), r.topics...)
	n := len(r.conns)
	r.mu.Unlock()
	for _, t := range topics {
		m, err := c.Join(ctx, t.topic, t.joinParams())
		if err == nil && m.Status != "ok" {
			err = fmt.Errorf("wsclient: join %s refused: %s", t.topic, m.Payload)
		}
		if err != nil {
			_ = c.Close()
			return nil, conn, err
		}
		if r.opts.OnJoinReply != nil {
			r.opts.OnJoinReply(t.topic, n, m)
		}
		if r.opts.OnJoined != nil {
			r.opts.OnJoined(t.topic, n)
		}
	}
	conn.Joined = time.Now()
	return c, conn, nil
}

// run forwards the current connection's messages, and when it ends
// reconnects, until Close.
func (r *Reconnecting) run(c *Client) {
	defer close(r.done)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-r.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		for {
			m, err := c.Next(ctx)
			if err != nil {
				break
			}
			r.handle(c, m)
		}
		_ = c.Close()
		st := c.Status()
		r.mu.Lock()
		r.conns[len(r.conns)-1].Ended = time.Now()
		r.conns[len(r.conns)-1].Status = st
		r.c = nil
		for _, t := range r.timers {
			t.Stop()
		}
		r.timers, r.pending = nil, nil
		r.mu.Unlock()
		for tries := 1; ; tries++ {
			select {
			case <-ctx.Done():
				return
			case <-time.After(r.opts.Backoff(tries)):
			}
			nc, conn, err := r.connect(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				continue
			}
			r.mu.Lock()
			if r.closed {
				r.mu.Unlock()
				_ = nc.Close()
				return
			}
			r.c = nc
			r.conns = append(r.conns, conn)
			r.mu.Unlock()
			c = nc
			break
		}
	}
}

// handle hands m to OnMessage, except the replies to rejoins after a
// phx_error, and schedules a rejoin when m ends one of the client's
// channels with phx_error.
func (r *Reconnecting) handle(c *Client, m Message) {
	if m.Err == nil && m.Event == channels.EventReply {
		r.mu.Lock()
		p, ok := r.pending[m.Ref.Text()]
		if ok {
			delete(r.pending, m.Ref.Text())
		}
		n := len(r.conns) - 1
		r.mu.Unlock()
		if ok {
			if m.Status != "ok" {
				r.scheduleRejoin(c, p.topic, p.tries+1)
				return
			}
			if r.opts.OnJoinReply != nil {
				r.opts.OnJoinReply(p.topic, n, m)
			}
			if r.opts.OnJoined != nil {
				r.opts.OnJoined(p.topic, n)
			}
			return
		}
	}
	if r.opts.OnMessage != nil {
		r.opts.OnMessage(m)
	}
	if m.Err == nil && m.Event == channels.EventError && !m.JoinRef.IsNull() && m.JoinRef.Text() == c.JoinRef(m.Topic) && r.joined(m.Topic) {
		r.scheduleRejoin(c, m.Topic, 1)
	}
}

// joined reports whether topic is one of the client's.
func (r *Reconnecting) joined(topic string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, t := range r.topics {
		if t.topic == topic {
			return true
		}
	}
	return false
}

// scheduleRejoin joins topic again on c after RejoinAfter(tries), with
// params evaluated then; the reply comes back through handle. A rejoin
// still waiting when c ends is dropped: the next connection joins every
// topic anyway.
func (r *Reconnecting) scheduleRejoin(c *Client, topic string, tries int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.c != c || r.closed {
		return
	}
	var t rejoin
	for _, x := range r.topics {
		if x.topic == topic {
			t = x
		}
	}
	r.timers = append(r.timers, time.AfterFunc(r.opts.RejoinAfter(tries), func() {
		r.mu.Lock()
		if r.c != c || r.closed {
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		// The params are evaluated outside r.mu: they may look at what
		// OnMessage recorded.
		params := t.joinParams()
		r.mu.Lock()
		defer r.mu.Unlock()
		if r.c != c || r.closed {
			return
		}
		ref, err := c.sendJoin(topic, params)
		if err != nil {
			return // the connection is ending; the next one rejoins
		}
		if r.pending == nil {
			r.pending = map[string]pendingRejoin{}
		}
		r.pending[ref] = pendingRejoin{topic: topic, tries: tries}
	}))
}

// Push sends event to topic on the current connection; it fails while
// the client is between connections (phoenix.js would buffer it).
func (r *Reconnecting) Push(topic, event string, payload any) (string, error) {
	r.mu.Lock()
	c := r.c
	r.mu.Unlock()
	if c == nil {
		return "", errors.New("wsclient: not connected")
	}
	return c.Push(topic, event, payload)
}

// Send sends m on the current connection (see Push).
func (r *Reconnecting) Send(m channels.Message) error {
	r.mu.Lock()
	c := r.c
	r.mu.Unlock()
	if c == nil {
		return errors.New("wsclient: not connected")
	}
	return c.Send(m)
}

// Connected reports whether the client holds a joined connection now.
func (r *Reconnecting) Connected() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.c != nil
}

// Conns returns the connections so far, the current one last.
func (r *Reconnecting) Conns() []Conn {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Conn(nil), r.conns...)
}

// Reconnects is how many times the client connected again.
func (r *Reconnecting) Reconnects() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns) - 1
}

// Close ends the current connection and stops reconnecting; it waits for
// the client's goroutine.
func (r *Reconnecting) Close() error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		<-r.done
		return nil
	}
	r.closed = true
	c := r.c
	r.mu.Unlock()
	close(r.stop)
	if c != nil {
		_ = c.Close()
	}
	<-r.done
	return nil
}

// Covered reports whether one of conns spans an event that began at
// start and ended at end: joined no later than start and still open
// slack after end (a current connection counts as open now). It is the
// delivery guarantee's condition: a broadcast published then must reach
// the client; see the rolling-restart and chaos tests.
func Covered(conns []Conn, start, end time.Time, slack time.Duration) bool {
	for _, cn := range conns {
		ended := cn.Ended
		if ended.IsZero() {
			ended = time.Now()
		}
		if !cn.Joined.IsZero() && !start.Before(cn.Joined) && !end.Add(slack).After(ended) {
			return true
		}
	}
	return false
}
