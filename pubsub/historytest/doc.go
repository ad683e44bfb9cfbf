// Package historytest is the contract suite of pubsub.History: the
// behaviour every implementation (pubsub/local in memory, pubsub/redis in
// Redis streams) must show, written once so that they cannot drift apart.
//
// The suite assumes nothing about when delivery happens: an implementation
// may deliver on another goroutine after Publish returns, so every
// delivery is awaited through a channel with a bounded timeout. Topic
// names carry a random token, so implementations backed by a shared store
// can run the suite against one store repeatedly.
package historytest
