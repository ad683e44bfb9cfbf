package redis

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/pubsub"
)

// Node-to-node calls (pubsub.Caller) travel on the same pub/sub
// connection as broadcasts. Every node that calls or answers subscribes
// to its own channel, "<prefix>:t:phx:node:<node id>" ("phx:" topics are
// reserved: no client can join them). A call is an ordinary envelope on
// the callee's channel, a reply one on the caller's. PUBLISH returns the
// number of subscribers that received the message, so a call to a node
// that is not listening fails at once with pubsub.ErrNoNode instead of at
// its deadline: this is how a killed node is told from a slow one.
//
// Call frame (the envelope's payload, binary):
//
//	byte     'c' ('C': with an extension area)
//	uvarint  call id, per caller node
//	uvarint  len(reply node), reply node id
//	uvarint  len(service), service
//	uvarint  milliseconds the caller will wait (0: no bound given)
//	         only with 'C': uvarint len(ext), ext
//	...      request, to the end
//
// Reply frame:
//
//	byte     'r' ('R': with an extension area)
//	uvarint  call id
//	byte     0 answered, 1 rejected (no handler, or too many calls),
//	         2 the answer was above MaxMessageSize (not sent)
//	         only with 'R': uvarint len(ext), ext
//	...      answer, to the end
//
// The extension area is laid out as the envelope's: records of uvarint
// tag, uvarint length and value, which a reader skips when it does not
// know their tag. The release of b847059 reads
// 'c' and 'r' with statuses 0 and 1 only, and drops anything else
// (its caller then waits for its deadline): 'C', 'R' and status 2 are
// form "call" at level 2, written only to a node that announced it
// (Gate.NodeReads). This release reads them, and takes any other status
// as an error answer at once, so that a later release can add one.
const (
	nodeTopicPrefix = "phx:node:"
	callKind        = 'c'
	replyKind       = 'r'
	callKindExt     = 'C'
	replyKindExt    = 'R'
	replyOK         = 0
	replyRejected   = 1
	replyTooLarge   = 2

	// callReadsTooLarge is the level of form "call" that reads
	// replyTooLarge.
	callReadsTooLarge = 2

	// DefaultMaxCalls bounds the handlers running at once on one node.
	// A long-poll GET relayed to its session's node holds one for up to
	// its poll window, so this is also a bound on relayed polls waiting.
	DefaultMaxCalls = 10000
	// replyTimeout bounds the PUBLISH of a reply.
	replyTimeout = 5 * time.Second
)

var (
	errCallFrame   = errors.New("redis: call frame: malformed")
	errReplyStatus = errors.New("redis: call: answered with an unknown status")
)

type callFrame struct {
	id      uint64
	replyTo string
	service string
	wait    time.Duration
	body    []byte
}

type replyFrame struct {
	id     uint64
	status byte
	body   []byte
}

// A frame's extension area is skipped: this release knows no record.
// The writers below never set one; tests write one, as a later release
// would.

func appendCall(dst []byte, c callFrame) []byte {
	dst = append(dst, callKind)
	dst = binary.AppendUvarint(dst, c.id)
	dst = appendString(dst, c.replyTo)
	dst = appendString(dst, c.service)
	dst = binary.AppendUvarint(dst, uint64(c.wait/time.Millisecond))
	return append(dst, c.body...)
}

func appendReply(dst []byte, r replyFrame) []byte {
	dst = append(dst, replyKind)
	dst = binary.AppendUvarint(dst, r.id)
	dst = append(dst, r.status)
	return append(dst, r.body...)
}

// decodeCallFrame parses the payload of an envelope on a node channel:
// exactly one of the results is set when err is nil. The bodies alias p.
func decodeCallFrame(p []byte) (*callFrame, *replyFrame, error) {
	if len(p) == 0 {
		return nil, nil, errCallFrame
	}
	s := string(p[1:]) // one copy; the bodies below are copied out of it
	switch p[0] {
	case callKind, callKindExt:
		var c callFrame
		var ok bool
		var ms uint64
		if c.id, s, ok = readUvarint(s); !ok {
			return nil, nil, errCallFrame
		}
		if c.replyTo, s, ok = readString(s); !ok || c.replyTo == "" {
			return nil, nil, errCallFrame
		}
		if c.service, s, ok = readString(s); !ok {
			return nil, nil, errCallFrame
		}
		if ms, s, ok = readUvarint(s); !ok || ms > uint64(time.Hour/time.Millisecond) {
			return nil, nil, errCallFrame
		}
		c.wait = time.Duration(ms) * time.Millisecond
		if p[0] == callKindExt {
			if s, ok = skipExt(s); !ok {
				return nil, nil, errCallFrame
			}
		}
		c.body = []byte(s)
		return &c, nil, nil
	case replyKind, replyKindExt:
		var r replyFrame
		var ok bool
		if r.id, s, ok = readUvarint(s); !ok || len(s) == 0 {
			return nil, nil, errCallFrame
		}
		// Any status is passed to the waiting caller: one it does not
		// know is an error answer (Call), not a reason to let it wait.
		r.status, s = s[0], s[1:]
		if p[0] == replyKindExt {
			if s, ok = skipExt(s); !ok {
				return nil, nil, errCallFrame
			}
		}
		r.body = []byte(s)
		return nil, &r, nil
	}
	return nil, nil, errCallFrame
}

