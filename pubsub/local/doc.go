// Package local is the in-memory PubSub: one process, no network, the
// default when no Redis is configured. It is also the reference the
// clustered implementations are tested against.
package local
