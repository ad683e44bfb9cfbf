package node

import (
	"context"
	"maps"
	"net"
	"net/http"
	"time"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub"
)

// Defaults of the limits in Config (README "Limits").
const (
	// DefaultMaxSockets stays under the container engine's open-file
	// limit of 20,000 (BENCHMARKS.md), leaving room for Redis, probes and
	// the API: past the limit, accept fails and nobody gets an answer.
	DefaultMaxSockets = 19000
	// The per-message limits are the channel endpoint's.
	DefaultMaxPayloadSize = channels.DefaultMaxPayloadSize
	DefaultMaxTopicLength = channels.DefaultMaxTopicLength
	DefaultMaxEventLength = channels.DefaultMaxEventLength
)

// defaultLimit sets a zero limit to def and a negative one to 0, which
// every consumer reads as "no limit".
func defaultLimit(v *int, def int) {
	switch {
	case *v == 0:
		*v = def
	case *v < 0:
		*v = -1
	}
}

// trackHandshake is the server's ConnState hook, with requestRead and
// the server's ConnContext: it notes when each connection arrives and
// counts those that the server closes, after HandshakeTimeout (its
// ReadHeaderTimeout), before their first request's headers were read: a
// client that trickles its headers (slowloris) or sends nothing. One map
// entry per connection, only until its first request has been read.
func (n *Node) trackHandshake(c net.Conn, state http.ConnState) {
	switch state {
	case http.StateNew:
		n.handshakes.Store(c, time.Now())
	case http.StateHijacked:
		n.handshakes.Delete(c)
	case http.StateClosed:
		if t, ok := n.handshakes.LoadAndDelete(c); ok && time.Since(t.(time.Time)) >= n.cfg.HandshakeTimeout {
			n.handshakeTimeouts.Add(1)
		}
	}
}

type connKey struct{}

// connContext makes a request's connection known to requestRead.
func (n *Node) connContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// requestRead wraps the node's handler: a request that reaches it has
// been read, so its connection has passed the handshake timeout.
func (n *Node) requestRead(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			n.handshakes.Delete(c)
		}
		h.ServeHTTP(w, r)
	})
}

// limitHits returns, per limit label of channelsd_limit_hits_total, the
// counter of its refusals (README "Limits").
func (n *Node) limitHits() map[string]func() uint64 {
	es, ws, lp := n.endpoint.Stats(), n.ws.Stats(), n.lp.Stats()
	hits := map[string]func() uint64{
		"sockets":              func() uint64 { return ws.SocketLimit.Load() + lp.SocketLimit.Load() },
		"pending_upgrades":     ws.PendingLimit.Load,
		"handshake_timeout":    n.handshakeTimeouts.Load,
		"frame_size":           ws.TooBig.Load,
		"channels":             es.LimitChannels.Load,
		"messages_per_second":  es.LimitRate.Load,
		"rate_abuse":           es.LimitRateAbuse.Load,
		"payload_size":         es.LimitPayloadSize.Load,
		"topic_length":         es.LimitTopicLength.Load,
		"event_length":         es.LimitEventLength.Load,
		"longpoll_sessions":    lp.SessionLimit.Load,
		"longpoll_buffered":    lp.Overflowed.Load,
		"longpoll_body":        lp.BodiesTooLarge.Load,
		"http_idle_timeout":    n.conns.idleTimeouts.Load,
		"http_request_timeout": n.bodyTimeouts.Load,
		"http_connections":     func() uint64 { return n.conns.refused.Load() + n.conns.evicted.Load() },
		"ref_length":           es.LimitRefLength.Load,
		"message_timeout":      ws.MessageTimeouts.Load,
		"message_buffers":      ws.MessageBuffersFull.Load,
		"url_length":           ws.URLTooLong.Load,
	}
	hits["longpoll_buffered_bytes"] = lp.OverflowedBytes.Load
	hits["longpoll_io_timeout"] = lp.IOTimeouts.Load
	hits["longpoll_body_buffers"] = lp.BodyBuffersFull.Load
	hits["longpoll_relay_size"] = lp.RelayTooLarge.Load
	hits["longpoll_sessions_per_address"] = lp.AddrLimit.Load
	// The Redis PubSub and the presence trackers count their own refusals.
	for _, dep := range []any{n.cfg.PubSub, n.cfg.Presence} {
		if lc, ok := dep.(pubsub.LimitCounter); ok {
			maps.Copy(hits, lc.LimitHits())
		}
	}
	return hits
}
