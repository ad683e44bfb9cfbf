package node

import (
	"strings"
	"testing"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/pubsub/local"
)

type nullConn struct{ frames []channels.Frame }

func (c *nullConn) Send(f channels.Frame) error { c.frames = append(c.frames, f); return nil }
func (c *nullConn) Close(int, string)           {}

// A join_ref or ref over MaxRefLength (default 64 bytes) is refused with
// an error reply and counted as the limit ref_length.
func TestRefLengthLimitHit(t *testing.T) {
	for _, tc := range []struct {
		cfg  int
		hits uint64
	}{{0, 1}, {-1, 0}} {
		n := newTestNode(t, Config{PubSub: local.New(), MaxRefLength: tc.cfg})
		conn := &nullConn{}
		rt := n.Endpoint().Runtime()
		s := rt.Open(conn, channels.V2, channels.Identity{})
		rt.HandleFrame(s, []byte(`[null,"`+strings.Repeat("1", 63)+`","room:1","e",{}]`), false)
		rt.HandleClose(s)
		if got := n.limitHits()["ref_length"](); got != tc.hits {
			t.Errorf("MaxRefLength %d: ref_length hits %d, want %d", tc.cfg, got, tc.hits)
		}
		if tc.hits == 1 && (len(conn.frames) != 1 || !strings.Contains(string(conn.frames[0].Data), `"ref too long"`)) {
			t.Errorf("MaxRefLength %d: frames %+v", tc.cfg, conn.frames)
		}
	}
}
