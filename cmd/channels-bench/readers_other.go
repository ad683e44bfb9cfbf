//go:build !linux

package main

import (
	"errors"
	"net"
)

func startReaders([]*subscriber, int) (func(), error) {
	return nil, errors.New("epoll readers are Linux only")
}

// drainer: Linux only; elsewhere each idle socket has a goroutine
// draining it.
type drainer struct{}

func newDrainer(int) (*drainer, error) { return nil, errors.New("epoll drainer is Linux only") }

func (*drainer) add(net.Conn) error { return errors.New("epoll drainer is Linux only") }

func (*drainer) close() {}
