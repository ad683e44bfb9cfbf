//go:build !linux

package main

import "errors"

func startReaders([]*subscriber, int) (func(), error) {
	return nil, errors.New("epoll readers are Linux only")
}
