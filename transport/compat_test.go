package transport

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net/http"
	"testing"
	"time"
)

// signTokenV2 issues a version 2 token, as a later release may once every
// live node reads it: the node id length-prefixed, an extension after it.
func signTokenV2(key []byte, t lpToken, ext []byte) string {
	p := []byte{lpTokenVersionExt}
	p = binary.BigEndian.AppendUint64(p, uint64(t.Issued.UnixMilli()))
	p = append(p, t.Session[:]...)
	p = binary.AppendUvarint(p, uint64(len(t.NodeID)))
	p = append(p, t.NodeID...)
	p = append(p, ext...)
	return signPayload(key, p)
}

func signPayload(key, p []byte) string {
	mac := hmac.New(sha256.New, key)
	mac.Write(p)
	return lpB64.EncodeToString(p) + "." + lpB64.EncodeToString(mac.Sum(nil))
}

// "Release N reads what N+1 writes", for the long-poll token: a version
// 2 token routes to the node it names, and verifies on that node, its
// extension skipped. The release of b847059 refuses it (it knows version
// 1 only), which is why issuing one is gated.
func TestLongPollTokenReadsNextReleaseVersion2(t *testing.T) {
	key := []byte("k1")
	in := lpToken{NodeID: "node-b-7f9c", Issued: time.UnixMilli(1_700_000_000_123)}
	copy(in.Session[:], "0123456789abcdef")
	for _, ext := range [][]byte{nil, []byte("\x01\x04flag"), bytes.Repeat([]byte{0xee}, 60)} {
		s := signTokenV2(key, in, ext)
		node, ok := longPollTokenNode(s)
		if !ok || node != in.NodeID {
			t.Fatalf("ext %d bytes: routed to %q, %v; want %q", len(ext), node, ok, in.NodeID)
		}
		out, ok := parseLongPollToken(key, s)
		if !ok || out.NodeID != in.NodeID || out.Session != in.Session || !out.Issued.Equal(in.Issued) {
			t.Fatalf("ext %d bytes: verified as %+v, %v; want %+v", len(ext), out, ok, in)
		}
		if _, ok := parseLongPollToken([]byte("k2"), s); ok {
			t.Fatal("version 2 token verifies with another key")
		}
	}
	// Malformed version 2 payloads, and versions this release does not
	// know, are refused even when signed.
	head := []byte{lpTokenVersionExt}
	head = binary.BigEndian.AppendUint64(head, 1)
	head = append(head, in.Session[:]...)
	for name, p := range map[string][]byte{
		"node length past the end": append(bytes.Clone(head), 9, 'a'),
		"no node length":           bytes.Clone(head),
		"node id above 255 bytes":  append(binary.AppendUvarint(bytes.Clone(head), 256), bytes.Repeat([]byte{'n'}, 256)...),
		"version 3":                append(append([]byte{3}, head[1:]...), 1, 'a'),
	} {
		s := signPayload(key, p)
		if _, ok := longPollTokenNode(s); ok {
			t.Errorf("%s: routable", name)
		}
		if _, ok := parseLongPollToken(key, s); ok {
			t.Errorf("%s: verifies", name)
		}
	}
	// This release still issues version 1.
	p, _, ok := splitLongPollToken(signLongPollToken(key, in))
	if !ok || p[0] != lpTokenVersion {
		t.Fatalf("issued token version %v", p[:1])
	}
}

// A relayed request or answer carrying pseudo-headers (a later release's
// extension of the relay frame) is served as if they were absent.
func TestRelayFramesSkipPseudoHeaders(t *testing.T) {
	req, _ := http.NewRequest(http.MethodPost, "/socket/longpoll?vsn=2.0.0&token=a", nil)
	req.Header.Set("Origin", "https://example.com")
	req.Header[":relay-trace"] = []string{"4bf92f35"}
	req.Header[":relay-priority"] = []string{"1", "2"}
	req.RemoteAddr = "127.0.0.1:5555"
	got, err := decodeRelayRequest(context.Background(), appendRelayRequest(nil, req, []byte("line1\n")))
	if err != nil {
		t.Fatal(err)
	}
	body := new(bytes.Buffer)
	_, _ = body.ReadFrom(got.Body)
	if len(got.Header) != 1 || got.Header.Get("Origin") != "https://example.com" || body.String() != "line1\n" {
		t.Fatalf("request with pseudo-headers decoded as headers %v body %q", got.Header, body.Bytes())
	}
	h := http.Header{"Content-Type": {"application/json"}, ":relay-answer-ext": {"x"}}
	st, gh, gbody, err := decodeRelayAnswer(appendRelayAnswer(nil, 200, h, []byte(`{"status":200}`)))
	if err != nil || st != 200 || len(gh) != 1 || gh.Get("Content-Type") != "application/json" || string(gbody) != `{"status":200}` {
		t.Fatalf("answer with a pseudo-header: %d %v %q %v", st, gh, gbody, err)
	}
}
