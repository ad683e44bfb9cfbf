//go:build !linux

package transport

import (
	"errors"
	"net"
)

// pollerSupported: only Linux (epoll) so far; elsewhere every connection
// waits in a parked read.
const pollerSupported = false

func newPoller() (poller, error) {
	return nil, errors.New("transport: no event-driven reads on this platform")
}

func connFD(net.Conn) (int32, bool) { return 0, false }
