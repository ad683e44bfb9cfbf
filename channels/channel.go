package channels

import (
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// Channel is the behaviour of one topic on one socket, Phoenix's Channel
// in Go. The runtime calls a Channel's methods one at a time per socket
// (never two callbacks of the same socket at once, HandleOut included),
// so a Channel needs no locks for state it keeps in its own fields.
//
// Callbacks run on the socket's read path: a slow callback delays the
// socket's next message. Do slow work on a goroutine and answer with
// ChannelSocket.Reply when it is done, or, for a join, return Pending and
// answer with ChannelSocket.CompleteJoin.
//
// The optional behaviours, AfterJoiner, Interceptor and Terminator, are
// found by a type assertion when the channel is created: a method whose name or
// signature is off compiles and silently never runs. Let the compiler
// check it:
//
//	var _ channels.Interceptor = (*Room)(nil)
type Channel interface {
	// Join accepts or refuses a join. Its contract:
	//   - a nil error accepts: the ok reply carries the response (nil
	//     means {});
	//   - an error that is, or wraps (errors.As), a *JoinError (Refuse)
	//     refuses with an error reply carrying its Response();
	//   - any other error is never shown to the client: it is logged with
	//     the topic and the socket, and the error reply is
	//     {"reason":"join crashed"}, as for a panic (PROTOCOL.md §6.1);
	//   - pushes made during Join are sent after the reply, as are
	//     broadcasts that arrive meanwhile;
	//   - the response Pending() answers later: ChannelSocket.CompleteJoin
	//     takes the response and error, from any goroutine, and the socket
	//     reads on meanwhile.
	Join(s *ChannelSocket, params Payload) (response any, err error)
	// HandleIn handles an event pushed by the client. Only the Result's
	// reply reaches the client; the error of StopWithError is logged, and
	// the client's phx_error says {"reason":"channel_crash"}.
	HandleIn(s *ChannelSocket, in In) Result
}

// Terminator is implemented by a Channel that wants to act when it ends,
// Phoenix's optional terminate/2. A channel without it is cleaned up all
// the same. Check the method with var _ channels.Terminator = (*Room)(nil).
type Terminator interface {
	// Terminate is called once when the channel ends, for any Reason,
	// under the socket's callback lock. The channel's subscriptions and
	// presences are removed right after it, whether or not it returns
	// normally (a panic is logged).
	Terminate(s *ChannelSocket, reason Reason)
}

// AfterJoiner is implemented by a Channel that wants to act once the join
// reply is queued, Phoenix's send(self(), :after_join) idiom: pushing
// presence_state, tracking presence. The reply and what AfterJoin pushes
// leave together, in one write (HoldConn): an AfterJoin that runs longer
// than a few milliseconds lets the reply go ahead. Check the method with
// var _ channels.AfterJoiner = (*Room)(nil).
type AfterJoiner interface {
	// AfterJoin runs right after a successful Join, under the same
	// callback lock, before the socket's next message is handled.
	AfterJoin(s *ChannelSocket)
}

// Interceptor is implemented by a Channel that rewrites some broadcasts per
// subscriber (Phoenix's intercept and handle_out). Broadcasts of the listed
// events reach the socket only through HandleOut, which may Push them as
// they are, changed, or not at all. Interception costs one callback per
// subscriber per message instead of one shared encoding: use it sparingly.
// Check the methods with var _ channels.Interceptor = (*Room)(nil).
//
// Order: an intercepted broadcast is queued for HandleOut while the other
// events go straight to the connection, so what HandleOut pushes can
// reach the client after broadcasts of the topic published later. Events
// that must stay in order with each other should be all intercepted or
// all not.
type Interceptor interface {
	// Intercepts lists the events that go through HandleOut. It is read
	// once per join, when the channel value is created and before Join
	// runs; the list holds for the whole join.
	Intercepts() []string
	// HandleOut runs once per intercepted broadcast, in the order the
	// socket received them. It runs on a goroutine of its own, not the
	// broadcaster's, so that no publisher ever waits for a channel, but
	// under the socket's callback lock: never at the same time as
	// another callback of the socket (Join, HandleIn, Terminate, other
	// HandleOuts), so it may use the channel's fields as they do. A
	// slow HandleOut holds up the socket's incoming messages too, and
	// the socket is closed as a slow consumer when the broadcasts
	// waiting for it pass EndpointConfig.MaxOutbox. After the channel has
	// ended, waiting broadcasts are dropped. A panic ends the channel as
	// a crash (phx_error).
	HandleOut(s *ChannelSocket, out Out)
}

// Payload is a message body as it travelled: raw JSON, or raw bytes when
// Binary is set (a V2 binary frame).
type Payload struct {
	Data   []byte
	Binary bool
}

// Decode unmarshals a JSON payload into v.
func (p Payload) Decode(v any) error {
	if p.Binary {
		return errors.New("channels: cannot decode a binary payload as JSON")
	}
	if len(p.Data) == 0 {
		return nil
	}
	return json.Unmarshal(p.Data, v)
}

// In is a client message for a joined channel.
type In struct {
	Event   string
	Payload Payload
	// Ref is the client's ref; pass it to ChannelSocket.Reply to answer
	// later, from any goroutine.
	Ref Ref
}

// Out is an intercepted broadcast, handed to HandleOut.
type Out struct {
	Event   string
	Payload Payload
}

// Reason says why a channel ended.
type Reason string

// Reasons passed to Terminate.
const (
	ReasonLeft          Reason = "left"           // the client sent phx_leave
	ReasonClosed        Reason = "closed"         // the connection ended
	ReasonDuplicateJoin Reason = "duplicate_join" // the client joined the topic again
	ReasonStop          Reason = "stop"           // a callback returned Stop
	ReasonError         Reason = "error"          // a callback returned StopWithError
	ReasonCrash         Reason = "crash"          // a callback panicked
	// ReasonHistoryGap: the topic's broadcasts had a hole (PROTOCOL.md
	// §12); the client was sent phx_error and rejoins to recover.
	ReasonHistoryGap Reason = "history_gap"
	// ReasonJoinTimeout: a join answered later (Pending) was not answered
	// within EndpointConfig.JoinTimeout; the client got an error reply.
	ReasonJoinTimeout Reason = "join_timeout"
)

// Binary marks a payload as raw bytes: pushed, replied or broadcast as a
// V2 binary frame (PROTOCOL.md §2.4).
type Binary []byte

// Result is what HandleIn returns: a reply or none, and whether the channel
// stops. The zero Result sends no reply and keeps the channel.
type Result struct {
	reply    bool
	status   string
	response any
	stop     bool
	stopErr  error
}

// NoReply sends nothing; the client's push times out unless a Reply
// follows later.
func NoReply() Result { return Result{} }

// The reply statuses phoenix.js clients listen for with receive("ok")
// and receive("error"). A status is any string (§2.5); naming these
// instead of writing them lets the compiler catch a misspelling, which a
// client would otherwise never receive.
const (
	StatusOK    = "ok"
	StatusError = "error"
)

// Reply answers the client's push with status and response. It only
// builds the Result HandleIn returns, Phoenix's {:reply, {status,
// response}, socket}; ChannelSocket.Reply sends a reply itself.
func Reply(status string, response any) Result {
	return Result{reply: true, status: status, response: response}
}

// Ok replies with status ok.
func Ok(response any) Result { return Reply(StatusOK, response) }

// ErrorReply replies with status error.
func ErrorReply(response any) Result { return Reply(StatusError, response) }

// ErrorReason replies with status error and {"reason": reason}, the
// usual refusal of a push (Phoenix's {:reply, {:error, %{reason: ...}},
// socket}); Refuse is its counterpart for Join.
func ErrorReason(reason string) Result {
	return ErrorReply(map[string]string{"reason": reason})
}

// Stop ends the channel normally without a reply: the client gets
// phx_close and does not rejoin.
func Stop() Result { return Result{stop: true} }

// StopWithError ends the channel as failed: the client gets phx_error and
// rejoins with backoff. err is logged.
func StopWithError(err error) Result {
	if err == nil {
		err = errors.New("channels: stopped with error")
	}
	return Result{stop: true, stopErr: err}
}

// AndStop sends r's reply, then stops the channel normally.
func (r Result) AndStop() Result {
	r.stop = true
	return r
}

// JoinError refuses a join with a specific response object. It is the
// only error whose content reaches the client from Join (Channel); wrap
// it freely, fmt.Errorf("room: %w", channels.Refuse("banned")) still
// refuses with {"reason":"banned"}.
type JoinError struct {
	Reply any
}

func (e *JoinError) Error() string { return "channels: join refused" }

// Response is sent as the refused join's reply.
func (e *JoinError) Response() any { return e.Reply }

// Refuse returns an error that refuses a join with {"reason": reason}.
func Refuse(reason string) error {
	return &JoinError{Reply: map[string]string{"reason": reason}}
}

// EncodePayload turns what a channel passes to Push, Reply or Broadcast
// into wire bytes: json.RawMessage and Binary pass through untouched (an
// empty RawMessage is {}), a Payload keeps its form, nil is {}, anything
// else is marshalled as JSON. Clients built on this package (the test
// client, the load generator) use the same rules.
//
// A JSON payload must be one JSON value in valid UTF-8 (ValidatePayload),
// else the error wraps ErrInvalidPayload: json.RawMessage is not checked
// by encoding/json, even inside a marshalled value, and neither is UTF-8
// inside one, so a payload relayed from elsewhere could otherwise carry
// bytes that make every browser subscriber drop its connection.
func EncodePayload(v any) ([]byte, bool, error) {
	switch p := v.(type) {
	case nil:
		return []byte("{}"), false, nil
	case json.RawMessage:
		if len(p) == 0 {
			return []byte("{}"), false, nil
		}
		if err := ValidatePayload(p); err != nil {
			return nil, false, err
		}
		return p, false, nil
	case Binary:
		return p, true, nil
	case Payload:
		if p.Binary {
			return p.Data, true, nil
		}
		if err := ValidatePayload(p.Data); err != nil {
			return nil, false, err
		}
		return p.Data, false, nil
	}
	b, err := json.Marshal(v)
	if err == nil && !utf8.Valid(b) {
		// Marshal checks the syntax of embedded RawMessages, not UTF-8.
		return nil, false, errPayloadNotUTF8
	}
	return b, false, err
}
