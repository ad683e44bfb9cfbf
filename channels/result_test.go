package channels

import "testing"

// refusingChannel refuses every push with a reason.
type refusingChannel struct{ relayChannel }

func (refusingChannel) HandleIn(*ChannelSocket, In) Result { return ErrorReason("banned") }

// ErrorReason answers the push with status error and {"reason": ...},
// the same reply ErrorReply gives the map written out.
func TestErrorReasonReply(t *testing.T) {
	r := &Router{}
	r.Handle("no:*", func(string) Channel { return refusingChannel{} })
	e := newTestEnv(t, EndpointConfig{Router: r})
	for _, ser := range []Serializer{V1, V2} {
		s, conn := e.open(t, ser)
		if ser == V1 {
			s.handleFrame([]byte(`{"topic":"no:a","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}`), false)
			s.handleFrame([]byte(`{"topic":"no:a","event":"shout","payload":{},"ref":"2","join_ref":"1"}`), false)
		} else {
			s.handleFrame([]byte(`["1","1","no:a","phx_join",{}]`), false)
			s.handleFrame([]byte(`["1","2","no:a","shout",{}]`), false)
		}
		var got *Message
		for _, m := range checkTextFrames(t, ser, conn.take()) {
			if m.Event == EventReply && m.Ref.Text() == "2" {
				got = &m
			}
		}
		if got == nil {
			t.Fatalf("%s: no reply to the push", ser.Vsn())
		}
		if got.Status != "error" || string(got.Payload) != `{"reason":"banned"}` {
			t.Errorf("%s: reply %s %s, want error {\"reason\":\"banned\"}", ser.Vsn(), got.Status, got.Payload)
		}
	}
}