// skipExt skips a frame's extension area, checking that it holds whole
// records.
func skipExt(s string) (string, bool) {
	ext, r, ok := readString(s)
	if !ok || !validExt(ext) {
		return s, false
	}
	return r, true
}

// calls is the Caller half of a PubSub.
type calls struct {
	subscribe sync.Once
	subErr    error

	mu       sync.Mutex
	pending  map[uint64]chan replyFrame // guarded by mu
	handlers map[string]pubsub.CallHandler
	nextID   atomic.Uint64

	sem     chan struct{} // one token per running handler
	running sync.WaitGroup

	sent, served, rejected, failed atomic.Uint64
	log                            pubsub.RateLog
}

var _ pubsub.Caller = (*PubSub)(nil)

func nodeTopic(node string) string { return nodeTopicPrefix + node }

// nodeSubscriber receives the envelopes on this node's own channel.
type nodeSubscriber struct{ p *PubSub }

func (nodeSubscriber) SubscriberID() string { return "phx:node" }

// Deliver runs on the reader goroutine: it must not block. A reply goes
// to its waiting caller (or nowhere, when the caller gave up); a call
// starts a handler goroutine, or is rejected at once beyond MaxCalls.
func (s nodeSubscriber) Deliver(m *pubsub.Message) {
	p := s.p
	c, r, err := decodeCallFrame(m.Payload)
	if err != nil {
		p.decodeFailed(p.chanPrefix+m.Topic, err)
		return
	}
	if r != nil {
		p.calls.mu.Lock()
		ch := p.calls.pending[r.id]
		delete(p.calls.pending, r.id)
		p.calls.mu.Unlock()
		if ch != nil {
			ch <- *r // cap 1, one reply per id
		}
		return
	}
	// A caller is a live node: if it predates the announcement, the
	// Gate learns it reads the floor before its first report.
	p.Gate().Alive(c.replyTo, time.Now())
	p.calls.mu.Lock()
	h := p.calls.handlers[c.service]
	p.calls.mu.Unlock()
	if h == nil {
		p.reject(c)
		return
	}
	select {
	case p.calls.sem <- struct{}{}:
	default:
		p.reject(c)
		return
	}
	p.calls.running.Add(1)
	go func() {
		defer p.calls.running.Done()
		defer func() { <-p.calls.sem }()
		ctx, cancel := p.ctx, context.CancelFunc(func() {})
		if c.wait > 0 {
			ctx, cancel = context.WithTimeout(p.ctx, c.wait)
		}
		answer := h(ctx, c.body)
		cancel()
		p.calls.served.Add(1)
		p.reply(c, replyOK, answer)
	}()
}

// reject answers a call it will not run, off the reader goroutine.
func (p *PubSub) reject(c *callFrame) {
	p.calls.rejected.Add(1)
	p.calls.running.Add(1)
	go func() {
		defer p.calls.running.Done()
		p.reply(c, replyRejected, nil)
	}()
}

// reply publishes the answer to a call on the caller's channel. A caller
// that is gone (0 receivers) is not an error worth more than a count.
func (p *PubSub) reply(c *callFrame, status byte, body []byte) {
	ctx, cancel := context.WithTimeout(p.ctx, replyTimeout)
	defer cancel()
	frame := appendReply(make([]byte, 0, 16+len(body)), replyFrame{id: c.id, status: status, body: body})
	topic := nodeTopic(c.replyTo)
	if err := p.checkSize(topic, "", "reply", frame); err != nil {
		// The caller is told at once, not at its deadline.
		p.log.Warn("redis: answer to a node call above the maximum message size; the caller gets an error", "node", c.replyTo, "service", c.service, "err", err)
		frame = appendReply(nil, replyFrame{id: c.id, status: p.tooLargeStatus(c.replyTo)})
	}
	if _, err := p.publishNow(ctx, topic, "reply", frame); err != nil {
		p.calls.failed.Add(1)
		if p.closed.Load() {
			return // stopping: the caller learns from its deadline
		}
		if ok, n := p.calls.log.Allow(); ok {
			p.log.Warn("redis: reply to a node call failed", "node", c.replyTo, "service", c.service, "err", err, "suppressed", n)
		}
	}
}

// tooLargeStatus is the status that tells node its answer was too large:
// replyTooLarge when it announced it reads it, else replyRejected, which
// every release reads as an error answer at once (the release of b847059
// would drop replyTooLarge and wait for its deadline).
func (p *PubSub) tooLargeStatus(node string) byte {
	if p.Gate().NodeReads(node, FormCall, time.Now()) >= callReadsTooLarge {
		return replyTooLarge
	}
	return replyRejected
}

