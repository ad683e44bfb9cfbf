package channels

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/channelsd/channelsd/presence"
	"github.com/channelsd/channelsd/pubsub"
)

// Defaults of the per-message limits of EndpointConfig, which
// node.Config and channelsd's flags share (README "Limits").
const (
	// DefaultMaxRefLength is ample for the refs clients send (small
	// integers, UUIDs), and it keeps what a message's decoded header
	// holds small.
	DefaultMaxRefLength   = 64
	DefaultMaxPayloadSize = 64 << 10
	DefaultMaxTopicLength = 256
	DefaultMaxEventLength = 128
	// DefaultMaxMessagesPerSecond is far above what an interactive
	// client sends (phoenix.js heartbeats every 30 s) and far below what
	// one socket could make a node spend.
	DefaultMaxMessagesPerSecond = 100
	// DefaultMaxChannels is Phoenix's own limit (1.8.9+).
	DefaultMaxChannels = 100
	// DefaultRateAbuseAfter is how long a socket may stay over its rate
	// before it is closed.
	DefaultRateAbuseAfter = 10 * time.Second
	// DefaultJoinTimeout is phoenix.js's own wait for a join reply, after
	// which the client gives up on it and leaves; it is twice package
	// proxy's default call timeout.
	DefaultJoinTimeout = 10 * time.Second
)

// EndpointConfig wires an Endpoint.
//
// Every limit's zero value is its default, the same as channelsd's flag
// (README "Limits" lists them once), and a negative value turns it off:
// an endpoint built from EndpointConfig{Router, PubSub, Presence} is as
// guarded as the binary.
type EndpointConfig struct {
	Router *Router
	// Handler authenticates connections; nil accepts every connection
	// anonymously.
	Handler  SocketHandler
	PubSub   pubsub.PubSub
	Presence presence.Tracker
	Logger   *slog.Logger
	// MaxChannels caps the channels one socket may join; a join beyond
	// gets the error reply "too many channels joined". Default
	// DefaultMaxChannels.
	MaxChannels int
	// MaxOutbox caps the intercepted broadcasts waiting for HandleOut on
	// one socket before it is closed as a slow consumer. Zero means 1024.
	MaxOutbox int

	// Limits on each client message. A message above one is dropped
	// (phx_join and phx_leave are exempt from the event limit,
	// heartbeats from all of them); if it carries a ref, the client gets
	// an error reply on the message's topic: {"reason":"payload too
	// large"}, "topic too long", "event too long" or "ref too long".
	MaxPayloadSize int // bytes of the payload (JSON text or binary); default DefaultMaxPayloadSize
	MaxTopicLength int // bytes of the topic; default DefaultMaxTopicLength
	MaxEventLength int // bytes of the event name; default DefaultMaxEventLength
	// MaxRefLength bounds the join_ref and the ref of a client message,
	// as the JSON text they travel as (phoenix.js sends integer strings
	// such as "12"). Default DefaultMaxRefLength.
	MaxRefLength int

	// MaxMessagesPerSecond and Burst rate-limit each socket's messages
	// with a token bucket: Burst at once, then MaxMessagesPerSecond on
	// average (default DefaultMaxMessagesPerSecond; negative: no rate
	// limit). A message over the rate is dropped, with an error reply
	// {"reason":"rate limited"} if it carries a ref. A socket still over
	// the rate RateAbuseAfter after its first refusal (without having
	// let its bucket fill up in between) is closed with 1008 "rate
	// limited". Heartbeats take a token when there is one and are always
	// answered. Burst zero: 2 × MaxMessagesPerSecond (at least 1).
	MaxMessagesPerSecond float64
	Burst                int
	// RateAbuseAfter defaults to DefaultRateAbuseAfter.
	RateAbuseAfter time.Duration

	// JoinTimeout bounds how long a join answered later (Pending) may
	// wait for its answer: then the client gets the error reply
	// {"reason":"join timeout"} and the channel ends with
	// ReasonJoinTimeout. Default DefaultJoinTimeout.
	JoinTimeout time.Duration
}

