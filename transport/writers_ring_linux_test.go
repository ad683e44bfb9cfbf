//go:build linux

package transport

import (
	"testing"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
)

func TestWritersSendInBatches(t *testing.T) {
	if _, err := newSendRing(); err != nil {
		t.Skipf("no io_uring here: %v", err)
	}
	for _, noBatches := range []bool{false, true} {
		const n = 20
		ep := newFakeEndpoint()
		hs := newHarness(t, eventMode, WebSocketConfig{NoSendBatches: noBatches}, ep)
		var clients []*client
		var socks []*fakeSocket
		for range n {
			clients = append(clients, hs.dial(t, "", ws.Dialer{}))
			socks = append(socks, <-ep.opened)
		}
		for i := range 3 {
			for _, s := range socks {
				if err := s.conn.Send(channels.Frame{Data: []byte{'a' + byte(i)}}); err != nil {
					t.Fatal(err)
				}
			}
		}
		for _, c := range clients {
			for i := range 3 {
				c.expectFrame(ws.OpText, string(rune('a'+i)))
			}
		}
		batches := hs.h.Stats().SendBatches.Load()
		if noBatches && batches != 0 {
			t.Errorf("NoSendBatches: %d batches", batches)
		}
		if !noBatches && (batches == 0 || batches > 3*n) {
			t.Errorf("%d batches for %d writes at most", batches, 3*n)
		}
	}
}
