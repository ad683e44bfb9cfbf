package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/node"
	"github.com/channelsd/channelsd/test/logtest"
	"github.com/channelsd/channelsd/transport"
	"github.com/channelsd/channelsd/transport/wsclient"
)

// Items 2 and 9, errors not made for the client (PROTOCOL.md §5.1, §6.1):
// only channels.Refuse (JoinError) and channels.ConnectError, wrapped or
// not, reach the client; any other error from Join or connect is logged
// and answered with a fixed reason. Every error below carries secret,
// which no frame and no HTTP body may.
const secret = "hunter2"

// Topics of leakyChannel: one fails with a database error, one with a
// Refuse wrapped in an error that itself names the secret.
const (
	leakDB     = "leak:db"
	leakRefuse = "leak:refuse"
)

type leakyChannel struct{}

func (leakyChannel) Join(s *channels.ChannelSocket, _ channels.Payload) (any, error) {
	if s.Topic() == leakRefuse {
		return nil, fmt.Errorf("room lookup (password=%s): %w", secret, channels.Refuse("banned"))
	}
	return nil, errors.New("db: dial postgres://app:" + secret + "@10.0.0.5:5432: connection refused")
}

func (leakyChannel) HandleIn(*channels.ChannelSocket, channels.In) channels.Result {
	return channels.NoReply()
}

func (leakyChannel) Terminate(*channels.ChannelSocket, channels.Reason) {}

// leakyConnect refuses token=db with a database error and token=wrapped
// with a ConnectError wrapped in an error naming the secret.
var leakyConnect = channels.SocketHandlerFunc(func(_ context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
	switch info.Params["token"] {
	case "db":
		return channels.Identity{}, fmt.Errorf("app: loading user: %w", errors.New("db: password="+secret))
	case "wrapped":
		return channels.Identity{}, fmt.Errorf("app: user %s: %w", secret, &channels.ConnectError{Reason: "who are you"})
	}
	return channels.Identity{}, nil
})

// logBuffer is the shared readable log destination (test/logtest).
type logBuffer = logtest.Buffer

func withLeaks(log *logBuffer) func(*node.Config) {
	return func(c *node.Config) {
		c.Logger = log.Logger()
		c.SocketHandler = leakyConnect
		c.Router.Handle("leak:*", func(string) channels.Channel { return leakyChannel{} })
	}
}

// The log must hold the error the client did not get, at WARN, with where
// it came from (the topic, or the transport).
func expectLogged(t *testing.T, log *logBuffer, where string) {
	t.Helper()
	for _, line := range strings.Split(log.String(), "\n") {
		if strings.Contains(line, "level=WARN") && strings.Contains(line, secret) && strings.Contains(line, where) {
			return
		}
	}
	t.Errorf("no WARN line with %q and the error; log:\n%s", where, log.String())
}

func TestItem09_JoinErrorNotForClient(t *testing.T) {
	t.Parallel()
	var log logBuffer
	tn := startNode(t, withLeaks(&log))
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := tn.dial(t, v)
			c.send("3", "3", leakDB, "phx_join", `{}`)
			c.send("4", "4", leakRefuse, "phx_join", `{}`)
			// Every frame up to the reply of a heartbeat sent last: the
			// server answers a socket's messages in order.
			ref, err := c.Heartbeat()
			if err != nil {
				t.Fatal(err)
			}
			var frames []wsclient.Message
			for {
				m := c.next()
				if bytes.Contains(m.Raw, []byte(secret)) {
					t.Errorf("frame carries the error's text: %s", m)
				}
				if wsclient.IsReply(ref)(m) {
					break
				}
				frames = append(frames, m)
			}
			want := []string{
				v.want("3", "3", leakDB, "phx_reply", reply("error", `{"reason":"join crashed"}`)),
				v.want("4", "4", leakRefuse, "phx_reply", reply("error", `{"reason":"banned"}`)),
			}
			if len(frames) != len(want) {
				t.Fatalf("frames %v, want %q", frames, want)
			}
			for i := range want {
				if !sameJSON(frames[i].Raw, []byte(want[i])) {
					t.Errorf("frame %d: %s, want %s", i, frames[i], want[i])
				}
			}
		})
	}
	expectLogged(t, &log, "topic="+leakDB)
}

func TestLongPoll_Item09_JoinErrorNotForClient(t *testing.T) {
	t.Parallel()
	var log logBuffer
	n := startLPNode(t, transport.LongPollConfig{Logger: log.Logger()}, withLeaks(&log))
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			c := n.lpOpen(t, v)
			c.send(
				string(v.frame("3", "3", leakDB, "phx_join", `{}`)),
				string(v.frame("4", "4", leakRefuse, "phx_join", `{}`)),
				string(v.frame(nil, "5", "phoenix", "heartbeat", `{}`)),
			)
			last := c.await(v.want(nil, "5", "phoenix", "phx_reply", reply("ok", `{}`)))
			want := []string{
				v.want("3", "3", leakDB, "phx_reply", reply("error", `{"reason":"join crashed"}`)),
				v.want("4", "4", leakRefuse, "phx_reply", reply("error", `{"reason":"banned"}`)),
			}
			got := c.got[:last]
			if len(got) != len(want) {
				t.Fatalf("messages %q, want %q", got, want)
			}
			for i := range want {
				if !sameJSON([]byte(got[i]), []byte(want[i])) {
					t.Errorf("message %d: %s, want %s", i, got[i], want[i])
				}
			}
			for _, m := range c.got {
				if strings.Contains(m, secret) {
					t.Errorf("message carries the error's text: %s", m)
				}
			}
		})
	}
	expectLogged(t, &log, "topic="+leakDB)
}

// Item 2 over WebSocket: 403 with an empty body for an error that is not a
// ConnectError; a wrapped ConnectError keeps its reason.
func TestItem02_ConnectErrorNotForClient(t *testing.T) {
	t.Parallel()
	var log logBuffer
	tn := startNode(t, withLeaks(&log))
	for _, v := range bothVersions {
		t.Run(v.name, func(t *testing.T) {
			_, err := wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Vsn: v.vsn, Params: map[string]string{"token": "db"}})
			if herr := expectRefused(t, err, http.StatusForbidden); len(herr.Body) != 0 {
				t.Errorf("refusal body = %q, want empty", herr.Body)
			}
			_, err = wsclient.Dial(testCtx(t), tn.wsURL, wsclient.Options{Vsn: v.vsn, Params: map[string]string{"token": "wrapped"}})
			if herr := expectRefused(t, err, http.StatusForbidden); string(herr.Body) != "who are you" {
				t.Errorf("refusal body = %q, want the ConnectError's reason", herr.Body)
			}
		})
	}
	expectLogged(t, &log, "transport=websocket")
}

// Item 36's refusal, for an error that is not a ConnectError.
func TestLongPoll_Item36_ConnectErrorNotForClient(t *testing.T) {
	t.Parallel()
	var log logBuffer
	n := startLPNode(t, transport.LongPollConfig{Logger: log.Logger()}, withLeaks(&log))
	for _, v := range bothVersions {
		for _, token := range []string{"db", "wrapped"} {
			q := url.Values{"vsn": {v.vsn}, "token": {token}}
			if a := n.request(t, http.MethodGet, q.Encode(), "", nil); a.Raw != `{"status":403}` {
				t.Errorf("%s token=%s: %s, want {\"status\":403}", v.name, token, a.Raw)
			}
		}
	}
	expectLogged(t, &log, "transport=longpoll")
}