// Endpoint runs the sockets of a node and offers an application the
// node-wide operations: Broadcast, Disconnect by socket id, Stats and
// SocketCount. What transports and the node drive (accepting connections,
// opening sockets, shutdown and draining) is in Runtime.
type Endpoint struct {
	cfg EndpointConfig
	log *slog.Logger

	serial atomic.Uint64
	// optionalChecked holds the channel types checkOptional has seen.
	optionalChecked sync.Map // reflect.Type -> struct{}

	// Rate limit, precomputed from the config (Socket.rateLimit).
	epoch     time.Time
	rlEvery   int64 // ns between messages at the sustained rate; 0: off
	rlTol     int64 // how far ahead of now a socket's TAT may run: (burst-1) × rlEvery
	rlAbuseDs uint32

	mu      sync.Mutex
	sockets map[*Socket]struct{}
	// byID and moreByID index the open sockets that have an id, when the
	// PubSub routes the socket id topics to the endpoint as one prefix
	// (idRoute; nil byID: it does not, and each socket subscribes to its
	// id topic). byID holds one socket per id, moreByID the others of
	// the ids that several sockets share (a user's tabs): an entry in a
	// map keyed by the id the socket holds anyway, where a subscription
	// per socket cost its topic string and a table entry of its own,
	// some 140 bytes (TestIdleSocketFootprint). Guarded by mu.
	byID     map[string]*Socket
	moreByID map[string][]*Socket
	closing  bool
	drained  chan struct{} // closed once closing and no socket is left

	stats Stats
}

// Stats are the endpoint's running counters.
type Stats struct {
	Sockets         atomic.Int64 // open sockets
	Channels        atomic.Int64 // joined channels
	Joins           atomic.Uint64
	MessagesIn      atomic.Uint64
	MalformedFrames atomic.Uint64
	Crashes         atomic.Uint64
	// JoinTimeouts counts joins answered later (Pending) that were not
	// answered within JoinTimeout: the client got {"reason":"join timeout"}.
	JoinTimeouts  atomic.Uint64
	SlowConsumers atomic.Uint64

	// Refusals by limit (README "Limits"); each is counted once, on the
	// refusal path only.
	LimitChannels    atomic.Uint64 // joins refused: MaxChannels reached
	LimitRate        atomic.Uint64 // messages dropped: over the rate
	LimitRateAbuse   atomic.Uint64 // sockets closed (1008) for persistent excess
	LimitPayloadSize atomic.Uint64 // messages dropped: payload above MaxPayloadSize
	LimitTopicLength atomic.Uint64 // messages dropped: topic above MaxTopicLength
	LimitEventLength atomic.Uint64 // messages dropped: event above MaxEventLength
	LimitRefLength   atomic.Uint64 // messages dropped: join_ref or ref above MaxRefLength
	// InvalidPayloads counts client messages dropped because their text
	// payload was not valid UTF-8 (also counted in MalformedFrames).
	InvalidPayloads atomic.Uint64

	// History and recovery (PROTOCOL.md §12).
	RecoveriesComplete atomic.Uint64 // joins with "since" whose whole gap was replayed
	Replayed           atomic.Uint64 // broadcasts replayed to joining clients
	HistoryGaps        atomic.Uint64 // channels ended by a hole in their live broadcasts
	// ReplaysCut counts joins whose replay ended before it was whole
	// (its deadline passed, the history was trimmed or lost under it,
	// too many frames were held meanwhile): phx_error, and the client
	// rejoins from where it got to.
	ReplaysCut atomic.Uint64
	// recoveriesIncomplete counts the joins answered "recovered": false
	// with a reason, per reason (recoveryReasons); RecoveriesIncomplete.
	recoveriesIncomplete [len(recoveryReasons)]atomic.Uint64
}

