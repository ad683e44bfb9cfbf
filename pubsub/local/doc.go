// Package local is the in-memory PubSub: one process, no network, the
// default when no Redis is configured. It is also the reference the
// clustered implementations are tested against.
//
// It implements pubsub.History in memory: each topic the
// policy gives history keeps a ring of its newest broadcasts in this
// process only. Nothing survives a restart: the restarted process starts
// every history in a new epoch, so a client recovering from a position of
// the old process is told the epoch changed rather than served a wrong
// continuation. A history idle for its TTL is dropped on its next use or
// by the sweep publishes run at most once per second, so memory follows
// the topics in use without a goroutine of its own.
package local
