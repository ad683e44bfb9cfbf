package channels

import (
	"context"
	"encoding/json"
	"log/slog"
	"slices"
	"sync"
	"time"
	"unicode/utf8"
	"unique"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
)

// ChannelSocket is a channel's handle on its socket for one join: Phoenix's
// socket struct inside a channel. The join receives its topic's
// broadcasts through it (subscriber, below), which the channel never calls.
//
// Push, Reply, Broadcast and BroadcastFrom may be called from any
// goroutine, at any time; after the channel has ended they do nothing.
// Assigns and presence calls belong to the channel's callbacks.
type ChannelSocket struct {
	sock *Socket
	impl Channel
	// topic is interned: every join of a room shares one copy, and the
	// join frame, which the topic would otherwise keep alive, is freed.
	topic   unique.Handle[string]
	joinRef Ref
	id      string // subscriber and presence owner id, unique on the node
	// intercepts is the channel's Interceptor list, nil for the many
	// channels without one: a pointer, not a slice, so that last fits
	// in the struct's size class (128 bytes, TestIdleSocketFootprint).
	intercepts *[]string
	assigns    map[string]any // shared with the socket's Identity until the first Assign; guarded by sock.cb

	mu sync.Mutex
	// The small fields share one word, after mu (4-byte aligned).
	ownAssigns bool // assigns is this join's own copy
	tracked    bool // guarded by sock.cb
	// loose: a broadcast without a position went out after last, so the
	// next position of last's epoch may lie past last+1
	// (loosenPositionLocked). Guarded by mu.
	loose bool
	state joinState // guarded by mu
	// inJoin: the Join callback runs; a CompleteJoin meanwhile is kept
	// for when it returns Pending (pending.go). guarded by mu.
	inJoin bool

	// last is the position of the last broadcast of a topic with history
	// delivered to this join (recovery.go); zero until the first one.
	// Guarded by mu. Every join of a room with history has one, so it is
	// not in rare: an idle join would otherwise hold a joinRare for it.
	last pubsub.Position
	// rare holds what few joins need, allocated on first use: an idle
	// join's struct stays in a smaller size class.
	rare *joinRare
}

// joinRare is the part of a ChannelSocket that most joins never touch.
// Guarded by ChannelSocket.mu.
type joinRare struct {
	pending []heldFrame // frames produced before the join reply went out
	// pend is the state of a join answered later, until its answer is
	// carried out or it ends (pending.go); early, an answer given before
	// Join returned Pending.
	pend   *joinPending
	early  *lateAnswer
	ctx    context.Context
	cancel context.CancelFunc
	// While a replay runs (replay.go), the frames held meanwhile are
	// bounded: heldBytes counts pending's frame bytes against heldMax and
	// heldMaxBytes; each time the bound is hit the broadcasts with a
	// position are dropped (the history keeps them) and dropped counts
	// it; overflow: the other frames alone hit half the bound.
	replaying    bool
	overflow     bool
	dropped      uint32
	heldBytes    int
	heldMax      int
	heldMaxBytes int
}

// rareLocked returns c.rare, allocating it. Called with c.mu held.
func (c *ChannelSocket) rareLocked() *joinRare {
	if c.rare == nil {
		c.rare = &joinRare{}
	}
	return c.rare
}

type joinState uint8

const (
	stateJoining joinState = iota
	stateJoined
	// stateBroken: a hole in the topic's broadcasts failed the channel
	// (recovery.go); nothing more goes out, and it is about to end.
	stateBroken
	stateClosed
)

// presenceTimeout bounds a presence call made from a callback, which holds
// up the socket's read path while it waits.
const presenceTimeout = 5 * time.Second

// Topic is the joined topic.
func (c *ChannelSocket) Topic() string { return c.topic.Value() }

// JoinRef is the join_ref of this join instance.
func (c *ChannelSocket) JoinRef() Ref { return c.joinRef }

// SocketID is the connection's id from the SocketHandler ("" if none).
func (c *ChannelSocket) SocketID() string { return c.sock.ident.ID }

// Serializer is the connection's serializer, for channels that care about
// the protocol version (V1 sockets cannot receive binary payloads).
func (c *ChannelSocket) Serializer() Serializer { return c.sock.ser() }

// Logger is the endpoint's logger, for channels to log with context.
func (c *ChannelSocket) Logger() *slog.Logger { return c.sock.ep.log }

// Assign stores a value for this join's later callbacks.
func (c *ChannelSocket) Assign(key string, value any) {
	if !c.ownAssigns {
		// Joins read the connection's assigns in place and copy them
		// only when they write: most never do, and a map per join is a
		// large part of an idle socket's memory.
		own := make(map[string]any, len(c.assigns)+1)
		for k, v := range c.assigns {
			own[k] = v
		}
		c.assigns, c.ownAssigns = own, true
	}
	c.assigns[key] = value
}

// Assigned returns a value stored with Assign or given by the connect
// handler's Identity.
func (c *ChannelSocket) Assigned(key string) any { return c.assigns[key] }

