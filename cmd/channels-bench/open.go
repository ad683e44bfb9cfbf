package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// openMany opens n connections with open(i, src), parallel at a time,
// spreading them over the source addresses 127.0.0.1..sources (each
// address has its own ephemeral ports), and prints progress every second
// under name. It returns the connections opened and how many failed; the
// last failure is printed.
func openMany(ctx context.Context, name string, n, parallel, sources int, open func(i int, src net.IP) (net.Conn, error)) ([]net.Conn, int64) {
	var (
		mu      sync.Mutex
		conns   []net.Conn
		next    atomic.Int64
		failed  atomic.Int64
		lastErr atomic.Value
		wg      sync.WaitGroup
	)
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				mu.Lock()
				ok := len(conns)
				mu.Unlock()
				fmt.Fprintf(os.Stderr, "%s: %d open, %d failed\n", name, ok, failed.Load())
			case <-done:
				return
			}
		}
	}()
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				c, err := open(i, net.IPv4(127, 0, 0, byte(1+i%sources)))
				if err != nil {
					failed.Add(1)
					lastErr.Store(err.Error())
					continue
				}
				mu.Lock()
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(done)
	if e, ok := lastErr.Load().(string); ok {
		fmt.Fprintf(os.Stderr, "%s: %d failed, last error: %s\n", name, failed.Load(), e)
	}
	return conns, failed.Load()
}
