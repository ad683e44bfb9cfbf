package wsclient

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/channelsd/channelsd/channels"
)

// DefaultVsn is the protocol version Dial asks for unless told otherwise,
// the one phoenix.js sends.
const DefaultVsn = "2.0.0"

// DefaultBuffer is the default capacity of a client's message queue.
const DefaultBuffer = 4096

// closeWriteTimeout bounds writing the close frame in Close and the echo
// of the server's close frame.
const closeWriteTimeout = time.Second

// maxErrorBody bounds the body of a refused handshake kept in a
// HandshakeError.
const maxErrorBody = 64 << 10

// Options configure Dial. The zero value speaks V2 with no connect params.
type Options struct {
	// Vsn is the vsn query parameter; "" means DefaultVsn. The client
	// speaks V1 for a version the server would treat as 1.0.x and V2
	// otherwise (an unsupported version is refused by the server anyway).
	Vsn string
	// OmitVsn sends no vsn parameter: the server then speaks V1, and so
	// does the client.
	OmitVsn bool
	// Params are connect params added to the URL's query.
	Params map[string]string
	// Header is sent with the upgrade request, e.g. Origin.
	Header http.Header
	// Protocols are offered in Sec-WebSocket-Protocol, in order.
	Protocols []string
	// Buffer is the capacity of the queue between the read goroutine and
	// Await; 0 means DefaultBuffer. When it is full the client stops
	// reading from the connection until a message is taken.
	Buffer int
	// NetDial, when set, opens the TCP connection (e.g. with a small
	// receive buffer, so that a client that stops reading stalls the
	// server soon); nil means a net.Dialer's.
	NetDial func(ctx context.Context, network, addr string) (net.Conn, error)
}

// Message is one frame received from the server, decoded.
//
// For a reply (Event channels.EventReply) Status holds the reply status
// and Payload the response, as the channels serializers decode it. Binary
// is set for a binary frame; JoinRef and Ref are the raw JSON refs
// (channels.StringRef("5") for the string "5").
type Message struct {
	channels.Message
	// Raw is the frame exactly as it arrived.
	Raw []byte
	// Err is set when the frame could not be decoded; then only Raw and
	// Binary are meaningful.
	Err error
}

// String shows the frame: text as it is, binary in hex.
func (m Message) String() string {
	if m.Binary {
		return "binary " + hex.EncodeToString(m.Raw)
	}
	return string(m.Raw)
}

// CloseStatus says how the connection ended.
type CloseStatus struct {
	// Received is set when the server sent a close frame.
	Received bool
	// Code is the close frame's status code: 1005 for a close frame
	// without one, 0 when no close frame arrived.
	Code int
	// Reason is the close frame's reason text.
	Reason string
	// Err is why reading stopped when no close frame arrived: a network
	// error, io.EOF, or ErrClientClosed after Close.
	Err error
}

func (s CloseStatus) String() string {
	if s.Received {
		return fmt.Sprintf("close frame %d %q", s.Code, s.Reason)
	}
	return fmt.Sprintf("no close frame (%v)", s.Err)
}

// Errors reported by a Client.
var (
	// ErrClosed is returned, wrapped with the CloseStatus, by Await and
	// friends once the connection has ended and no queued message matches.
	ErrClosed = errors.New("wsclient: connection closed")
	// ErrClientClosed is the CloseStatus.Err of a connection ended by
	// Close.
	ErrClientClosed = errors.New("wsclient: closed by the client")
)

// HandshakeError is returned by Dial when the server answered the upgrade
// request with a status other than 101. It unwraps to ws.StatusError.
type HandshakeError struct {
	Status int
	Header http.Header
	Body   []byte // at most 64 KiB of it
}

func (e *HandshakeError) Error() string {
	return fmt.Sprintf("wsclient: handshake refused with HTTP %d: %q", e.Status, e.Body)
}

// Unwrap returns the ws.StatusError of the refusal.
func (e *HandshakeError) Unwrap() error { return ws.StatusError(e.Status) }