// Context is cancelled when the channel ends, for work started on behalf
// of the join.
func (c *ChannelSocket) Context() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	r := c.rareLocked()
	if r.ctx == nil {
		r.ctx, r.cancel = context.WithCancel(context.Background())
		if c.state == stateClosed {
			r.cancel()
		}
	}
	return r.ctx
}

// Push sends event with payload to this client (§2.5: join_ref set, ref
// null). payload is a json.RawMessage, a Binary, nil for {}, or any value
// to marshal as JSON.
func (c *ChannelSocket) Push(event string, payload any) error {
	data, binary, err := EncodePayload(payload)
	if err != nil {
		return err
	}
	return c.send(&Message{JoinRef: c.joinRef, Topic: c.Topic(), Event: event, Payload: data, Binary: binary})
}

// Reply sends the reply to the client message with ref at once, from any
// goroutine: the late answer to a push whose HandleIn returned NoReply,
// Phoenix's reply/2. status is usually StatusOK or StatusError; any word
// is allowed (§2.5).
func (c *ChannelSocket) Reply(ref Ref, status string, response any) error {
	if !validRef(ref) {
		// In.Ref is always valid; a Ref made up by the caller may not be.
		return errRefNotJSON
	}
	data, binary, err := EncodePayload(response)
	if err != nil {
		return err
	}
	return c.send(&Message{JoinRef: c.joinRef, Ref: ref, Topic: c.Topic(), Event: EventReply, Status: status, Payload: data, Binary: binary})
}

// Broadcast sends event to every subscriber of the topic, this one
// included, on every node.
func (c *ChannelSocket) Broadcast(event string, payload any) error {
	return c.publish(event, payload, "")
}

// BroadcastFrom sends event to every subscriber of the topic except this
// join; other sockets of the same user still receive it.
func (c *ChannelSocket) BroadcastFrom(event string, payload any) error {
	return c.publish(event, payload, c.id)
}

func (c *ChannelSocket) publish(event string, payload any, from string) error {
	data, binary, err := EncodePayload(payload)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	return c.sock.ep.cfg.PubSub.Publish(ctx, &pubsub.Message{Topic: c.Topic(), Event: event, Payload: data, Binary: binary, From: from})
}

// Track makes key present on the topic with meta (a JSON object) for as
// long as this join lives, or until Untrack.
func (c *ChannelSocket) Track(key string, meta any) error {
	if !utf8.ValidString(key) {
		return errPresenceKeyUTF8
	}
	data, _, err := EncodePayload(meta)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	if _, err := c.sock.ep.cfg.Presence.Track(ctx, c.Topic(), c.id, key, data); err != nil {
		return err
	}
	c.tracked = true
	return nil
}

// UpdatePresence replaces the meta of a key this join tracks.
func (c *ChannelSocket) UpdatePresence(key string, meta any) error {
	if !utf8.ValidString(key) {
		return errPresenceKeyUTF8
	}
	data, _, err := EncodePayload(meta)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	_, err = c.sock.ep.cfg.Presence.Update(ctx, c.Topic(), c.id, key, data)
	return err
}

// Untrack removes a key this join tracks.
func (c *ChannelSocket) Untrack(key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	return c.sock.ep.cfg.Presence.Untrack(ctx, c.Topic(), c.id, key)
}

// PushPresenceState pushes presence_state, the topic's presences grouped
// by key. Call it after the join (AfterJoin), as Phoenix applications do.
//
// A tracker that writes the payload itself (presence.StateAppender, the
// in-memory one) is asked for it: every join into a room pushes the room
// whole, and a State built and checked on the way was most of what the
// tracker cost a join. Its payload is valid UTF-8 JSON by that
// interface's contract (every key and meta was checked by Track), so it
// is not scanned again here.
func (c *ChannelSocket) PushPresenceState() error {
	if sa, ok := c.sock.ep.cfg.Presence.(presence.StateAppender); ok {
		ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
		defer cancel()
		bp := stateBufs.Get().(*[]byte)
		data, err := sa.AppendState(ctx, (*bp)[:0], c.Topic())
		if err == nil {
			// The frame is a copy: the buffer goes back.
			err = c.send(&Message{JoinRef: c.joinRef, Topic: c.Topic(), Event: EventPresenceState, Payload: data})
		}
		if cap(data) <= maxPooledState {
			*bp = data
			stateBufs.Put(bp)
		}
		return err
	}
	state, err := c.ListPresence()
	if err != nil {
		return err
	}
	data, err := state.MarshalJSON()
	if err != nil {
		return err
	}
	return c.Push(EventPresenceState, json.RawMessage(data))
}

// stateBufs holds the buffers PushPresenceState writes a room's
// presence_state into before it is copied into the frame; rooms up to
// maxPooledState bytes reuse one.
var stateBufs = sync.Pool{New: func() any { return new([]byte) }}

