package pubsub

import (
	"context"
	"errors"
)

// Caller carries a request to one named node of the cluster and brings
// its answer back: the node-to-node path that a transport needs when a
// client's request reaches a node other than the one holding its state
// (a long-poll session lives on one node; the load balancer may send its
// next request anywhere). Clustered PubSubs implement it; a single node
// has no one to call.
//
// Contract:
//   - A request is handled at most once, by the node named, with the
//     handler registered for its service there. Nothing is retried: a
//     request or answer lost in transit shows as the caller's deadline.
//   - Call fails with ErrNoNode when no node of that name is listening
//     (it was never there, it stopped, or it was killed), as soon as that
//     is known rather than at the deadline, so a transport can tell "gone"
//     from "slow".
//   - There is no order between calls, even from one caller: a caller that
//     needs order waits for each answer before the next call.
//   - Handlers run on goroutines of their own, a bounded number at once; a
//     call beyond that bound fails with ErrCallRejected.
//   - A request or answer above what the transport carries in one piece
//     fails the call with ErrTooLarge (wrapped), at once.
type Caller interface {
	// NodeID is the name other nodes call this node by.
	NodeID() string
	// Call sends req to the handler of service on node and returns its
	// answer, waiting at most until ctx is done.
	Call(ctx context.Context, node, service string, req []byte) ([]byte, error)
	// HandleCalls registers h for the calls of service that reach this
	// node. Register before the node serves clients; a call for a service
	// with no handler fails with ErrCallRejected.
	HandleCalls(service string, h CallHandler)
}

// CallHandler answers one call. ctx ends at the caller's deadline as far
// as it is known here, or when the node stops. req is the handler's to
// keep.
type CallHandler func(ctx context.Context, req []byte) []byte

var (
	// ErrNoNode: no node of the name called is listening.
	ErrNoNode = errors.New("pubsub: no such node")
	// ErrCallRejected: the node called has no handler for the service,
	// or too many calls in progress.
	ErrCallRejected = errors.New("pubsub: call rejected by the node called")
)
