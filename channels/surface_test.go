package channels_test

import (
	"reflect"
	"testing"

	"github.com/channelsd/channelsd/channels"
)

// runtimeMethods are what transports and the node call: they belong on
// Runtime, off the types a channel author reads.
var runtimeMethods = []string{
	"Connect", "Open", "HandleFrame", "HandleClose", "CloseSocket",
	"BeginShutdown", "BeginDrain", "Drained", "CloseAll", "Generation", "CloseOldest",
}

// The types a channel author reads show only what applications call: the
// registry's methods stay on an unexported adapter, the transport's and
// the node's on Runtime, and a Socket (which only the transport holds)
// shows no methods at all.
func TestApplicationSurfaceHidesTransportInternals(t *testing.T) {
	for _, tc := range []struct {
		typ    reflect.Type
		hidden []string
	}{
		{reflect.TypeFor[*channels.ChannelSocket](), []string{"Deliver", "SubscriberID", "Excluded", "HandleFrame", "HandleClose"}},
		{reflect.TypeFor[*channels.Endpoint](), runtimeMethods},
	} {
		for _, name := range tc.hidden {
			if _, ok := tc.typ.MethodByName(name); ok {
				t.Errorf("%v has method %s; it belongs off the application API", tc.typ, name)
			}
		}
	}
	if st := reflect.TypeFor[*channels.Socket](); st.NumMethod() != 0 {
		var names []string
		for i := range st.NumMethod() {
			names = append(names, st.Method(i).Name)
		}
		t.Errorf("%v has methods %v; the transport drives it through Runtime", st, names)
	}
	// Still reachable where the transport and the node look.
	rt := reflect.TypeFor[*channels.Runtime]()
	for _, name := range runtimeMethods {
		if _, ok := rt.MethodByName(name); !ok {
			t.Errorf("%v lacks %s", rt, name)
		}
	}
}