// publishNow PUBLISHes one envelope on a pooled connection, outside the
// ordered writer (calls need no order, and want the receiver count the
// pipelined writer does not report). It returns that count.
func (p *PubSub) publishNow(ctx context.Context, topic, event string, payload []byte) (int64, error) {
	if p.closed.Load() {
		return 0, pubsub.ErrClosed
	}
	if p.lost.Load() {
		return 0, p.lostError()
	}
	data := make([]byte, 0, envelopeSize(p.opt.NodeID, "", event, payload))
	// No send time: calls are not broadcasts, and stay out of the
	// cross-node broadcast latency.
	data = appendEnvelope(data, p.opt.NodeID, 0, p.seq.Add(1), "", event, true, payload)
	cmd := publishCmd(ctx, p.chanPrefix+topic, data)
	_ = p.client.Process(ctx, cmd)
	n, err := cmd.Result()
	if err != nil {
		return 0, fmt.Errorf("redis: publish: %w", err)
	}
	return n, nil
}

// listen subscribes this node to its own channel, once, waiting for
// Redis to confirm it (at most SubscribeTimeout).
func (p *PubSub) listen() error {
	p.calls.subscribe.Do(func() {
		p.calls.subErr = p.Subscribe(nodeTopic(p.opt.NodeID), nodeSubscriber{p})
	})
	return p.calls.subErr
}

// HandleCalls implements pubsub.Caller. The first call of HandleCalls or
// Call subscribes the node to its own channel.
func (p *PubSub) HandleCalls(service string, h pubsub.CallHandler) {
	p.calls.mu.Lock()
	if p.calls.handlers == nil {
		p.calls.handlers = make(map[string]pubsub.CallHandler)
	}
	p.calls.handlers[service] = h
	p.calls.mu.Unlock()
	if err := p.listen(); err != nil {
		p.log.Warn("redis: cannot listen for node calls", "err", err)
	}
}

// Call implements pubsub.Caller. A call to this node itself runs the
// handler in the caller's goroutine.
func (p *PubSub) Call(ctx context.Context, node, service string, req []byte) ([]byte, error) {
	if node == p.opt.NodeID {
		p.calls.mu.Lock()
		h := p.calls.handlers[service]
		p.calls.mu.Unlock()
		if h == nil {
			return nil, pubsub.ErrCallRejected
		}
		return h(ctx, req), nil
	}
	if err := p.listen(); err != nil {
		return nil, err
	}
	id := p.calls.nextID.Add(1)
	var wait time.Duration
	if d, ok := ctx.Deadline(); ok {
		if wait = time.Until(d); wait <= 0 {
			return nil, fmt.Errorf("redis: call %s on %s: %w", service, node, context.DeadlineExceeded)
		}
		wait = max(wait, time.Millisecond)
	}
	ch := make(chan replyFrame, 1)
	p.calls.mu.Lock()
	if p.calls.pending == nil {
		p.calls.pending = make(map[uint64]chan replyFrame)
	}
	p.calls.pending[id] = ch
	p.calls.mu.Unlock()
	forget := func() {
		p.calls.mu.Lock()
		delete(p.calls.pending, id)
		p.calls.mu.Unlock()
	}
	frame := appendCall(make([]byte, 0, 32+len(node)+len(service)+len(req)), callFrame{
		id: id, replyTo: p.opt.NodeID, service: service, wait: wait, body: req,
	})
	if err := p.checkSize(nodeTopic(node), "", "call", frame); err != nil {
		forget()
		return nil, fmt.Errorf("redis: call %s on %s: %w", service, node, err)
	}
	p.calls.sent.Add(1)
	n, err := p.publishNow(ctx, nodeTopic(node), "call", frame)
	// A Redis Cluster counts only the receivers connected to the master
	// that took the PUBLISH, so there no receiver means nothing: the call
	// waits for its answer.
	if err == nil && n == 0 && !p.opt.Cluster() {
		err = pubsub.ErrNoNode
	}
	if err != nil {
		forget()
		return nil, fmt.Errorf("redis: call %s on %s: %w", service, node, err)
	}
	select {
	case r := <-ch:
		switch r.status {
		case replyOK:
			return r.body, nil
		case replyRejected:
			return nil, fmt.Errorf("redis: call %s on %s: %w", service, node, pubsub.ErrCallRejected)
		case replyTooLarge:
			return nil, fmt.Errorf("redis: call %s on %s: answer: %w", service, node, pubsub.ErrTooLarge)
		}
		return nil, fmt.Errorf("redis: call %s on %s: %w %d", service, node, errReplyStatus, r.status)
	case <-ctx.Done():
		forget()
		return nil, fmt.Errorf("redis: call %s on %s: %w", service, node, ctx.Err())
	case <-p.done:
		forget()
		return nil, pubsub.ErrClosed
	}
}
