package channels

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"unique"

	"github.com/channelsd/channelsd/pubsub"
)

// Socket is one client connection, as Runtime.Open starts it: it routes
// the client's messages to channels and the channels' output to the
// connection. Applications never hold one (a channel sees its join as a
// ChannelSocket); the transport drives it through the Runtime, with
// HandleFrame from one goroutine and HandleClose once when the connection
// has ended.
type Socket struct {
	ep   *Endpoint
	conn Conn
	// serp points at the connection's serializer: V1 and V2 live in
	// serializers, so a pointer (not an interface) is enough, and the
	// struct keeps to 128 bytes (TestIdleSocketFootprint).
	serp  *Serializer
	ident Identity
	// serial is unique on this node and never reused; name (its base 36
	// form) names the socket in logs. A number, not the string: every
	// idle socket carries it.
	serial uint64

	// cb serializes every channel callback of this socket (locksordering.txt).
	cb    sync.Mutex
	chans channelSet // live channel per topic; guarded by cb

	// outbox holds intercepted broadcasts waiting for HandleOut; nil
	// while none waits, so that a socket pays for it only when in use.
	outMu  sync.Mutex
	outbox *[]outItem

	// The small fields share one word, so that an idle socket's size
	// class does not grow (TestIdleFootprint, BENCHMARKS.md).
	closed       bool // guarded by cb
	outRunning   bool // guarded by outMu
	idSubscribed bool // subscribed to its id topic; set before the socket is shared
	// Rate limit (rateLimit), touched only by handleFrame, which the
	// transport calls from one goroutine at a time: when the current
	// episode of refusals began, in deciseconds since the endpoint's
	// epoch plus one (0: none, rlClosed: closed for abuse), and the
	// theoretical arrival time of the next message, in ns since the epoch.
	rlAbuse uint32
	rlTAT   int64
}

// ser is the connection's serializer.
func (s *Socket) ser() Serializer { return *s.serp }

// name names the socket in logs and prefixes its subscriber ids.
func (s *Socket) name() string { return strconv.FormatUint(s.serial, 36) }

// serializers holds the package's serializers, for Socket.serp.
var serializers = [...]Serializer{V1, V2}

// boxSerializer returns a pointer to ser: into serializers for V1 and V2,
// the only ones (Serializer), else to a copy of its own.
func boxSerializer(ser Serializer) *Serializer {
	for i := range serializers {
		if serializers[i] == ser {
			return &serializers[i]
		}
	}
	return &ser
}

// reasonUnmatchedTopic answers a push to a topic the socket has not
// joined (PROTOCOL.md §3.5).
var reasonUnmatchedTopic = reasonJSON("unmatched topic")

// channelSet holds a socket's live channels. Sockets join a handful of
// topics (at most MaxChannels), so a slice scanned in order is both
// smaller and faster than a map, and an idle socket's footprint counts.
type channelSet []*ChannelSocket

func (cs channelSet) get(topic string) *ChannelSocket {
	for _, ch := range cs {
		if ch.Topic() == topic {
			return ch
		}
	}
	return nil
}

func (cs *channelSet) remove(ch *ChannelSocket) {
	for i, x := range *cs {
		if x == ch {
			last := len(*cs) - 1
			(*cs)[i] = (*cs)[last]
			(*cs)[last] = nil
			*cs = (*cs)[:last]
			return
		}
	}
}

type outItem struct {
	ch *ChannelSocket
	m  *pubsub.Message
}

