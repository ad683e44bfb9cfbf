//go:build !linux

package transport

// rawWrite: writers use non-blocking writes on Linux only; elsewhere every
// write goes to the connection's own goroutine.
type rawWrite struct{}

func (*rawWrite) init() {}

func (*rawWrite) write(connIO, []byte) (int, error) { return 0, errWouldBlock }

func (*rawWrite) writeFD(int32, []byte) (int, error) { return 0, errWouldBlock }
