// Package presence tracks who is on which topic, Phoenix Presence's model.
//
// # Where it fits
//
// A channel tracks its user once the join is accepted, and the client's
// JavaScript Presence class shows the room:
//
//	func (r *Room) AfterJoin(s *channels.ChannelSocket) {
//		_ = s.Track(r.user, map[string]any{"device": "web"}) // this join's entry
//		_ = s.PushPresenceState()                              // the whole room, to this client
//	}
//
// The entry lives as long as the join: it leaves when the channel ends,
// the socket closes or the node shuts down. package node builds the
// Tracker; applications rarely call it directly.
//
// # Concepts
//
// Each join (an owner) tracks a key, a user id say, with a meta object;
// a key tracked from several sockets has several metas. Every change
// reaches the topic's subscribers in a presence_diff {joins, leaves}, and
// a joining client gets the whole presence_state once; the JavaScript
// Presence class merges the two into the list it shows.
//
// A diff goes to every subscriber of its topic, so a busy topic's
// changes are gathered: at most one diff per window, the window growing
// with the room and, while the topic stays busy, with its traffic
// (pacing.go). A quiet topic's change goes out at once (Local) or after
// a short window (presence/redis).
//
// Keys and metas come from clients and are repeated to every member of
// the room, so they are bounded (Limits; zero values are the defaults of
// README "Limits").
//
// # Implementations
//
// Tracker is the interface, with its contract. Local keeps the table in
// memory for a single node, the default. presence/redis is the clustered
// tracker: it keeps each node's entries in Redis hashes (each node writes
// only its own fields, so the union of all nodes' sets merges without
// conflicts), and is checked against Local's behaviour.
package presence