// handleFrame is Runtime.HandleFrame.
func (s *Socket) handleFrame(data []byte, binary bool) {
	msg, err := s.ser().Decode(data, binary)
	s.ep.stats.MessagesIn.Add(1)
	if s.ep.rlEvery != 0 && !s.rateLimit() {
		s.overRate(&msg, err == nil)
		return
	}
	if err != nil {
		s.ep.stats.MalformedFrames.Add(1)
		if err == errWirePayloadUTF8 {
			// Decode gave the header: answer like a limit does. A
			// heartbeat's payload goes nowhere, and heartbeats are
			// always answered.
			s.ep.stats.InvalidPayloads.Add(1)
			switch {
			case msg.Topic == TopicPhoenix && msg.Event == EventHeartbeat:
				s.sendSocketReply(NullRef, msg.Ref, TopicPhoenix, "ok", nil)
			case !msg.Ref.IsNull():
				s.sendSocketReply(msg.JoinRef, msg.Ref, msg.Topic, "error", reasonInvalidPayload)
			}
			return
		}
		s.ep.log.Debug("channels: malformed message, closing the socket", "socket", s.name(), "err", err)
		s.conn.Close(CloseInvalidData, "malformed message")
		return
	}
	if msg.Topic == TopicPhoenix && msg.Event == EventHeartbeat {
		// Answered at once, before any channel work (§3.2).
		s.sendSocketReply(NullRef, msg.Ref, TopicPhoenix, "ok", nil)
		return
	}
	if reason := s.ep.overLimit(&msg); reason != nil {
		if !msg.Ref.IsNull() {
			s.sendSocketReply(msg.JoinRef, msg.Ref, msg.Topic, "error", reason)
		}
		return
	}
	// The decoded message aliases the transport's buffer; channels may
	// keep payloads (HandleOut runs later, applications store messages).
	msg.Payload = append([]byte(nil), msg.Payload...)

	switch {
	case msg.Event == EventJoin:
		s.join(&msg)
	case msg.Event == EventLeave:
		s.leave(&msg)
	default:
		s.handleIn(&msg)
	}
}

// handleClose is Runtime.HandleClose.
func (s *Socket) handleClose() {
	s.cb.Lock()
	if s.closed {
		s.cb.Unlock()
		s.ep.forget(s)
		return
	}
	s.closed = true
	for len(s.chans) > 0 {
		s.terminate(s.chans[len(s.chans)-1], ReasonClosed)
	}
	s.chans = nil
	s.cb.Unlock()
	if s.idSubscribed {
		s.ep.cfg.PubSub.Unsubscribe(idTopic(s.ident.ID), (*idSubscriber)(s))
	}
	s.ep.forget(s)
}

func (s *Socket) join(msg *Message) {
	s.cb.Lock()
	defer s.cb.Unlock()
	if s.closed {
		return
	}
	var replaced *ChannelSocket
	if old := s.chans.get(msg.Topic); old != nil {
		// §3.4: shut the old instance down, answer the new join, then tell
		// the client the old join_ref is closed.
		s.dropEarly(old) // pending.go
		s.terminate(old, ReasonDuplicateJoin)
		replaced = old
	}
	defer func() {
		if replaced != nil {
			replaced.sendFinal(EventClose, []byte("{}"))
		}
	}()

	factory, ok := s.ep.cfg.Router.Match(msg.Topic)
	if !ok {
		s.sendSocketReply(NullRef, msg.Ref, msg.Topic, "error", reasonUnmatchedTopic)
		return
	}
	if max := s.ep.cfg.MaxChannels; max > 0 && len(s.chans) >= max {
		s.ep.stats.LimitChannels.Add(1)
		s.sendSocketReply(msg.JoinRef, msg.Ref, msg.Topic, "error", reasonTooManyChannels)
		return
	}
	ch := &ChannelSocket{
		sock:  s,
		topic: unique.Make(msg.Topic),
		// A copy: msg's strings are slices of the whole frame header.
		joinRef: Ref(strings.Clone(string(msg.JoinRef))),
		id:      strconv.FormatUint(s.ep.serial.Add(1), 36),
		state:   stateJoining,
		inJoin:  true,
	}
	// From here on the topic is the interned copy (unique.Make clones):
	// msg.Topic is a substring of the decoded header, refs included, and
	// what keeps it (the subscription table's key, the channel's
	// factory) would keep the whole header alive as long as the join.
	topic := ch.Topic()
	ch.impl = factory(topic)
	s.ep.checkOptional(ch.impl)
	if ic, ok := ch.impl.(Interceptor); ok {
		if ics := ic.Intercepts(); len(ics) > 0 {
			ch.intercepts = &ics
		}
	}
	ch.assigns = s.ident.Assigns // copied on the first Assign

	var response any
	var joinErr error
	crashed := s.guard(ch, "join", func() {
		response, joinErr = ch.impl.Join(ch, Payload{Data: msg.Payload, Binary: msg.Binary})
	})
	if _, later := response.(pendingJoin); later && !crashed && joinErr == nil {
		s.pend(ch, msg) // pending.go
		return
	}
	ch.mu.Lock()
	ch.inJoin = false
	ch.mu.Unlock()
	s.finishJoin(ch, msg.Ref, Payload{Data: msg.Payload, Binary: msg.Binary}, response, joinErr, crashed)
}

