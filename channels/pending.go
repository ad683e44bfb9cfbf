package channels

import (
	"errors"
	"strings"
	"time"
)

// Joins answered later. A Join that returns Pending leaves its join
// pending: the channel is in the socket's table (a leave, a new join of
// the topic, the connection's close find it and end it, and it counts
// toward MaxChannels), but it is not yet subscribed and has sent nothing;
// its own pushes are held as during any join. CompleteJoin, from any
// goroutine, hands over the answer; a goroutine then takes the socket's
// callback lock, the first lock of locksordering.txt, so that a caller
// holding any lock of its own, or running in a callback of the same
// socket, cannot deadlock, and carries the answer out exactly as a Join
// that returned it (finishJoin): the subscription, the history read, the
// reply, the held frames, AfterJoin. The client's pushes on the topic
// that come meanwhile wait for the answer, as they would behind a Join
// still running, and are handled after it (an error reply if it refused).
//
// The join ends without its answer (Terminate is told why, the answer is
// dropped) when the client leaves, joins the topic again or disconnects,
// and when EndpointConfig's JoinTimeout passes: the client then gets the
// error reply {"reason":"join timeout"} and Terminate ReasonJoinTimeout.
// The pushes that waited are answered all the same, in the order they
// came and before what ended the join is answered, with the reply of a
// push to a topic not joined, {"reason":"unmatched topic"} (PROTOCOL.md
// §3.5): phoenix.js waits for a reply to each ref, and that is what the
// same push would get a moment later, as after a refusal. Only a closed
// connection's are not answered: nothing can reach the client.

// Pending is the response a Join returns, with a nil error, to answer
// the join later with ChannelSocket.CompleteJoin.
func Pending() any { return pendingJoin{} }

// pendingJoin is Pending's value: a type of its own, so that no response
// an application could build is taken for it.
type pendingJoin struct{}

// ErrJoinNotPending is what CompleteJoin returns when there is no pending
// join to answer: the join was not answered with Pending, it has been
// answered already, or it has ended (left, replaced, timed out, closed).
var ErrJoinNotPending = errors.New("channels: the join is not pending")

// reasonJoinTimeout is the error reply of a join not answered within
// EndpointConfig.JoinTimeout.
var reasonJoinTimeout = reasonJSON("join timeout")

// joinPending is a pending join. Guarded by ChannelSocket.mu.
type joinPending struct {
	ref    Ref // the phx_join's ref, which the answer replies to
	params Payload
	timer  *time.Timer // JoinTimeout
	// claimed: an answer is on its way (CompleteJoin's or the timeout's);
	// the first one wins.
	claimed bool
	// pushes of the client that came while pending, in order
	pushes []*Message
}

// lateAnswer is a join's answer given by CompleteJoin.
type lateAnswer struct {
	response any
	err      error
}

// maxEarlyPushes bounds the client pushes one pending join keeps; one more
// is answered {"reason":"join pending"}. phoenix.js sends none before the
// join's ok reply.
const maxEarlyPushes = 64

var reasonJoinPending = reasonJSON("join pending")

// CompleteJoin answers a join whose Join returned Pending, from any
// goroutine, with what Join would have returned: a nil err accepts with
// response (nil means {}); an error refuses, as Join's does (Refuse and
// JoinError reach the client, any other error is logged and answered
// {"reason":"join crashed"}). The answer is carried out on a goroutine of
// its own, after which everything that follows an accepted join follows:
// the ok reply, the frames held meanwhile, AfterJoin, presence, the
// history's recovery. Called before Join has returned (by a goroutine it
// started, or by Join itself), the answer is kept for when Join returns
// Pending, and ignored if Join answers otherwise. It returns
// ErrJoinNotPending when there is no pending join to answer: the answer
// then goes nowhere.
func (c *ChannelSocket) CompleteJoin(response any, err error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.state != stateJoining {
		return ErrJoinNotPending
	}
	if c.inJoin {
		// From within Join, or a goroutine it started: kept for when it
		// returns Pending.
		r := c.rareLocked()
		if r.early != nil {
			return ErrJoinNotPending
		}
		r.early = &lateAnswer{response, err}
		return nil
	}
	p := c.pendLocked()
	if p == nil || p.claimed {
		return ErrJoinNotPending
	}
	p.claimed = true
	p.timer.Stop()
	go c.sock.settleJoin(c, lateAnswer{response, err})
	return nil
}

// pendLocked returns the pending join, or nil. Called with c.mu held.
func (c *ChannelSocket) pendLocked() *joinPending {
	if c.state != stateJoining || c.rare == nil {
		return nil
	}
	return c.rare.pend
}

// isPending reports whether the join waits for its answer.
func (c *ChannelSocket) isPending() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pendLocked() != nil
}