// NewEndpoint checks cfg and returns an Endpoint.
func NewEndpoint(cfg EndpointConfig) (*Endpoint, error) {
	if cfg.Router == nil || cfg.PubSub == nil || cfg.Presence == nil {
		return nil, errors.New("channels: endpoint needs a Router, a PubSub and a presence Tracker")
	}
	// Zero takes the default; negative, which every check reads as
	// off, stays.
	for _, l := range []struct {
		v   *int
		def int
	}{
		{&cfg.MaxChannels, DefaultMaxChannels},
		{&cfg.MaxPayloadSize, DefaultMaxPayloadSize},
		{&cfg.MaxTopicLength, DefaultMaxTopicLength},
		{&cfg.MaxEventLength, DefaultMaxEventLength},
		{&cfg.MaxRefLength, DefaultMaxRefLength},
	} {
		if *l.v == 0 {
			*l.v = l.def
		}
	}
	if cfg.MaxMessagesPerSecond == 0 {
		cfg.MaxMessagesPerSecond = DefaultMaxMessagesPerSecond
	}
	if cfg.MaxOutbox == 0 {
		cfg.MaxOutbox = 1024
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.RateAbuseAfter <= 0 {
		cfg.RateAbuseAfter = DefaultRateAbuseAfter
	}
	if cfg.JoinTimeout <= 0 {
		cfg.JoinTimeout = DefaultJoinTimeout
	}
	e := &Endpoint{cfg: cfg, log: cfg.Logger, sockets: make(map[*Socket]struct{}), drained: make(chan struct{}), epoch: time.Now()}
	if ps, ok := cfg.PubSub.(pubsub.PrefixSubscriber); ok && ps.SubscribePrefix(SocketIDTopicPrefix, (*idRoute)(e)) == nil {
		e.byID = make(map[string]*Socket)
	}
	if r := cfg.MaxMessagesPerSecond; r > 0 {
		burst := cfg.Burst
		if burst <= 0 {
			burst = max(1, int(2*r))
		}
		e.rlEvery = max(1, int64(float64(time.Second)/r))
		e.rlTol = int64(burst-1) * e.rlEvery
		e.rlAbuseDs = uint32(max(1, cfg.RateAbuseAfter/(100*time.Millisecond)))
	}
	return e, nil
}

// Stats returns the endpoint's counters.
func (e *Endpoint) Stats() *Stats { return &e.stats }

// ErrShuttingDown refuses connections once Shutdown has begun.
var ErrShuttingDown = &ConnectError{Status: 503, Reason: "server shutting down"}

// Connect runs the SocketHandler for a connection request. Transports call
// it before they upgrade, so a refusal is an ordinary HTTP answer.
func (e *Runtime) Connect(ctx context.Context, info *ConnectInfo) (Identity, error) {
	e.mu.Lock()
	closing := e.closing
	e.mu.Unlock()
	if closing {
		return Identity{}, ErrShuttingDown
	}
	if e.cfg.Handler == nil {
		return Identity{}, nil
	}
	return e.cfg.Handler.Connect(ctx, info)
}

// Open starts the socket of an accepted connection. The transport then
// feeds it frames with HandleFrame and calls HandleClose exactly once when
// the connection has ended (both Runtime methods).
func (e *Runtime) Open(conn Conn, ser Serializer, id Identity) *Socket {
	s := &Socket{
		ep:     (*Endpoint)(e),
		conn:   conn,
		serp:   boxSerializer(ser),
		ident:  id,
		serial: e.serial.Add(1),
	}
	e.mu.Lock()
	if e.closing {
		e.mu.Unlock()
		conn.Close(CloseServiceRestart, "server shutting down")
		s.closed = true
		return s
	}
	e.sockets[s] = struct{}{}
	indexed := id.ID != "" && e.byID != nil
	if indexed {
		e.indexLocked(s)
	}
	e.mu.Unlock()
	e.stats.Sockets.Add(1)
	if id.ID != "" && !indexed {
		s.idSubscribed = true
		if err := e.cfg.PubSub.Subscribe(idTopic(id.ID), (*idSubscriber)(s)); err != nil {
			e.log.Warn("channels: subscribing socket id failed; disconnect by id will miss this socket", "id", id.ID, "err", err)
		}
	}
	return s
}

// SocketIDTopicPrefix namespaces the per-socket-id topics that carry
// disconnect requests across the cluster, as Phoenix's socket id topic
// does. The HTTP publish API refuses topics with this prefix. A clustered
// PubSub may carry them apart (pubsub/redis Options.PatternTopics): there
// is one per socket, and few messages.
const SocketIDTopicPrefix = "phx:socket:"

// ReservedTopic reports whether topic is internal to the server (socket
// ids, presence control): every topic that begins with "phx:". The HTTP
// publish API refuses them.
func ReservedTopic(topic string) bool {
	return strings.HasPrefix(topic, "phx:")
}

func idTopic(id string) string { return SocketIDTopicPrefix + id }

// Broadcast publishes event with payload to every subscriber of topic.
func (e *Endpoint) Broadcast(ctx context.Context, topic, event string, payload any) error {
	data, binary, err := EncodePayload(payload)
	if err != nil {
		return err
	}
	return e.cfg.PubSub.Publish(ctx, &pubsub.Message{Topic: topic, Event: event, Payload: data, Binary: binary})
}

// Disconnect closes every socket whose id is id, on every node the PubSub
// reaches, with close code 1001 so that clients reconnect (and
// authenticate again).
func (e *Endpoint) Disconnect(ctx context.Context, id string) error {
	return e.cfg.PubSub.Publish(ctx, &pubsub.Message{Topic: idTopic(id), Event: "disconnect", Payload: []byte("{}")})
}

// BeginShutdown makes Connect and Open refuse new sockets.
func (e *Runtime) BeginShutdown() {
	e.mu.Lock()
	e.beginShutdownLocked()
	e.mu.Unlock()
}

func (e *Runtime) beginShutdownLocked() {
	if !e.closing {
		e.closing = true
		if len(e.sockets) == 0 {
			close(e.drained)
		}
	}
}

// BeginDrain makes Connect and Open refuse new sockets, as BeginShutdown
// does, and returns the sockets open at that moment. No socket opens
// afterwards, so once the caller has closed all of them (CloseSocket, in
// batches if it likes) and they have ended, Drained is closed.
func (e *Runtime) BeginDrain() []*Socket {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.beginShutdownLocked()
	all := make([]*Socket, 0, len(e.sockets))
	for s := range e.sockets {
		all = append(all, s)
	}
	return all
}

// Drained is closed once shutdown has begun and every socket has ended.
func (e *Runtime) Drained() <-chan struct{} { return e.drained }

// CloseAll refuses new sockets and closes every open one with code and
// reason. Sockets end asynchronously; SocketCount tells when they are gone.
func (e *Runtime) CloseAll(code int, reason string) {
	for _, s := range e.BeginDrain() {
		s.conn.Close(code, reason)
	}
}

// SocketCount returns the number of open sockets.
func (e *Endpoint) SocketCount() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.sockets)
}

