// Package presence tracks who is on which topic, Phoenix Presence's model:
// each socket tracks a key (a user id, say) with a meta object; a key
// tracked from several sockets has several metas; every change reaches the
// topic's subscribers as a presence_diff {joins, leaves}, and a joining
// client gets the whole presence_state once. The JavaScript Presence class
// merges the two into the list it shows.
//
// Tracker is the interface; Local keeps the table in memory for a single
// node. The clustered tracker keeps each node's entries in Redis hashes
// (each node writes only its own fields, so the union of all nodes' sets
// merges without conflicts) and is checked against Local's behaviour.
package presence