// Client is one WebSocket connection speaking the Phoenix protocol. Its
// methods are safe for concurrent use, except that the receiving methods
// (Await, AwaitReply, Next, AwaitClose, Join, Queued) take turns: one
// runs at a time.
type Client struct {
	conn     net.Conn
	ser      channels.Serializer
	protocol string
	refs     atomic.Uint64

	wmu sync.Mutex // serializes frame writes

	jmu      sync.Mutex
	joinRefs map[string]string

	msgs      chan Message  // read goroutine → receivers; closed when it ends
	closing   chan struct{} // closed by Close
	closeOnce sync.Once
	done      chan struct{} // closed when the read goroutine has ended
	status    CloseStatus   // written before msgs is closed

	inbox *Inbox // the receiving side, over msgs
}

// Dial opens a WebSocket to rawURL (e.g. "ws://127.0.0.1:4000/socket/websocket"),
// adding opts.Params and the vsn parameter to its query. A refused handshake
// returns a *HandshakeError.
func Dial(ctx context.Context, rawURL string, opts Options) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("wsclient: %w", err)
	}
	q := u.Query()
	for k, v := range opts.Params {
		q.Set(k, v)
	}
	ser := channels.V1
	if !opts.OmitVsn {
		vsn := opts.Vsn
		if vsn == "" {
			vsn = DefaultVsn
		}
		q.Set("vsn", vsn)
		if ser, err = channels.Negotiate(vsn); err != nil {
			ser = channels.V2
		}
	}
	u.RawQuery = q.Encode()

	var refused *HandshakeError
	d := ws.Dialer{
		NetDial:   opts.NetDial,
		Protocols: opts.Protocols,
		OnStatusError: func(status int, _ []byte, resp io.Reader) {
			refused = &HandshakeError{Status: status}
			r, err := http.ReadResponse(bufio.NewReader(resp), nil)
			if err != nil {
				return
			}
			defer r.Body.Close()
			refused.Header = r.Header
			refused.Body, _ = io.ReadAll(io.LimitReader(r.Body, maxErrorBody))
		},
	}
	if len(opts.Header) > 0 {
		d.Header = ws.HandshakeHeaderHTTP(opts.Header)
	}
	conn, br, hs, err := d.Dial(ctx, u.String())
	if err != nil {
		var status ws.StatusError
		if refused != nil && errors.As(err, &status) {
			return nil, refused
		}
		return nil, fmt.Errorf("wsclient: dial %s: %w", u.Redacted(), err)
	}
	buffer := opts.Buffer
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	c := &Client{
		conn:     conn,
		ser:      ser,
		protocol: hs.Protocol,
		joinRefs: make(map[string]string),
		msgs:     make(chan Message, buffer),
		closing:  make(chan struct{}),
		done:     make(chan struct{}),
	}
	c.inbox = NewInbox(c.msgs)
	var r io.Reader = conn
	if br != nil {
		// The server wrote frames right after its handshake response;
		// br holds them and reads the rest from conn.
		r = br
	}
	go c.readLoop(r)
	return c, nil
}

// Serializer is the serializer the client speaks (channels.V1 or V2).
func (c *Client) Serializer() channels.Serializer { return c.ser }

// Protocol is the subprotocol the server selected ("" if none).
func (c *Client) Protocol() string { return c.protocol }

// NextRef returns a fresh ref: decimal strings from one counter starting
// at "1", as phoenix.js makes them.
func (c *Client) NextRef() string { return strconv.FormatUint(c.refs.Add(1), 10) }

// JoinRef returns the join_ref of the last Join of topic ("" if none).
func (c *Client) JoinRef(topic string) string {
	c.jmu.Lock()
	defer c.jmu.Unlock()
	return c.joinRefs[topic]
}

