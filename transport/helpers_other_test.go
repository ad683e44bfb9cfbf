//go:build !linux

package transport

import "errors"

// setBareSendBuffer: no bare connections off Linux (wsconn_fd.go).
func setBareSendBuffer(*wsConn, int) error { return errors.New("transport: no bare connection here") }
