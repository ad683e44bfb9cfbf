package channels

import "time"

// The per-message limits of a socket (README "Limits"): sizes, checked on
// the decoded header, and the message rate.

// rlClosed marks a socket closed for persistent excess: what it still
// sends before the transport stops reading is dropped.
const rlClosed = ^uint32(0)

// Error replies of the limits (README "Limits").
var (
	reasonRateLimited     = reasonJSON("rate limited")
	reasonPayloadTooLarge = reasonJSON("payload too large")
	reasonTopicTooLong    = reasonJSON("topic too long")
	reasonEventTooLong    = reasonJSON("event too long")
	reasonRefTooLong      = reasonJSON("ref too long")
	reasonTooManyChannels = reasonJSON("too many channels joined")
)

// overLimit returns the error reply for a message above a size limit, and
// counts it, or nil.
func (e *Endpoint) overLimit(msg *Message) []byte {
	switch {
	case e.cfg.MaxRefLength > 0 && (len(msg.Ref) > e.cfg.MaxRefLength || len(msg.JoinRef) > e.cfg.MaxRefLength):
		e.stats.LimitRefLength.Add(1)
		return reasonRefTooLong
	case e.cfg.MaxTopicLength > 0 && len(msg.Topic) > e.cfg.MaxTopicLength:
		e.stats.LimitTopicLength.Add(1)
		return reasonTopicTooLong
	case e.cfg.MaxEventLength > 0 && len(msg.Event) > e.cfg.MaxEventLength && msg.Event != EventJoin && msg.Event != EventLeave:
		e.stats.LimitEventLength.Add(1)
		return reasonEventTooLong
	case e.cfg.MaxPayloadSize > 0 && len(msg.Payload) > e.cfg.MaxPayloadSize:
		e.stats.LimitPayloadSize.Add(1)
		return reasonPayloadTooLarge
	}
	return nil
}

// rateLimit reports whether one more message is within the socket's rate.
// The token bucket is kept as GCRA (the generic cell rate algorithm),
// which needs one time per socket instead of a count and a time: rlTAT is
// when the next message would be due at the sustained rate; a message is
// allowed while rlTAT runs at most (Burst-1) intervals ahead of now, and
// moves it one interval on. rlTAT at or before now is a full bucket.
//
// Persistent excess: the first refusal starts an episode, which ends when
// the bucket is full again (the client has slowed down long enough); a
// refusal RateAbuseAfter or more into an episode closes the socket with
// 1008 "rate limited". Nothing is allocated, and a socket within its rate
// pays one clock read per message.
func (s *Socket) rateLimit() bool {
	if s.rlAbuse == rlClosed {
		return false
	}
	e := s.ep
	now := int64(time.Since(e.epoch))
	tat := s.rlTAT
	if tat <= now {
		tat = now
		s.rlAbuse = 0
	}
	if tat-now <= e.rlTol {
		s.rlTAT = tat + e.rlEvery
		return true
	}
	ds := uint32(now/int64(100*time.Millisecond)) + 1
	switch {
	case s.rlAbuse == 0:
		s.rlAbuse = ds
	case ds-s.rlAbuse > e.rlAbuseDs: // ">": never before RateAbuseAfter
		s.rlAbuse = rlClosed
		e.stats.LimitRateAbuse.Add(1)
		e.log.Info("channels: socket closed for exceeding its message rate", "socket", s.name(), "id", s.ident.ID)
		s.conn.Close(ClosePolicy, "rate limited")
	}
	return false
}

// overRate handles a message refused by the rate limit: dropped, with an
// error reply if it has a ref. A heartbeat is answered all the same, so
// that a client over its rate is not also taken for a dead connection
// (§3.2); it took no token, and it counts toward persistent excess.
func (s *Socket) overRate(msg *Message, decoded bool) {
	if s.rlAbuse == rlClosed {
		return
	}
	if decoded && msg.Topic == TopicPhoenix && msg.Event == EventHeartbeat {
		s.sendSocketReply(NullRef, msg.Ref, TopicPhoenix, "ok", nil)
		return
	}
	s.ep.stats.LimitRate.Add(1)
	if decoded && !msg.Ref.IsNull() {
		s.sendSocketReply(msg.JoinRef, msg.Ref, msg.Topic, "error", reasonRateLimited)
	}
}
