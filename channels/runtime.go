package channels

// Runtime is the side of an Endpoint that transports and the node drive:
// Connect and Open bring connections in (package transport);
// BeginShutdown, BeginDrain, Drained, CloseAll, Generation and CloseOldest
// end or move them (package node). Applications and channel authors do
// not need it; it is kept apart so that Endpoint and ChannelSocket show
// only what they call.
//
// A Runtime is its Endpoint seen through another method set, not a copy:
// every Runtime of one Endpoint shares its sockets and state. Its methods
// name their receiver e for that reason.
type Runtime Endpoint

// Runtime returns the transport and node side of e.
func (e *Endpoint) Runtime() *Runtime { return (*Runtime)(e) }
