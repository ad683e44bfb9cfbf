//go:build !linux

package transport

import "errors"

// Without a reactor no connection is ever bare (wsconn_fd.go).

var errNoBare = errors.New("transport: no bare descriptors on this platform")

func dupFD(connIO) (int32, error)       { return 0, errNoBare }
func fileFD(int32) (connIO, error)      { return nil, errNoBare }
func readFD(int32, []byte) (int, error) { return 0, errNoBare }
func closeFD(int32)                     {}
func shutdownWriteFD(int32)             {}
func peerAddrFD(int32) string           { return "" }
