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
// channel it had joined, with the same params. It is what a test or a
// load generator needs to watch a cluster drain, restart or rebalance
// from the clients' side: it records every connection it had (when it
// was joined, how it ended) and hands every message to OnMessage.
type Reconnecting struct {
	url  string
	opts ReconnectOptions

	mu     sync.Mutex
	c      *Client // current connection; nil between connections
	topics []rejoin
	conns  []Conn
	closed bool
	stop   chan struct{}
	done   chan struct{}
}

// ReconnectOptions configure DialReconnecting.
type ReconnectOptions struct {
	Options
	// Backoff is the wait before the tries-th consecutive attempt (from
	// 1); nil means phoenix.js's reconnectAfterMs: 10, 50, 100, 150,
	// 200, 250, 500, 1000, 2000 ms, then 5 s.
	Backoff func(tries int) time.Duration
	// OnMessage, when set, receives every message but join replies, from
	// the client's own goroutine, in order; it must not block for long.
	OnMessage func(Message)
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
	params any
}

// JSBackoff is phoenix.js's default reconnect schedule.
func JSBackoff(tries int) time.Duration {
	steps := []int{10, 50, 100, 150, 200, 250, 500, 1000, 2000}
	if tries >= 1 && tries <= len(steps) {
		return time.Duration(steps[tries-1]) * time.Millisecond
	}
	return 5 * time.Second
}

// DialReconnecting connects to rawURL, joins topics (topic, params pairs:
// params as for Push) and keeps the client connected and joined until
// Close. It returns once the first connection has joined everything, or
// with the error of the first attempt.
func DialReconnecting(ctx context.Context, rawURL string, opts ReconnectOptions, topics ...any) (*Reconnecting, error) {
	if len(topics)%2 != 0 {
		return nil, errors.New("wsclient: DialReconnecting wants topic, params pairs")
	}
	if opts.Backoff == nil {
		opts.Backoff = JSBackoff
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
		m, err := c.Join(ctx, t.topic, t.params)
		if err == nil && m.Status != "ok" {
			err = fmt.Errorf("wsclient: join %s refused: %s", t.topic, m.Payload)
		}
		if err != nil {
			_ = c.Close()
			return nil, conn, err
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
			if r.opts.OnMessage != nil {
				r.opts.OnMessage(m)
			}
		}
		_ = c.Close()
		st := c.Status()
		r.mu.Lock()
		r.conns[len(r.conns)-1].Ended = time.Now()
		r.conns[len(r.conns)-1].Status = st
		r.c = nil
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
