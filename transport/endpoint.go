package transport

import (
	"context"

	"github.com/channelsd/channelsd/channels"
)

// Endpoint is what a transport needs of channels.Runtime: authenticate a
// connection request before the upgrade, then start the socket runtime of
// an accepted connection. It is an interface so that the transport can be
// tested (and benchmarked) with fakes.
type Endpoint interface {
	// Connect runs the application's connect callback. A refusal is
	// answered over plain HTTP, before any upgrade.
	Connect(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error)
	// Open starts the socket of an accepted connection.
	Open(conn channels.Conn, ser channels.Serializer, id channels.Identity) Socket
}

// Socket is the runtime of one connection, as a transport drives it.
type Socket interface {
	// HandleFrame handles one complete client message. data is only valid
	// during the call: the transport reuses the buffer afterwards.
	HandleFrame(data []byte, binary bool)
	// HandleClose is called exactly once, after the connection has ended.
	HandleClose()
}

// FromEndpoint adapts a *channels.Endpoint, through its Runtime, to
// Endpoint.
func FromEndpoint(e *channels.Endpoint) Endpoint { return endpointAdapter{e.Runtime()} }

type endpointAdapter struct{ e *channels.Runtime }

func (a endpointAdapter) Connect(ctx context.Context, info *channels.ConnectInfo) (channels.Identity, error) {
	return a.e.Connect(ctx, info)
}

func (a endpointAdapter) Open(conn channels.Conn, ser channels.Serializer, id channels.Identity) Socket {
	return runtimeSocket{a.e, a.e.Open(conn, ser, id)}
}

// runtimeSocket drives a channels.Socket through the Runtime that opened
// it, where the socket's transport-side methods live.
type runtimeSocket struct {
	rt *channels.Runtime
	s  *channels.Socket
}

func (r runtimeSocket) HandleFrame(data []byte, binary bool) { r.rt.HandleFrame(r.s, data, binary) }
func (r runtimeSocket) HandleClose()                         { r.rt.HandleClose(r.s) }
