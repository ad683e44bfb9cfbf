package transport

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/channelsd/channelsd/channels"
)

// The steps both transports take before a socket exists, in Phoenix's
// order (PROTOCOL.md §1.3): origin, serializer, the application's connect.
// Each transport answers a refusal in its own way (an HTTP status for
// WebSocket, {"status":N} for long-poll).

// originOf returns the request's Origin and whether it sent one: only
// browsers do, and a request without one is not checked (§5.4).
func originOf(r *http.Request) (string, bool) {
	origin, ok := r.Header["Origin"]
	if !ok || len(origin) == 0 {
		return "", ok
	}
	return origin[0], true
}

// refusal is why a handshake did not produce a socket.
type refusal struct {
	status int    // HTTP status the application chose (403 by default)
	reason string // a *channels.ConnectError's reason, or ""
	check  string // which step refused, for logs
	err    error
}

// connect negotiates the serializer from vsn (§1.2) and runs the
// application's connect (§5.1) with the query parameters, of which the
// last value of a repeated name wins, as in Plug.
//
// The parameters are copies: a value without escapes would otherwise be a
// substring of the request line, and an application that keeps one for
// the socket's life (a user name in the assigns) would keep the whole
// request line with it, up to the server's header limit per socket.
func connect(ctx context.Context, log *slog.Logger, ep Endpoint, r *http.Request, transport, authToken string, timeout time.Duration) (channels.Serializer, channels.Identity, *refusal) {
	query := r.URL.Query()
	params := make(map[string]string, len(query))
	for k, vs := range query {
		params[strings.Clone(k)] = strings.Clone(vs[len(vs)-1])
	}
	ser, err := channels.Negotiate(params["vsn"])
	if err != nil {
		return nil, channels.Identity{}, &refusal{status: http.StatusForbidden, check: "vsn", err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	id, err := ep.Connect(ctx, &channels.ConnectInfo{
		Params:     params,
		Header:     r.Header,
		RemoteAddr: r.RemoteAddr,
		Transport:  transport,
		AuthToken:  authToken,
	})
	if err != nil {
		// Only a *channels.ConnectError was made for the client (§5.1);
		// any other error may hold what the client must not see (a
		// database address, a DSN's password): logged here, the client
		// gets a 403 with an empty body, as for ConnectError{}.
		ref := &refusal{status: http.StatusForbidden, check: "connect", err: err}
		var ce *channels.ConnectError
		if errors.As(err, &ce) {
			ref.status, ref.reason = ce.HTTPStatus(), ce.Reason
		} else {
			log.Warn("transport: connect failed with an error not made for the client; refused with 403",
				"transport", transport, "remote", r.RemoteAddr, "err", err)
		}
		return nil, channels.Identity{}, ref
	}
	return ser, id, nil
}

// positiveOr sets a configuration value left at zero (or negative) to its
// default.
func positiveOr[T cmp.Ordered](v *T, def T) {
	var zero T
	if *v <= zero {
		*v = def
	}
}