// finishJoin carries out a join's answer, given by Join or, for a join
// answered later, by CompleteJoin: the error reply of a refusal, or the
// subscription, the history read, the ok reply, the held frames and
// AfterJoin. ch is not in s.chans. Called with s.cb held.
func (s *Socket) finishJoin(ch *ChannelSocket, ref Ref, params Payload, response any, joinErr error, crashed bool) {
	topic := ch.Topic()
	if crashed || joinErr != nil {
		reply := reasonJSON("join crashed")
		if !crashed {
			reply = s.joinErrorResponse(topic, joinErr)
		}
		ch.state = stateClosed
		ch.cleanup()
		s.sendSocketReply(ch.joinRef, ref, topic, "error", reply)
		return
	}
	replyData, replyBinary, err := EncodePayload(response)
	if err != nil {
		s.ep.log.Error("channels: join response cannot be encoded", "topic", topic, "err", err)
		replyData, replyBinary = []byte("{}"), false
	}
	if err := s.ep.cfg.PubSub.Subscribe(topic, ch.subscriber()); err != nil {
		s.ep.log.Error("channels: subscribe failed", "topic", topic, "err", err)
		ch.state = stateClosed
		ch.cleanup()
		s.sendSocketReply(ch.joinRef, ref, topic, "error", reasonJSON("subscribe failed"))
		return
	}
	s.chans = append(s.chans, ch)
	s.ep.stats.Channels.Add(1)
	s.ep.stats.Joins.Add(1)
	// After Subscribe: what the history read misses arrives live (recovery.go).
	rec := s.readRecovery(ch, params)
	if rec != nil {
		replyData = rec.amendReply(replyData, replyBinary)
	}

	// §3.3: the reply goes out before anything else of this join.
	ch.mu.Lock()
	s.send(&Message{JoinRef: ch.joinRef, Ref: ref, Topic: topic, Event: EventReply, Status: "ok", Payload: replyData, Binary: replyBinary})
	if rec != nil && len(rec.replay) > 0 {
		// Frames stay held (stateJoining) until the replay is out.
		ch.mu.Unlock()
		if !s.replay(ch, rec) {
			return
		}
	} else {
		var pending []heldFrame
		if ch.rare != nil {
			pending, ch.rare.pending = ch.rare.pending, nil
		}
		ch.state = stateJoined
		var last pubsub.Position
		if rec != nil {
			last = rec.last
		}
		ch.flushJoinLocked(last, pending)
		ch.mu.Unlock()
	}

	if aj, ok := ch.impl.(AfterJoiner); ok {
		if s.guard(ch, "after_join", func() { aj.AfterJoin(ch) }) {
			s.crash(ch)
		}
	}
}

func (s *Socket) leave(msg *Message) {
	s.cb.Lock()
	defer s.cb.Unlock()
	ch := s.chans.get(msg.Topic)
	if ch == nil {
		// §3.5: leaving what is not joined is fine.
		s.sendSocketReply(msg.JoinRef, msg.Ref, msg.Topic, "ok", nil)
		return
	}
	if !msg.JoinRef.IsNull() && msg.JoinRef != ch.joinRef {
		return // stale: that instance is already gone
	}
	// §3.6: reply, then phx_close. A pending join holds its frames: the
	// reply goes around it, after the answers to the pushes that waited
	// for the join, and the join's late answer is dropped.
	if ch.isPending() {
		s.dropEarly(ch) // pending.go
		s.sendSocketReply(ch.joinRef, msg.Ref, ch.Topic(), "ok", nil)
	} else {
		ch.send(&Message{JoinRef: ch.joinRef, Ref: msg.Ref, Topic: ch.Topic(), Event: EventReply, Status: "ok", Payload: []byte("{}")})
	}
	s.terminate(ch, ReasonLeft)
	ch.sendFinal(EventClose, []byte("{}"))
}