// Send encodes m with the client's serializer and writes it: a V2 text
// frame, a V2 binary push (kind 0, EncodeClientBinary) when m.Binary is
// set, or a V1 object carrying join_ref when it is not null.
func (c *Client) Send(m channels.Message) error {
	var data []byte
	op := ws.OpText
	switch {
	case c.ser == channels.V1:
		if m.Binary {
			return channels.ErrBinaryUnsupported
		}
		var err error
		if data, err = encodeV1(&m); err != nil {
			return err
		}
	case m.Binary:
		var err error
		if data, err = EncodeClientBinary(&m); err != nil {
			return err
		}
		op = ws.OpBinary
	default:
		f, err := c.ser.Encode(nil, &m)
		if err != nil {
			return err
		}
		data = f.Data
	}
	return c.write(op, data)
}

// SendRaw writes data as one text frame, or one binary frame when binary
// is set, whatever it holds.
func (c *Client) SendRaw(data []byte, binary bool) error {
	op := ws.OpText
	if binary {
		op = ws.OpBinary
	}
	return c.write(op, data)
}

// Join sends phx_join for topic with params (see Push for payload types)
// and a fresh ref as both join_ref and ref, then waits for the reply. The
// join_ref is kept for later pushes to topic whatever the reply says.
func (c *Client) Join(ctx context.Context, topic string, params any) (Message, error) {
	ref, err := c.sendJoin(topic, params)
	if err != nil {
		return Message{}, err
	}
	return c.AwaitReply(ctx, ref)
}

// sendJoin sends phx_join for topic, keeps its join_ref and returns it,
// without waiting for the reply (Reconnecting's rejoins take the reply
// from its read loop).
func (c *Client) sendJoin(topic string, params any) (string, error) {
	ref := c.NextRef()
	m, err := JoinMessage(topic, ref, params)
	if err != nil {
		return "", err
	}
	c.jmu.Lock()
	c.joinRefs[topic] = ref
	c.jmu.Unlock()
	return ref, c.Send(m)
}

// Push sends event with payload to topic, with the topic's join_ref (null
// if it was never joined) and a fresh ref, which it returns. payload is
// nil for {}, json.RawMessage or []byte for JSON text, channels.Binary for
// raw bytes (a binary frame), or any value to marshal as JSON.
func (c *Client) Push(topic, event string, payload any) (string, error) {
	ref := c.NextRef()
	m, err := PushMessage(topic, event, c.JoinRef(topic), ref, payload)
	if err != nil {
		return "", err
	}
	return ref, c.Send(m)
}

// JoinMessage is the phx_join of topic with ref as its join_ref and ref,
// and params as its payload (see Push for payload types): what Join sends,
// for clients of other transports.
func JoinMessage(topic, ref string, params any) (channels.Message, error) {
	data, binary, err := encodePayload(params)
	if err != nil {
		return channels.Message{}, err
	}
	r := channels.StringRef(ref)
	return channels.Message{JoinRef: r, Ref: r, Topic: topic, Event: channels.EventJoin, Payload: data, Binary: binary}, nil
}

// PushMessage is a push of event to topic with joinRef ("" for null), ref
// and payload (see Push): what Push sends, for clients of other transports.
func PushMessage(topic, event, joinRef, ref string, payload any) (channels.Message, error) {
	data, binary, err := encodePayload(payload)
	if err != nil {
		return channels.Message{}, err
	}
	var jr channels.Ref
	if joinRef != "" {
		jr = channels.StringRef(joinRef)
	}
	return channels.Message{JoinRef: jr, Ref: channels.StringRef(ref), Topic: topic, Event: event, Payload: data, Binary: binary}, nil
}

// Leave sends phx_leave for topic and returns its ref.
func (c *Client) Leave(topic string) (string, error) {
	return c.Push(topic, channels.EventLeave, nil)
}

// Heartbeat sends a heartbeat on the phoenix topic and returns its ref.
func (c *Client) Heartbeat() (string, error) {
	ref := c.NextRef()
	err := c.Send(channels.Message{Ref: channels.StringRef(ref), Topic: channels.TopicPhoenix, Event: channels.EventHeartbeat, Payload: []byte("{}")})
	return ref, err
}

