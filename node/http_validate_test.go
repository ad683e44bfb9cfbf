package node

import (
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/channelsd/channelsd/pubsub/local"
)

// A payload with invalid UTF-8 (encoding/json keeps it in a RawMessage)
// is refused with 400 and reaches no subscriber: relayed in a text frame
// it would close every browser on the topic. Topic and event are decoded
// into strings, where encoding/json makes invalid bytes U+FFFD.
func TestBroadcastAPIRefusesInvalidUTF8(t *testing.T) {
	ps := local.New()
	n := newTestNode(t, Config{PubSub: ps})
	rec := &recorder{}
	if err := ps.Subscribe("room:1", rec); err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{
		"{\"topic\":\"room:1\",\"event\":\"e\",\"payload\":{\"body\":\"\xff\xfe\"}}",
		"{\"topic\":\"room:1\",\"event\":\"e\",\"payload\":{\"\xc3\":1}}",
		"{\"topic\":\"room:1\",\"event\":\"e\",\"payload\":{\"a\":\"\xed\xa0\x80\"}}",
	} {
		code, resp := do(t, n.Handler(), "POST", "/api/broadcast", body)
		if code != http.StatusBadRequest || !strings.Contains(resp, "UTF-8") {
			t.Errorf("%q: status %d %s, want 400 naming UTF-8", body, code, resp)
		}
	}
	if len(rec.msgs) != 0 {
		t.Fatalf("delivered %d messages", len(rec.msgs))
	}
	code, _ := do(t, n.Handler(), "POST", "/api/broadcast", "{\"topic\":\"room:1\",\"event\":\"e\xff\",\"payload\":{\"a\":\"é\"}}")
	if code != http.StatusAccepted || len(rec.msgs) != 1 || !utf8.ValidString(rec.msgs[0].Event) || !utf8.Valid(rec.msgs[0].Payload) {
		t.Fatalf("status %d, delivered %+v", code, rec.msgs)
	}
}