func (s *Socket) handleIn(msg *Message) {
	s.cb.Lock()
	defer s.cb.Unlock()
	s.handleInLocked(msg)
}

// handleInLocked is handleIn with s.cb held.
func (s *Socket) handleInLocked(msg *Message) {
	ch := s.chans.get(msg.Topic)
	if ch == nil {
		s.sendSocketReply(NullRef, msg.Ref, msg.Topic, "error", reasonUnmatchedTopic)
		return
	}
	if !msg.JoinRef.IsNull() && msg.JoinRef != ch.joinRef {
		return // §3.5: stale join_ref, silently dropped
	}
	if ch.holdEarly(msg) {
		return // handled once the join is answered (pending.go)
	}
	var res Result
	in := In{Event: msg.Event, Payload: Payload{Data: msg.Payload, Binary: msg.Binary}, Ref: msg.Ref}
	if s.guard(ch, "handle_in", func() { res = ch.impl.HandleIn(ch, in) }) {
		s.crash(ch)
		return
	}
	s.apply(ch, msg.Ref, res)
}

// apply carries out a callback's Result.
func (s *Socket) apply(ch *ChannelSocket, ref Ref, res Result) {
	if res.reply {
		if err := ch.Reply(ref, res.status, res.response); err != nil {
			s.ep.log.Error("channels: reply cannot be encoded", "topic", ch.Topic(), "err", err)
		}
	}
	if !res.stop {
		return
	}
	if res.stopErr != nil {
		s.ep.log.Warn("channels: channel stopped with error", "topic", ch.Topic(), "err", res.stopErr)
		s.terminate(ch, ReasonError)
		ch.sendFinal(EventError, []byte(`{"reason":"channel_crash"}`))
		return
	}
	s.terminate(ch, ReasonStop)
	ch.sendFinal(EventClose, []byte("{}"))
}