// Await returns the first received message for which match is true,
// waiting until one arrives, ctx ends or the connection ends (ErrClosed).
// Messages it passes over stay queued, in order, for later calls.
func (c *Client) Await(ctx context.Context, match func(Message) bool) (Message, error) {
	m, err := c.inbox.Await(ctx, match)
	switch {
	case errors.Is(err, ErrInboxClosed):
		<-c.done
		return Message{}, fmt.Errorf("%w: %s", ErrClosed, c.status)
	case err != nil:
		return Message{}, fmt.Errorf("wsclient: awaiting a message: %w", err)
	}
	return m, nil
}

// Next returns the oldest message not yet taken.
func (c *Client) Next(ctx context.Context) (Message, error) {
	return c.Await(ctx, func(Message) bool { return true })
}

// AwaitReply returns the phx_reply whose ref is the string ref.
func (c *Client) AwaitReply(ctx context.Context, ref string) (Message, error) {
	return c.Await(ctx, IsReply(ref))
}

// Queued returns a copy of the messages received and not yet taken,
// without waiting.
func (c *Client) Queued() []Message { return c.inbox.Queued() }

// AwaitClose waits until the connection has ended and says how. Messages
// received meanwhile stay queued for Await.
func (c *Client) AwaitClose(ctx context.Context) (CloseStatus, error) {
	if err := c.inbox.AwaitClosed(ctx); err != nil {
		return CloseStatus{}, fmt.Errorf("wsclient: awaiting the close: %w", err)
	}
	<-c.done
	return c.status, nil
}

// Done is closed when the connection has ended and every message has been
// queued. A full queue delays it until messages are taken.
func (c *Client) Done() <-chan struct{} { return c.done }

// Status says how the connection ended; it is meaningful once Done is
// closed.
func (c *Client) Status() CloseStatus {
	select {
	case <-c.done:
		return c.status
	default:
		return CloseStatus{}
	}
}

// Close sends a close frame (1000) if the connection is still open, closes
// it and waits for the read goroutine to end. It is safe to call more than
// once.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		close(c.closing)
		select {
		case <-c.done:
		default:
			// The deadline also frees a writer blocked on a peer that
			// does not read, so that the lock below is released.
			_ = c.conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
			c.wmu.Lock()
			_ = wsutil.WriteClientMessage(c.conn, ws.OpClose, ws.NewCloseFrameBody(ws.StatusNormalClosure, ""))
			c.wmu.Unlock()
		}
		_ = c.conn.Close()
	})
	<-c.done
	return nil
}

func (c *Client) write(op ws.OpCode, data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := wsutil.WriteClientMessage(c.conn, op, data); err != nil {
		return fmt.Errorf("wsclient: write: %w", err)
	}
	return nil
}

// readLoop reads frames until the connection ends, answering pings and
// the server's close frame, and queues the decoded data frames.
func (c *Client) readLoop(r io.Reader) {
	defer close(c.done)
	defer close(c.msgs)
	defer c.conn.Close()
	for {
		frames, err := wsutil.ReadMessage(r, ws.StateClientSide, nil)
		for _, f := range frames {
			if !c.handle(f) {
				return
			}
		}
		if err != nil {
			select {
			case <-c.closing:
				err = ErrClientClosed
			default:
			}
			c.status = CloseStatus{Err: err}
			return
		}
	}
}

// handle deals with one frame and reports whether to read on.
func (c *Client) handle(f wsutil.Message) bool {
	switch f.OpCode {
	case ws.OpPing:
		_ = c.write(ws.OpPong, f.Payload)
		return true
	case ws.OpPong:
		return true
	case ws.OpClose:
		code, reason := ws.ParseCloseFrameData(f.Payload)
		st := CloseStatus{Received: true, Code: int(code), Reason: reason}
		var echo []byte
		if len(f.Payload) >= 2 {
			echo = ws.NewCloseFrameBody(code, "")
		} else {
			st.Code = int(ws.StatusNoStatusRcvd)
		}
		_ = c.conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
		_ = c.write(ws.OpClose, echo)
		c.status = st
		return false
	case ws.OpText, ws.OpBinary:
		m := c.decode(f.Payload, f.OpCode == ws.OpBinary)
		select {
		case c.msgs <- m:
			return true
		case <-c.closing:
			c.status = CloseStatus{Err: ErrClientClosed}
			return false
		}
	}
	return true
}

