package transport

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
)

// FuzzLongPollBody: no body makes splitLongPollBody panic; every text
// frame it yields is a non-empty line of the body beginning with "[" or
// "{", without "\n" or a trailing "\r" (a line ends at "\n", and the
// "\r"s before it go with the end); every binary frame is what its
// line decodes to; stopping early stops.
func FuzzLongPollBody(f *testing.F) {
	for _, seed := range []string{
		"",
		"\n\n\r\n",
		`[null,"1","phoenix","heartbeat",{}]`,
		"[\"1\",\"1\",\"t\",\"phx_join\",{}]\r\n[null,\"2\",\"phoenix\",\"heartbeat\",{}]\n",
		`{"topic":"t","event":"e","payload":{},"ref":"1"}`,
		base64.StdEncoding.EncodeToString([]byte{0, 1, 2, 3, 1, 't', 'e', 'x'}) + "\n",
		base64.RawStdEncoding.EncodeToString([]byte{0, 1, 2, 3, 1}) + "\r\n!!!\n",
		"====\n=\nA\nAB\nABC\nABCD\n",
	} {
		f.Add([]byte(seed), uint8(255))
	}
	f.Fuzz(func(t *testing.T, body []byte, stopAfter uint8) {
		orig := append([]byte(nil), body...)
		var lines [][]byte
		for _, l := range bytes.Split(body, []byte{'\n'}) {
			if l = bytes.TrimRight(l, "\r"); len(l) > 0 {
				lines = append(lines, l)
			}
		}
		i := 0
		splitLongPollBody(body, func(frame []byte, binary, ok bool) bool {
			if i >= len(lines) {
				t.Fatalf("yield %d, but the body has %d non-empty lines", i+1, len(lines))
			}
			line := lines[i]
			i++
			switch {
			case !ok:
				if frame != nil || binary {
					t.Fatalf("bad line %q yielded with frame %q, binary %v", line, frame, binary)
				}
				if line[0] == '[' || line[0] == '{' {
					t.Fatalf("JSON line %q refused", line)
				}
				if _, err := base64.RawStdEncoding.DecodeString(string(bytes.TrimRight(line, "="))); err == nil && len(line)%4 != 1 {
					// Decodable lines must be accepted (the padded and the
					// unpadded alphabet, as the splitter tries them).
					if _, err := base64.StdEncoding.DecodeString(string(line)); err == nil {
						t.Fatalf("base64 line %q refused", line)
					}
				}
			case !binary:
				if len(frame) == 0 || (frame[0] != '[' && frame[0] != '{') || !bytes.Equal(frame, line) {
					t.Fatalf("text frame %q for line %q", frame, line)
				}
				if bytes.IndexByte(frame, '\n') >= 0 || bytes.HasSuffix(frame, []byte{'\r'}) {
					t.Fatalf("text frame %q holds a line break", frame)
				}
			default:
				want, err := base64.StdEncoding.DecodeString(string(line))
				if err != nil {
					want, err = base64.RawStdEncoding.DecodeString(string(line))
				}
				if err != nil || !bytes.Equal(frame, want) {
					t.Fatalf("binary frame %x for line %q (decodes to %x, %v)", frame, line, want, err)
				}
			}
			return i < int(stopAfter)
		})
		if stopAfter > 0 && i != min(len(lines), int(stopAfter)) {
			t.Fatalf("%d yields for %d lines, stop after %d", i, len(lines), stopAfter)
		}
		if !bytes.Equal(body, orig) {
			t.Fatal("the body was modified")
		}
	})
}

// FuzzLongPollJSONString: a message is written into a poll answer as
// encoding/json writes a string (without HTML escaping), and
// jsonStringLen, which bounds buffers and answers, is exactly its length.
func FuzzLongPollJSONString(f *testing.F) {
	for _, seed := range []string{"", `["a","b"]`, "\x00\x1f\"\\\b\f\n\r\t", "\u2028\u2029é€😀", "\xff\xc3(\xe2\x82", "<&>"} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, s []byte) {
		got := appendJSONString(nil, s)
		var buf bytes.Buffer
		enc := json.NewEncoder(&buf)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(string(s)); err != nil {
			t.Fatal(err)
		}
		if want := bytes.TrimSuffix(buf.Bytes(), []byte("\n")); !bytes.Equal(got, want) {
			t.Fatalf("%q: got %s, encoding/json %s", s, got, want)
		}
		if n := jsonStringLen(s); n != len(got) {
			t.Fatalf("%q: jsonStringLen %d, written %d", s, n, len(got))
		}
	})
}