// guard runs a channel callback and turns a panic into a logged crash. It
// reports whether the callback panicked.
func (s *Socket) guard(ch *ChannelSocket, callback string, f func()) (crashed bool) {
	defer func() {
		if r := recover(); r != nil {
			crashed = true
			s.ep.stats.Crashes.Add(1)
			s.ep.log.Error("channels: channel callback panicked",
				"callback", callback, "topic", ch.Topic(), "socket", s.name(),
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
		}
	}()
	f()
	return false
}

// crash ends a channel whose callback panicked: phx_error to the client
// (§3.7), the socket and its other channels untouched.
func (s *Socket) crash(ch *ChannelSocket) {
	if ch.isClosed() {
		return
	}
	s.terminate(ch, ReasonCrash)
	ch.sendFinal(EventError, []byte(`{"reason":"channel_crash"}`))
}

// terminate ends a live channel: Terminate callback when the channel is a
// Terminator, then unsubscribe and untrack. Frames for the client (phx_close, phx_error) are the caller's.
// Called with s.cb held.
func (s *Socket) terminate(ch *ChannelSocket, reason Reason) {
	if ch.isClosed() {
		return
	}
	s.chans.remove(ch)
	s.ep.stats.Channels.Add(-1)
	if t, ok := ch.impl.(Terminator); ok {
		s.guard(ch, "terminate", func() { t.Terminate(ch, reason) })
	}
	ch.mu.Lock()
	ch.state = stateClosed
	ch.mu.Unlock()
	s.ep.cfg.PubSub.Unsubscribe(ch.Topic(), ch.subscriber())
	ch.cleanup()
}

// sendSocketReply sends a reply that belongs to no channel instance:
// heartbeats, unmatched topics, refused joins.
func (s *Socket) sendSocketReply(joinRef, ref Ref, topic, status string, response []byte) {
	if response == nil {
		response = []byte("{}")
	}
	s.send(&Message{JoinRef: joinRef, Ref: ref, Topic: topic, Event: EventReply, Status: status, Payload: response})
}

func (s *Socket) send(m *Message) {
	f, err := encodeChecked(s.ser(), nil, m)
	if err != nil {
		s.ep.log.Warn("channels: message cannot be encoded for this socket", "topic", m.Topic, "event", m.Event, "vsn", s.ser().Vsn(), "err", err)
		return
	}
	s.sendFrame(f)
}

func (s *Socket) sendFrame(f Frame) {
	if err := s.conn.Send(f); errors.Is(err, ErrSlowConsumer) {
		s.ep.stats.SlowConsumers.Add(1)
	}
}

// ErrSlowConsumer is what a Conn's Send returns when the connection's
// outbound queue is full; the transport closes such a connection.
var ErrSlowConsumer = errors.New("channels: slow consumer: outbound queue full")

// ErrConnClosed is what a Conn's Send returns once the connection is
// closing.
var ErrConnClosed = errors.New("channels: connection closed")

func reasonJSON(reason string) []byte {
	b, _ := json.Marshal(map[string]string{"reason": reason})
	return b
}

// joinErrorResponse is the reply to a join the channel refused. Only a
// *JoinError (Refuse), however wrapped, was made for the client; any
// other error may carry what the client must not see (a database
// address, a password in a DSN), so it is logged and the client gets
// Phoenix's answer to a join that failed, {"reason":"join crashed"}.
func (s *Socket) joinErrorResponse(topic string, err error) []byte {
	var je *JoinError
	if !errors.As(err, &je) {
		s.ep.log.Warn("channels: join failed with an error not made for the client; replied \"join crashed\"",
			"topic", topic, "socket", s.name(), "id", s.ident.ID, "err", err)
		return reasonJSON("join crashed")
	}
	b, _, encErr := EncodePayload(je.Response())
	if encErr != nil {
		s.ep.log.Error("channels: join refusal cannot be encoded", "topic", topic, "socket", s.name(), "err", encErr)
		return reasonJSON("join refused")
	}
	return b
}

// deliverOut queues an intercepted broadcast for HandleOut, which runs on
// its own short-lived goroutine, under s.cb, so that the broadcaster never
// waits for a channel callback.
func (s *Socket) deliverOut(ch *ChannelSocket, m *pubsub.Message) {
	s.outMu.Lock()
	if s.outbox == nil {
		s.outbox = new([]outItem)
	}
	if len(*s.outbox) >= s.ep.cfg.MaxOutbox {
		s.outMu.Unlock()
		s.ep.stats.SlowConsumers.Add(1)
		s.conn.Close(ClosePolicy, "slow consumer")
		return
	}
	*s.outbox = append(*s.outbox, outItem{ch, m})
	start := !s.outRunning
	s.outRunning = true
	s.outMu.Unlock()
	if start {
		go s.runOutbox()
	}
}

func (s *Socket) runOutbox() {
	for {
		s.outMu.Lock()
		if s.outbox == nil || len(*s.outbox) == 0 {
			s.outbox = nil
			s.outRunning = false
			s.outMu.Unlock()
			return
		}
		q := *s.outbox
		item := q[0]
		q[0] = outItem{}
		*s.outbox = q[1:]
		s.outMu.Unlock()

		s.cb.Lock()
		if !item.ch.isClosed() {
			ic := item.ch.impl.(Interceptor)
			out := Out{Event: item.m.Event, Payload: Payload{Data: item.m.Payload, Binary: item.m.Binary}}
			if s.guard(item.ch, "handle_out", func() { ic.HandleOut(item.ch, out) }) {
				s.crash(item.ch)
			}
		}
		s.cb.Unlock()
	}
}