// pend makes ch's join pending, after its Join returned Pending. Called
// with s.cb held.
func (s *Socket) pend(ch *ChannelSocket, msg *Message) {
	ch.mu.Lock()
	ch.inJoin = false
	r := ch.rareLocked()
	if ans := r.early; ans != nil {
		// Answered before Join returned: carried out now, as a Join
		// that returned it.
		r.early = nil
		ch.mu.Unlock()
		s.finishJoin(ch, msg.Ref, Payload{Data: msg.Payload, Binary: msg.Binary}, ans.response, lateErr(ans), false)
		return
	}
	r.pend = &joinPending{
		// The ref is a slice of the frame's header; a clone lets it go.
		ref:    Ref(strings.Clone(string(msg.Ref))),
		params: Payload{Data: msg.Payload, Binary: msg.Binary}, // copied by handleFrame
		timer:  time.AfterFunc(s.ep.cfg.JoinTimeout, ch.joinTimedOut),
	}
	ch.mu.Unlock()
	s.chans = append(s.chans, ch)
	s.ep.stats.Channels.Add(1)
}

// lateErr is the error of a late answer; a second Pending is an error.
func lateErr(ans *lateAnswer) error {
	if _, again := ans.response.(pendingJoin); again && ans.err == nil {
		return errors.New("channels: a join was completed with Pending")
	}
	return ans.err
}

// settleJoin carries out a pending join's answer, unless the join has
// ended meanwhile (the answer is then dropped), and then the pushes that
// waited for it.
func (s *Socket) settleJoin(ch *ChannelSocket, ans lateAnswer) {
	s.cb.Lock()
	defer s.cb.Unlock()
	p := ch.takePend()
	if p == nil {
		return
	}
	// finishJoin adds an accepted channel to the table itself.
	s.chans.remove(ch)
	s.ep.stats.Channels.Add(-1)
	s.finishJoin(ch, p.ref, p.params, ans.response, lateErr(&ans), false)
	for _, m := range p.pushes {
		s.handleInLocked(m)
	}
}

// takePend ends ch's pending state and returns it, or nil when the join
// is not pending any more.
func (c *ChannelSocket) takePend() *joinPending {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pendLocked()
	if p != nil {
		c.rare.pend = nil
	}
	return p
}

// joinTimedOut fails a join still pending after JoinTimeout: the client's
// error reply, Terminate with ReasonJoinTimeout, and the pushes that
// waited answered as for any refused join.
func (c *ChannelSocket) joinTimedOut() {
	c.mu.Lock()
	p := c.pendLocked()
	if p == nil || p.claimed {
		c.mu.Unlock()
		return
	}
	p.claimed = true
	c.mu.Unlock()

	s := c.sock
	s.cb.Lock()
	defer s.cb.Unlock()
	if p = c.takePend(); p == nil {
		return // ended meanwhile
	}
	s.ep.stats.JoinTimeouts.Add(1)
	s.ep.log.Info("channels: join not answered in time", "topic", c.Topic(), "socket", s.name(), "timeout", s.ep.cfg.JoinTimeout)
	s.sendSocketReply(c.joinRef, p.ref, c.Topic(), "error", reasonJoinTimeout)
	s.terminate(c, ReasonJoinTimeout)
	for _, m := range p.pushes {
		s.handleInLocked(m)
	}
}

// dropEarly ends the wait of the pushes held by ch's pending join, if it
// is pending, answering each that has a ref as a push to a topic not
// joined; the join itself is ended by the caller. Called with s.cb held,
// before whatever ends the join is answered, so that the client's
// replies keep the order of its messages.
func (s *Socket) dropEarly(ch *ChannelSocket) {
	ch.mu.Lock()
	var pushes []*Message
	if p := ch.pendLocked(); p != nil {
		pushes, p.pushes = p.pushes, nil
	}
	ch.mu.Unlock()
	for _, m := range pushes {
		if !m.Ref.IsNull() {
			s.sendSocketReply(NullRef, m.Ref, m.Topic, "error", reasonUnmatchedTopic)
		}
	}
}

// holdEarly keeps a client push to a pending join for after its answer,
// and reports whether the join is pending. Called with s.cb held.
func (c *ChannelSocket) holdEarly(msg *Message) bool {
	c.mu.Lock()
	p := c.pendLocked()
	if p == nil {
		c.mu.Unlock()
		return false
	}
	if len(p.pushes) >= maxEarlyPushes {
		c.mu.Unlock()
		if !msg.Ref.IsNull() {
			c.sock.sendSocketReply(msg.JoinRef, msg.Ref, msg.Topic, "error", reasonJoinPending)
		}
		return true
	}
	// The strings are slices of the frame's header (handleFrame copied
	// the payload).
	m := *msg
	m.JoinRef = Ref(strings.Clone(string(m.JoinRef)))
	m.Ref = Ref(strings.Clone(string(m.Ref)))
	m.Topic = strings.Clone(m.Topic)
	m.Event = strings.Clone(m.Event)
	p.pushes = append(p.pushes, &m)
	c.mu.Unlock()
	return true
}