func (e *Endpoint) forget(s *Socket) {
	e.mu.Lock()
	if _, ok := e.sockets[s]; ok {
		delete(e.sockets, s)
		if s.ident.ID != "" && e.byID != nil {
			(*Runtime)(e).unindexLocked(s)
		}
		e.stats.Sockets.Add(-1)
		if e.closing && len(e.sockets) == 0 {
			close(e.drained)
		}
	}
	e.mu.Unlock()
}

// indexLocked adds s, which has an id, to byID. Called with e.mu held.
func (e *Runtime) indexLocked(s *Socket) {
	id := s.ident.ID
	if e.byID[id] == nil {
		e.byID[id] = s
		return
	}
	if e.moreByID == nil {
		e.moreByID = make(map[string][]*Socket)
	}
	e.moreByID[id] = append(e.moreByID[id], s)
}

// unindexLocked removes s from byID. Called with e.mu held.
func (e *Runtime) unindexLocked(s *Socket) {
	id := s.ident.ID
	more := e.moreByID[id]
	if e.byID[id] == s {
		if len(more) == 0 {
			delete(e.byID, id)
			return
		}
		last := len(more) - 1
		e.byID[id] = more[last]
		more[last] = nil // the array must not keep the socket alive
		more = more[:last]
	} else if i := slices.Index(more, s); i >= 0 {
		more = slices.Delete(more, i, i+1)
	}
	if len(more) == 0 {
		delete(e.moreByID, id)
	} else {
		e.moreByID[id] = more
	}
}

// idRoute is the endpoint in the role of the one listener on every socket
// id topic (pubsub.PrefixSubscriber): a disconnect request goes to the
// sockets byID finds. A conversion, not a separate allocation.
type idRoute Endpoint

func (r *idRoute) SubscriberID() string { return SocketIDTopicPrefix + "*#endpoint" }

func (r *idRoute) Deliver(m *pubsub.Message) {
	if m.Event != "disconnect" {
		return
	}
	e := (*Endpoint)(r)
	id := strings.TrimPrefix(m.Topic, SocketIDTopicPrefix)
	e.mu.Lock()
	var socks []*Socket
	if s := e.byID[id]; s != nil {
		socks = append(socks, s)
		socks = append(socks, e.moreByID[id]...)
	}
	e.mu.Unlock()
	for _, s := range socks {
		s.conn.Close(CloseGoingAway, "disconnected")
	}
}

// idSubscriber is a Socket in the role of the listener on its id topic
// for disconnect requests: a conversion, not a separate allocation per
// socket.
type idSubscriber Socket

// SubscriberID is built on each call: the registry asks only for
// broadcasts that exclude a sender, which the id topic never carries.
func (i *idSubscriber) SubscriberID() string { return (*Socket)(i).name() + "#id" }

func (i *idSubscriber) Deliver(m *pubsub.Message) {
	if m.Event == "disconnect" {
		i.conn.Close(CloseGoingAway, "disconnected")
	}
}