func (c *Client) decode(data []byte, binary bool) Message {
	return Decode(c.ser, data, binary)
}

// Decode decodes one frame the server sent, text or binary, with ser (V1
// or V2), as the read goroutine does; an undecodable frame gives a Message
// with Err set. Other clients of the protocol (transport/lpclient) share
// it.
func Decode(ser channels.Serializer, data []byte, binary bool) Message {
	var (
		m   channels.Message
		err error
	)
	switch {
	case binary && ser != channels.V1:
		m, err = channels.DecodeServerBinary(data)
	case binary:
		err = errors.New("wsclient: binary frame on a version 1 connection")
	default:
		m, err = ser.Decode(data, false)
	}
	if err != nil {
		return Message{Message: channels.Message{Binary: binary}, Raw: data, Err: err}
	}
	return Message{Message: m, Raw: data}
}

// IsEvent matches messages of event on topic.
func IsEvent(topic, event string) func(Message) bool {
	return func(m Message) bool { return m.Err == nil && m.Topic == topic && m.Event == event }
}

// IsReply matches the phx_reply whose ref is the string ref.
func IsReply(ref string) func(Message) bool {
	r := channels.StringRef(ref)
	return func(m Message) bool { return m.Err == nil && m.Event == channels.EventReply && m.Ref == r }
}

// EncodeClientBinary encodes m as a client's binary push (PROTOCOL.md
// §2.4, kind 0): 0x00, the lengths of join_ref, ref, topic and event, those
// fields, then the payload. Refs travel as their text, null as length 0.
// m.Payload is sent as is whether or not m.Binary is set. A field longer
// than 255 bytes fails with channels.ErrFieldTooLong.
func EncodeClientBinary(m *channels.Message) ([]byte, error) {
	jr, ref := m.JoinRef.Text(), m.Ref.Text()
	if len(jr) > 255 || len(ref) > 255 || len(m.Topic) > 255 || len(m.Event) > 255 {
		return nil, channels.ErrFieldTooLong
	}
	out := make([]byte, 0, 5+len(jr)+len(ref)+len(m.Topic)+len(m.Event)+len(m.Payload))
	out = append(out, 0, byte(len(jr)), byte(len(ref)), byte(len(m.Topic)), byte(len(m.Event)))
	out = append(out, jr...)
	out = append(out, ref...)
	out = append(out, m.Topic...)
	out = append(out, m.Event...)
	return append(out, m.Payload...), nil
}

// v1Frame is a client's V1 message (PROTOCOL.md §2.2).
type v1Frame struct {
	Topic   string          `json:"topic"`
	Event   string          `json:"event"`
	Payload json.RawMessage `json:"payload"`
	Ref     json.RawMessage `json:"ref"`
	JoinRef json.RawMessage `json:"join_ref,omitempty"`
}

func encodeV1(m *channels.Message) ([]byte, error) {
	f := v1Frame{Topic: m.Topic, Event: m.Event, Payload: m.Payload, Ref: refJSON(m.Ref)}
	if len(f.Payload) == 0 {
		f.Payload = json.RawMessage("{}")
	}
	if !m.JoinRef.IsNull() {
		f.JoinRef = refJSON(m.JoinRef)
	}
	data, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("wsclient: encoding a version 1 message: %w", err)
	}
	return data, nil
}

func refJSON(r channels.Ref) json.RawMessage {
	if r.IsNull() {
		return json.RawMessage("null")
	}
	return json.RawMessage(r)
}

// encodePayload turns a payload argument into wire bytes; see Push. A
// []byte is raw JSON here (tests write payloads as literals); everything
// else follows channels.EncodePayload.
func encodePayload(v any) ([]byte, bool, error) {
	if p, ok := v.([]byte); ok {
		v = json.RawMessage(p)
	}
	data, binary, err := channels.EncodePayload(v)
	if err != nil {
		return nil, false, fmt.Errorf("wsclient: encoding a payload: %w", err)
	}
	return data, binary, nil
}