const maxPooledState = 64 << 10

// ListPresence returns the topic's presences grouped by key, on every node
// of the cluster: Phoenix's Presence.list(socket), for a channel that
// answers with them (node.Node.Presence lists any topic from outside).
func (c *ChannelSocket) ListPresence() (presence.State, error) {
	ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
	defer cancel()
	return c.sock.ep.cfg.Presence.List(ctx, c.Topic())
}

// CloseSocket closes the whole connection this channel belongs to.
func (c *ChannelSocket) CloseSocket(code int, reason string) { c.sock.conn.Close(code, reason) }

// subscriber is a ChannelSocket in the role of its topic's
// pubsub.Subscriber and pubsub.ExcludedObserver, as idSubscriber is for a
// Socket: the methods the registry calls stay out of the API a channel
// author reads. The conversion costs nothing, and every join subscribes
// and unsubscribes with the same value (c.subscriber()), which is what
// the registry compares.
type subscriber ChannelSocket

var (
	_ pubsub.Subscriber       = (*subscriber)(nil)
	_ pubsub.ExcludedObserver = (*subscriber)(nil) // else recovery takes every broadcast_from for a hole
)

func (c *ChannelSocket) subscriber() *subscriber { return (*subscriber)(c) }

func (s *subscriber) SubscriberID() string       { return s.id }
func (s *subscriber) Deliver(m *pubsub.Message)  { (*ChannelSocket)(s).deliver(m) }
func (s *subscriber) Excluded(m *pubsub.Message) { (*ChannelSocket)(s).excluded(m) }

// deliver hands the join a broadcast of its topic: the broadcast's shared
// encoding for this socket's serializer goes to the connection, or the
// message goes to HandleOut when the channel intercepts its event.
func (c *ChannelSocket) deliver(m *pubsub.Message) {
	if !m.Pos.IsZero() {
		c.deliverAt(m, false) // a topic with history (recovery.go)
		return
	}
	// A message that was never published (Message.Local) took no
	// offset: it must not make a hole pass for a step forward.
	loosen := !m.Local
	if c.intercepts != nil && slices.Contains(*c.intercepts, m.Event) {
		if loosen {
			c.loosenPosition()
		}
		c.sock.deliverOut(c, m)
		return
	}
	f, ok := c.frameFor(m)
	if !ok {
		if loosen {
			c.loosenPosition()
		}
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateJoining:
		c.holdLocked(heldFrame{f: f, unpositioned: loosen})
	case stateJoined:
		if loosen {
			c.loosenPositionLocked()
		}
		c.sock.sendFrame(f)
	}
}

// frameFor returns the broadcast's shared encoding for this socket's
// serializer, or false when there is none: a binary broadcast cannot
// reach a V1 socket (the others get it).
func (c *ChannelSocket) frameFor(m *pubsub.Message) (Frame, bool) {
	data, binary, err := m.Encoded(c.sock.ser())
	if err != nil {
		c.sock.ep.log.Debug("channels: broadcast not deliverable to this socket", "topic", m.Topic, "event", m.Event, "vsn", c.sock.ser().Vsn(), "err", err)
		return Frame{}, false
	}
	return Frame{Data: data, Binary: binary}, true
}

func (c *ChannelSocket) send(m *Message) error {
	f, err := encodeChecked(c.sock.ser(), nil, m)
	if err != nil {
		return err
	}
	c.sendFrame(f)
	return nil
}

// sendFrame holds frames back while the join reply is not yet out (§3.3)
// and drops them once the channel has ended.
func (c *ChannelSocket) sendFrame(f Frame) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch c.state {
	case stateJoining:
		c.holdLocked(heldFrame{f: f})
	case stateJoined:
		c.sock.sendFrame(f)
	}
}

// sendFinal sends phx_close or phx_error for this join (§2.5: ref equal to
// join_ref). The channel has already ended.
func (c *ChannelSocket) sendFinal(event string, payload []byte) {
	c.sock.send(&Message{JoinRef: c.joinRef, Ref: c.joinRef, Topic: c.Topic(), Event: event, Payload: payload})
}

func (c *ChannelSocket) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state == stateClosed
}

// cleanup releases what the join held beyond its subscription.
func (c *ChannelSocket) cleanup() {
	c.mu.Lock()
	c.state = stateClosed
	if r := c.rare; r != nil {
		r.pending, r.early = nil, nil
		if r.pend != nil {
			r.pend.timer.Stop()
			r.pend = nil
		}
		if r.cancel != nil {
			r.cancel()
		}
	}
	c.mu.Unlock()
	if c.tracked {
		ctx, cancel := context.WithTimeout(context.Background(), presenceTimeout)
		defer cancel()
		if err := c.sock.ep.cfg.Presence.UntrackAll(ctx, c.Topic(), c.id); err != nil {
			c.sock.ep.log.Warn("channels: untracking presence failed", "topic", c.Topic(), "err", err)
		}
		c.tracked = false
	}
}
