//go:build !linux

package transport

import "net"

// rawWrite: writers use non-blocking writes on Linux only; elsewhere every
// write goes to the connection's own goroutine.
type rawWrite struct{}

func (*rawWrite) init() {}

func (*rawWrite) write(net.Conn, []byte) (int, error) { return 0, errWouldBlock }

// ringSet: batched sends are Linux's only (writers_ring_linux.go).
type ringSet struct{}

func (*ringSet) disable() {}

func (*writerPool) sendBatches() bool { return false }

func (*writerPool) closeRings() {}
