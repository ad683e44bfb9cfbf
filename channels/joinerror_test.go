package channels

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/channelsd/channelsd/test/logtest"
)

// logBuffer is the shared readable log destination (test/logtest).
type logBuffer = logtest.Buffer

// failingJoin refuses every join with err.
type failingJoin struct{ err error }

func (f failingJoin) Join(*ChannelSocket, Payload) (any, error) { return nil, f.err }
func (failingJoin) HandleIn(*ChannelSocket, In) Result          { return NoReply() }
func (failingJoin) Terminate(*ChannelSocket, Reason)            {}

// responder has a Response method but was not made by this package: its
// content is the application's, not a refusal meant for the client.
type responder struct{}

func (responder) Error() string { return "db: password=hunter2" }
func (responder) Response() any { return map[string]string{"reason": "db: password=hunter2"} }

// The secret every error below carries and no frame may.
const secret = "hunter2"

// Only a *JoinError, wrapped or not, reaches the client; every other
// error from Join is logged and answered as a crashed join.
func TestJoinErrorReachesClientOnlyWhenMadeForIt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    error
		reply  string // the error reply's response
		logged bool   // the error is logged with the topic
	}{
		{"plain error", errors.New("db: password=" + secret + " host=10.0.0.5"), `{"reason":"join crashed"}`, true},
		{"wrapped plain error", fmt.Errorf("room: %w", errors.New("dial tcp: password="+secret)), `{"reason":"join crashed"}`, true},
		{"foreign Response method", responder{}, `{"reason":"join crashed"}`, true},
		{"Refuse", Refuse("banned"), `{"reason":"banned"}`, false},
		{"wrapped Refuse", fmt.Errorf("room: lookup %s: %w", secret, Refuse("banned")), `{"reason":"banned"}`, false},
		{"twice wrapped JoinError", fmt.Errorf("a: %w", fmt.Errorf("b: %w", &JoinError{Reply: map[string]any{"reason": "full", "retry": 5}})), `{"reason":"full","retry":5}`, false},
		{"JoinError that cannot be encoded", &JoinError{Reply: json.RawMessage(`{"x":` + secret)}, `{"reason":"join refused"}`, true},
	} {
		for _, ser := range []Serializer{V1, V2} {
			t.Run(tc.name+"/"+ser.Vsn(), func(t *testing.T) {
				var log logBuffer
				r := &Router{}
				r.Handle("room:*", func(string) Channel { return failingJoin{tc.err} })
				e := newTestEnv(t, EndpointConfig{Router: r, Logger: slog.New(slog.NewTextHandler(&log, nil))})
				s, c := e.open(t, ser)
				join := `["1","1","room:secret","phx_join",{}]`
				if ser == V1 {
					join = `{"topic":"room:secret","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}`
				}
				s.handleFrame([]byte(join), false)
				s.handleFrame([]byte(strings.Replace(strings.Replace(join, "phx_join", "heartbeat", 1), "room:secret", "phoenix", 1)), false)
				frames := c.take()
				for _, f := range frames {
					if bytes.Contains(f.Data, []byte(secret)) {
						t.Errorf("frame %q carries the error's text", f.Data)
					}
				}
				got := checkTextFrames(t, ser, frames)
				if len(got) != 2 || got[0].Topic != "room:secret" || got[0].Status != "error" || !sameJSONText(got[0].Payload, tc.reply) {
					t.Fatalf("frames %+v, want the error reply %s then the heartbeat's", got, tc.reply)
				}
				if n := e.ep.Stats().Channels.Load(); n != 0 {
					t.Errorf("%d channels joined after a refusal", n)
				}
				logged := log.String()
				if tc.logged != strings.Contains(logged, "topic=room:secret") {
					t.Errorf("logged = %v, want %v; log:\n%s", !tc.logged, tc.logged, logged)
				}
				if tc.logged && tc.reply == `{"reason":"join crashed"}` && !strings.Contains(logged, secret) {
					t.Errorf("the error is not in the log:\n%s", logged)
				}
			})
		}
	}
}

func sameJSONText(a []byte, b string) bool {
	var va, vb any
	return json.Unmarshal(a, &va) == nil && json.Unmarshal([]byte(b), &vb) == nil && fmt.Sprint(va) == fmt.Sprint(vb)
}
