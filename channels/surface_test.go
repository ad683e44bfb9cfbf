package channels_test

import (
	"reflect"
	"testing"

	"github.com/channelsd/channelsd/channels"
)

// The types a channel author reads show only what applications call: the
// registry's methods stay on an unexported adapter, the transport's and
// the node's on Runtime (issue 19).
func TestApplicationSurfaceHidesTransportInternals(t *testing.T) {
	for _, tc := range []struct {
		typ    reflect.Type
		hidden []string
	}{
		{reflect.TypeFor[*channels.ChannelSocket](), []string{"Deliver", "SubscriberID", "Excluded"}},
		{reflect.TypeFor[*channels.Endpoint](), []string{"Connect", "Open", "BeginShutdown", "BeginDrain", "Drained", "CloseAll", "Generation", "CloseOldest"}},
	} {
		for _, name := range tc.hidden {
			if _, ok := tc.typ.MethodByName(name); ok {
				t.Errorf("%v has method %s; it belongs off the application API", tc.typ, name)
			}
		}
	}
	// Still reachable where the transport and the node look.
	rt := reflect.TypeFor[*channels.Runtime]()
	for _, name := range []string{"Connect", "Open", "BeginShutdown", "BeginDrain", "Drained", "CloseAll", "Generation", "CloseOldest"} {
		if _, ok := rt.MethodByName(name); !ok {
			t.Errorf("%v lacks %s", rt, name)
		}
	}
}
