package channels

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"runtime/debug"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/channelsd/channelsd/pubsub"
)

// unhex reads the spaced hex of PROTOCOL.md §2.4.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// msgEqual compares Messages treating a nil and an empty payload alike.
func msgEqual(a, b Message) bool {
	if !bytes.Equal(a.Payload, b.Payload) {
		return false
	}
	return a.JoinRef == b.JoinRef && a.Ref == b.Ref && a.Topic == b.Topic &&
		a.Event == b.Event && a.Status == b.Status && a.Binary == b.Binary
}

// jsonEqual compares two JSON texts as values, ignoring key order.
func jsonEqual(t testing.TB, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatalf("invalid JSON %q: %v", a, err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatalf("invalid JSON %q: %v", b, err)
	}
	return reflect.DeepEqual(va, vb)
}

func TestAppendJSONString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `""`},
		{"room:lobby", `"room:lobby"`},
		{"a\x7fb", "\"a\x7fb\""},
		{`say "hi"`, `"say \"hi\""`},
		{`back\slash`, `"back\\slash"`},
		{"tab\tnl\ncr\rbs\bff\f", `"tab\tnl\ncr\rbs\bff\f"`},
		{"\x00\x01\x1f", `"\u0000\u0001\u001f"`},
		{"<a>&b", `"<a>&b"`},
		{"héllo wörld ✓ 😀", `"héllo wörld ✓ 😀"`},
		{"\u2028\u2029", "\"\u2028\u2029\""},
		{"\ufffd", "\"\ufffd\""},
		{"bad\xffbyte", `"bad\ufffdbyte"`},
		{"\xc3", `"\ufffd"`},                     // truncated sequence
		{"\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`}, // surrogate half, as encoding/json
		{"\xc0\xaf", `"\ufffd\ufffd"`},           // overlong
	}
	for _, tt := range tests {
		got := appendJSONString([]byte("x"), tt.in)
		if string(got) != "x"+tt.want {
			t.Errorf("appendJSONString(%q) = %s, want %s", tt.in, got[1:], tt.want)
		}
		if n := jsonStringLen(tt.in); n != len(tt.want) {
			t.Errorf("jsonStringLen(%q) = %d, want %d", tt.in, n, len(tt.want))
		}
		var back string
		if err := json.Unmarshal(got[1:], &back); err != nil {
			t.Errorf("%s does not unmarshal: %v", got[1:], err)
		}
		if want := strings.ToValidUTF8(tt.in, "\ufffd"); utf8.ValidString(tt.in) && back != tt.in {
			t.Errorf("round trip of %q gave %q", tt.in, back)
		} else if !utf8.ValidString(tt.in) && !utf8.ValidString(back) {
			t.Errorf("round trip of %q gave invalid UTF-8 %q (want like %q)", tt.in, back, want)
		}
		// encoding/json agrees on invalid UTF-8 replacement.
		ref, _ := json.Marshal(tt.in)
		var refBack string
		_ = json.Unmarshal(ref, &refBack)
		if back != refBack {
			t.Errorf("%q: decoded %q, encoding/json's round trip gives %q", tt.in, back, refBack)
		}
	}
}

// skipAllocCountsUnderRace skips allocation counts in race builds, whose
// instrumentation changes them (slices.Grow, for one, allocates twice).
func skipAllocCountsUnderRace(t *testing.T) {
	t.Helper()
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "-race" && s.Value == "true" {
				t.Skip("allocation counts differ under -race")
			}
		}
	}
}

func TestAppendJSONStringFastPathDoesNotAllocate(t *testing.T) {
	skipAllocCountsUnderRace(t)
	dst := make([]byte, 0, 64)
	allocs := testing.AllocsPerRun(100, func() {
		dst = appendJSONString(dst[:0], "room:lobby")
	})
	if allocs != 0 {
		t.Errorf("fast path allocated %v times", allocs)
	}
}

// wireValidInputs probe the corners of the JSON grammar; wireValid must
// give json.Valid's verdict on each (the fuzz targets start from them too).
var wireValidInputs = func() []string {
	inputs := []string{
		``, ` `, `0`, `-0`, `-`, `01`, `1.`, `1.5`, `.5`, `1e5`, `1E+5`, `1e-05`, `1e`, `1e+`, `+1`, `-01`, `1.5e3x`,
		`true`, `false`, `null`, `nul`, `nulll`, `True`, `truefalse`, `"a"`, `"`, `"\\"`, `"\u00e9"`, `"\u00g9"`,
		`"\u12"`, `"\x"`, `"\/"`, "\"a\x01\"", "\"a\x7f\xff\"", `"\t"`, "\"\t\"", `[]`, `{}`, `[,]`, `[1,]`, `[1 2]`,
		`{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{1:2}`, `{"a":1}}`, `[[]]]`, `[{]}`, `{[]}`, `{"a":[1,{"b":null}]}`,
		" \t\r\n[ 1 , { \"a\" : [ ] } ] \n", "[1]\x00", "\ufeff[]", `[] []`, `"a" "b"`, `[1e400]`,
	}
	for _, depth := range []int{255, 256, 257, 10000, 10001} {
		inputs = append(inputs, strings.Repeat("[", depth)+strings.Repeat("]", depth))
		inputs = append(inputs, strings.Repeat(`{"a":`, depth)+"1"+strings.Repeat("}", depth))
		inputs = append(inputs, strings.Repeat("[", depth)+strings.Repeat("]", depth-1))
		inputs = append(inputs, `[null,null,"t","e",`+strings.Repeat("[", depth)+strings.Repeat("]", depth)+`]`)
	}
	return inputs
}()

func TestWireValid(t *testing.T) {
	for _, in := range wireValidInputs {
		if got, want := wireValid([]byte(in)), json.Valid([]byte(in)); got != want {
			t.Errorf("wireValid(%.40q) = %v, json.Valid says %v", in, got, want)
		}
	}
}

func TestSerializerVsn(t *testing.T) {
	if V1.Vsn() != "1.0.0" || V2.Vsn() != "2.0.0" {
		t.Errorf("Vsn: V1 %q, V2 %q", V1.Vsn(), V2.Vsn())
	}
}

func TestSerializerNegotiate(t *testing.T) {
	tests := []struct {
		vsn  string
		want Serializer
	}{
		{"", V1},
		{"1.0.0", V1},
		{"1.0.7", V1},
		{"2.0.0", V2},
		{"2.0.1", V2},
		{"2.1.0", nil},
		{"1.1.0", nil},
		{"3.0.0", nil},
		{"0.9.0", nil},
		{"two", nil},
		{"02.0.0", nil},
		{"2.00.0", nil},
		{"+2.0.0", nil},
		{"2.+0.0", nil},
		{"-2.0.0", nil},
		{"2.0", nil},
		{"2", nil},
		{"2.0.0.0", nil},
		{" 2.0.0", nil},
	}
	for _, tt := range tests {
		got, err := Negotiate(tt.vsn)
		if tt.want == nil {
			if err == nil || !errors.Is(err, ErrUnsupportedVsn) {
				t.Errorf("Negotiate(%q) = %v, %v; want ErrUnsupportedVsn", tt.vsn, got, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("Negotiate(%q) = %v, %v; want %s", tt.vsn, got, err, tt.want.Vsn())
		}
	}
}

// decodeTests are frames as a client or a server sends them (§2.2, §2.3)
// with the Message each decodes to.
var decodeTests = []struct {
	name string
	ser  Serializer
	in   string
	want Message
}{
	// §2.2
	{"v1 join", V1, `{"topic":"room:lobby","event":"phx_join","payload":{},"ref":"1","join_ref":"1"}`,
		Message{JoinRef: `"1"`, Ref: `"1"`, Topic: "room:lobby", Event: "phx_join", Payload: []byte(`{}`)}},
	{"v1 reply", V1, `{"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}`,
		Message{Ref: `"1"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{}`)}},
	{"v1 push", V1, `{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"},"ref":null}`,
		Message{Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hi"}`)}},
	{"v1 numeric refs", V1, `{"topic":"t","event":"e","payload":{},"ref":5,"join_ref":-1.5e3}`,
		Message{JoinRef: `-1.5e3`, Ref: `5`, Topic: "t", Event: "e", Payload: []byte(`{}`)}},
	{"v1 null payload", V1, `{"topic":"t","event":"e","payload":null,"ref":null,"join_ref":null}`,
		Message{Topic: "t", Event: "e", Payload: []byte(`null`)}},
	{"v1 key order and unknown keys", V1, `{"ref":"2","x":[1,{"topic":3}],"payload":[1],"event":"e","topic":"t"}`,
		Message{Ref: `"2"`, Topic: "t", Event: "e", Payload: []byte(`[1]`)}},
	{"v1 duplicate keys, last wins", V1, `{"topic":"a","event":"e","payload":1,"ref":"1","topic":"b"}`,
		Message{Ref: `"1"`, Topic: "b", Event: "e", Payload: []byte(`1`)}},
	{"v1 escaped key", V1, `{"t\u006fpic":"t","event":"e","payload":{},"ref":"1"}`,
		Message{Ref: `"1"`, Topic: "t", Event: "e", Payload: []byte(`{}`)}},
	{"v1 keys are case-sensitive", V1, `{"TOPIC":"x","topic":"t","event":"e","payload":{},"ref":"1"}`,
		Message{Ref: `"1"`, Topic: "t", Event: "e", Payload: []byte(`{}`)}},
	{"v1 whitespace", V1, " {\n \"topic\" : \"t\" ,\t\"event\":\"e\" , \"payload\" : { \"a\" : 1 } , \"ref\" : \"1\" } \n",
		Message{Ref: `"1"`, Topic: "t", Event: "e", Payload: []byte(`{ "a" : 1 }`)}},

	// §2.3
	{"v2 join", V2, `["3","3","room:lobby","phx_join",{"nick":"ann"}]`,
		Message{JoinRef: `"3"`, Ref: `"3"`, Topic: "room:lobby", Event: "phx_join", Payload: []byte(`{"nick":"ann"}`)}},
	{"v2 join reply", V2, `["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]`,
		Message{JoinRef: `"3"`, Ref: `"3"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{}`)}},
	{"v2 push", V2, `["3","4","room:lobby","new_msg",{"body":"hi"}]`,
		Message{JoinRef: `"3"`, Ref: `"4"`, Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hi"}`)}},
	{"v2 reply with response", V2, `["3","4","room:lobby","phx_reply",{"status":"ok","response":{"id":17}}]`,
		Message{JoinRef: `"3"`, Ref: `"4"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{"id":17}`)}},
	{"v2 broadcast", V2, `[null,null,"room:lobby","new_msg",{"body":"hi","from":"ann"}]`,
		Message{Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hi","from":"ann"}`)}},
	{"v2 channel push", V2, `["3",null,"room:lobby","notice",{"text":"welcome"}]`,
		Message{JoinRef: `"3"`, Topic: "room:lobby", Event: "notice", Payload: []byte(`{"text":"welcome"}`)}},
	{"v2 numeric refs", V2, `[7,5,"t","e",{}]`,
		Message{JoinRef: `7`, Ref: `5`, Topic: "t", Event: "e", Payload: []byte(`{}`)}},
	{"v2 extra elements ignored", V2, `["1","2","t","e",{"a":[1,2]},"extra",{"x":[]},null]`,
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: "e", Payload: []byte(`{"a":[1,2]}`)}},
	{"v2 null payload", V2, `[null,null,"t","e",null]`,
		Message{Topic: "t", Event: "e", Payload: []byte(`null`)}},
	{"v2 whitespace", V2, " [ \"1\" ,\tnull , \"t\" ,\n\"e\" , { \"a\" : \"]\" } ] ",
		Message{JoinRef: `"1"`, Topic: "t", Event: "e", Payload: []byte(`{ "a" : "]" }`)}},
	{"v2 escapes", V2, `["a\"b","\u0031","room:\u006cobby","e\n",{}]`,
		Message{JoinRef: `"a\"b"`, Ref: `"\u0031"`, Topic: "room:lobby", Event: "e\n", Payload: []byte(`{}`)}},
	{"v2 non-ASCII", V2, `[null,null,"salle:été","nouveau_💬",{}]`,
		Message{Topic: "salle:été", Event: "nouveau_💬", Payload: []byte(`{}`)}},
	{"v2 custom status, reply keys swapped", V2, `["1","2","t","phx_reply",{"response":[1],"status":"partial"}]`,
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: EventReply, Status: "partial", Payload: []byte(`[1]`)}},
	{"v2 reply without status left as is", V2, `["1","2","t","phx_reply",{"response":{}}]`,
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: EventReply, Payload: []byte(`{"response":{}}`)}},
	{"v2 reply with non-string status left as is", V2, `["1","2","t","phx_reply",{"status":1,"response":{}}]`,
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: EventReply, Payload: []byte(`{"status":1,"response":{}}`)}},
	{"v2 reply with non-object payload left as is", V2, `["1","2","t","phx_reply",5]`,
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: EventReply, Payload: []byte(`5`)}},
	{"v2 reply with escaped keys", V2, `["1","2","t","phx_reply",{ "st\u0061tus" : "ok" , "response" : null }]`,
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: EventReply, Status: "ok", Payload: []byte(`null`)}},
	{"v2 empty strings", V2, `["","","","",""]`,
		Message{JoinRef: `""`, Ref: `""`, Payload: []byte(`""`)}},
	// Invalid UTF-8 only where nothing relays it.
	{"v2 invalid UTF-8 in an extra element", V2, "[\"1\",\"2\",\"t\",\"e\",{},\"\xff\"]",
		Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: "e", Payload: []byte(`{}`)}},
	{"v1 invalid UTF-8 in an ignored key", V1, "{\"event\":\"e\",\"payload\":{},\"ref\":\"2\",\"topic\":\"t\",\"x\":\"\xff\"}",
		Message{Ref: `"2"`, Topic: "t", Event: "e", Payload: []byte(`{}`)}},
}

func TestSerializerDecode(t *testing.T) {
	for _, tt := range decodeTests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.ser.Decode([]byte(tt.in), false)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !msgEqual(got, tt.want) {
				t.Errorf("Decode = %+v\nwant     %+v", got, tt.want)
			}
			if got.Binary {
				t.Error("text frame decoded as binary")
			}
		})
	}
}

// The decoded Message aliases data only in Payload: topic and refs are
// kept by the runtime (channel maps) after the read buffer is reused.
func TestSerializerDecodeCopiesStrings(t *testing.T) {
	for _, tc := range []struct {
		ser    Serializer
		in     string
		binary bool
	}{
		{V1, `{"topic":"room:1","event":"e","payload":{},"ref":"1","join_ref":"2"}`, false},
		{V2, `["2","1","room:1","e",{}]`, false},
		{V2, "\x00\x01\x01\x06\x01" + "21room:1e" + "{}", true},
	} {
		data := []byte(tc.in)
		m, err := tc.ser.Decode(data, tc.binary)
		if err != nil {
			t.Fatal(err)
		}
		for i := range data {
			data[i] = 'X'
		}
		if m.Topic != "room:1" || m.Event != "e" || m.Ref.Text() != "1" || m.JoinRef.Text() != "2" {
			t.Errorf("%s: fields changed with the input buffer: %+v", tc.ser.Vsn(), m)
		}
	}
}

var malformedTests = []struct {
	name   string
	ser    Serializer
	in     string
	binary bool
}{
	{"v1 empty", V1, ``, false},
	{"v1 not JSON", V1, `{topic:1}`, false},
	{"v1 truncated", V1, `{"topic":"t","event":"e","payload":{},"ref":"1"`, false},
	{"v1 trailing garbage", V1, `{"topic":"t","event":"e","payload":{},"ref":"1"} x`, false},
	{"v1 array", V1, `[null,null,"t","e",{}]`, false},
	{"v1 string", V1, `"t"`, false},
	{"v1 null", V1, `null`, false},
	{"v1 empty object", V1, `{}`, false},
	{"v1 missing topic", V1, `{"event":"e","payload":{},"ref":"1"}`, false},
	{"v1 missing event", V1, `{"topic":"t","payload":{},"ref":"1"}`, false},
	{"v1 missing payload", V1, `{"topic":"t","event":"e","ref":"1"}`, false},
	{"v1 missing ref", V1, `{"topic":"t","event":"e","payload":{}}`, false},
	{"v1 topic number", V1, `{"topic":1,"event":"e","payload":{},"ref":"1"}`, false},
	{"v1 topic null", V1, `{"topic":null,"event":"e","payload":{},"ref":"1"}`, false},
	{"v1 event object", V1, `{"topic":"t","event":{},"payload":{},"ref":"1"}`, false},
	{"v1 ref bool", V1, `{"topic":"t","event":"e","payload":{},"ref":true}`, false},
	{"v1 ref object", V1, `{"topic":"t","event":"e","payload":{},"ref":{"a":1}}`, false},
	{"v1 join_ref array", V1, `{"topic":"t","event":"e","payload":{},"ref":"1","join_ref":[]}`, false},
	{"v1 ref out of float range", V1, `{"topic":"t","event":"e","payload":{},"ref":1e400}`, false},
	{"v1 binary", V1, "\x00\x01\x01\x06\x06" + "37room:1upload", true},

	{"v2 empty", V2, ``, false},
	{"v2 whitespace only", V2, "  \n", false},
	{"v2 not JSON", V2, `[1,2,`, false},
	{"v2 trailing garbage", V2, `[null,null,"t","e",{}]]`, false},
	{"v2 object", V2, `{"topic":"t","event":"e","payload":{},"ref":"1"}`, false},
	{"v2 string", V2, `"[null,null,\"t\",\"e\",{}]"`, false},
	{"v2 empty array", V2, `[]`, false},
	{"v2 four elements", V2, `[null,null,"t","e"]`, false},
	{"v2 one element", V2, `[[null,null,"t","e",{}]]`, false},
	{"v2 join_ref bool", V2, `[false,null,"t","e",{}]`, false},
	{"v2 ref object", V2, `[null,{},"t","e",{}]`, false},
	{"v2 ref array", V2, `[null,[],"t","e",{}]`, false},
	{"v2 ref out of float range", V2, `[null,-1e999,"t","e",{}]`, false},
	{"v2 topic number", V2, `[null,null,1,"e",{}]`, false},
	{"v2 topic null", V2, `[null,null,null,"e",{}]`, false},
	{"v2 event array", V2, `[null,null,"t",["e"],{}]`, false},
	{"v2 control char in string", V2, "[null,null,\"t\x01\",\"e\",{}]", false},

	{"binary empty", V2, "", true},
	{"binary kind 1", V2, "\x01\x01\x01\x06\x02" + "37room:1ok", true},
	{"binary kind 2", V2, "\x02\x06\x05" + "room:1frame", true},
	{"binary kind 3", V2, "\x03\x00\x00\x00\x00", true},
	{"binary kind 0xff", V2, "\xff\x00\x00\x00\x00", true},
	{"binary one byte", V2, "\x00", true},
	{"binary header cut", V2, "\x00\x01\x01\x06", true},
	{"binary fields cut", V2, "\x00\x01\x01\x06\x06" + "37room:1uploa", true},
	{"binary lengths past end", V2, "\x00\xff\xff\xff\xff" + "abc", true},
	{"binary text frame", V2, "\x00\x00\x00\x00\x00", false},
}

func TestSerializerDecodeMalformed(t *testing.T) {
	for _, tt := range malformedTests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := tt.ser.Decode([]byte(tt.in), tt.binary)
			if err == nil {
				t.Fatalf("Decode = %+v, want an error", m)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("error %v does not wrap ErrMalformed", err)
			}
			if !strings.HasPrefix(err.Error(), "channels: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

// encodeTests are messages as the server sends them (§2.2, §2.3, §2.5)
// with their exact encodings: keys in Phoenix's alphabetical order.
var encodeTests = []struct {
	name string
	ser  Serializer
	m    Message
	want string
}{
	{"v1 reply", V1, Message{JoinRef: `"1"`, Ref: `"1"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{}`)},
		`{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"1","topic":"room:lobby"}`},
	{"v1 push", V1, Message{JoinRef: `"1"`, Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hi"}`)},
		`{"event":"new_msg","payload":{"body":"hi"},"ref":null,"topic":"room:lobby"}`},
	{"v1 numeric ref echoed as a number", V1, Message{JoinRef: `7`, Ref: `5`, Topic: "t", Event: EventReply, Status: "error", Payload: []byte(`{"reason":"x"}`)},
		`{"event":"phx_reply","payload":{"response":{"reason":"x"},"status":"error"},"ref":5,"topic":"t"}`},
	{"v1 null payload", V1, Message{Ref: `"2"`, Topic: "t", Event: "e", Payload: []byte(`null`)},
		`{"event":"e","payload":null,"ref":"2","topic":"t"}`},
	{"v1 empty payload and status", V1, Message{Ref: `"2"`, Topic: "t", Event: EventReply},
		`{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"2","topic":"t"}`},
	{"v1 close", V1, Message{JoinRef: `"1"`, Ref: `"1"`, Topic: "t", Event: EventClose},
		`{"event":"phx_close","payload":{},"ref":"1","topic":"t"}`},
	{"v1 escaping", V1, Message{Topic: "a\"b", Event: "ü\n\xff", Payload: []byte(`{}`)},
		`{"event":"ü\n\ufffd","payload":{},"ref":null,"topic":"a\"b"}`},

	{"v2 join reply", V2, Message{JoinRef: `"3"`, Ref: `"3"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{}`)},
		`["3","3","room:lobby","phx_reply",{"response":{},"status":"ok"}]`},
	{"v2 reply with response", V2, Message{JoinRef: `"3"`, Ref: `"4"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{"id":17}`)},
		`["3","4","room:lobby","phx_reply",{"response":{"id":17},"status":"ok"}]`},
	{"v2 broadcast", V2, Message{Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hi","from":"ann"}`)},
		`[null,null,"room:lobby","new_msg",{"body":"hi","from":"ann"}]`},
	{"v2 channel push", V2, Message{JoinRef: `"3"`, Topic: "room:lobby", Event: "notice", Payload: []byte(`{"text":"welcome"}`)},
		`["3",null,"room:lobby","notice",{"text":"welcome"}]`},
	{"v2 numeric refs echoed as numbers", V2, Message{JoinRef: `7`, Ref: `5`, Topic: "t", Event: EventReply, Status: "partial"},
		`[7,5,"t","phx_reply",{"response":{},"status":"partial"}]`},
	{"v2 socket-level reply", V2, Message{Ref: `"9"`, Topic: TopicPhoenix, Event: EventReply},
		`[null,"9","phoenix","phx_reply",{"response":{},"status":"ok"}]`},
	{"v2 error", V2, Message{JoinRef: `"3"`, Ref: `"3"`, Topic: "t", Event: EventError, Payload: []byte(`{"reason":"channel_crash"}`)},
		`["3","3","t","phx_error",{"reason":"channel_crash"}]`},
	{"v2 explicit null ref text", V2, Message{JoinRef: `null`, Ref: `null`, Topic: "t", Event: "e", Payload: []byte(`{}`)},
		`[null,null,"t","e",{}]`},
	{"v2 escaping", V2, Message{Topic: "\x00<&>", Event: "\\", Payload: []byte(`{}`)},
		`[null,null,"\u0000<&>","\\",{}]`},
}

// protocolFrames maps encodeTests to the frames as PROTOCOL.md writes them
// (keys in a readable order), which must be the same JSON values.
var protocolFrames = map[string]string{
	"v1 reply":               `{"topic":"room:lobby","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":"1"}`,
	"v1 push":                `{"topic":"room:lobby","event":"new_msg","payload":{"body":"hi"},"ref":null}`,
	"v2 join reply":          `["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]`,
	"v2 reply with response": `["3","4","room:lobby","phx_reply",{"status":"ok","response":{"id":17}}]`,
	"v2 broadcast":           `[null,null,"room:lobby","new_msg",{"body":"hi","from":"ann"}]`,
	"v2 channel push":        `["3",null,"room:lobby","notice",{"text":"welcome"}]`,
}

func TestSerializerEncode(t *testing.T) {
	for _, tt := range encodeTests {
		t.Run(tt.name, func(t *testing.T) {
			prefix := []byte("prefix")
			f, err := tt.ser.Encode(prefix, &tt.m)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if f.Binary {
				t.Error("text message encoded as binary")
			}
			if !bytes.HasPrefix(f.Data, prefix) {
				t.Fatalf("Encode did not append to dst: %q", f.Data)
			}
			got := f.Data[len(prefix):]
			if string(got) != tt.want {
				t.Errorf("Encode = %s\nwant     %s", got, tt.want)
			}
			if !json.Valid(got) {
				t.Errorf("Encode produced invalid JSON %q", got)
			}
			if p, ok := protocolFrames[tt.name]; ok && !jsonEqual(t, got, []byte(p)) {
				t.Errorf("Encode = %s, not the value of PROTOCOL.md's %s", got, p)
			}
			if tt.ser == V1 && bytes.Contains(got, []byte("join_ref")) {
				t.Errorf("V1 output carries join_ref: %s", got)
			}
		})
	}
}

// V1 output never carries join_ref (§2.2), whatever the message holds.
func TestV1NeverEmitsJoinRef(t *testing.T) {
	for _, m := range []Message{
		{JoinRef: `"1"`, Ref: `"1"`, Topic: "t", Event: EventReply},
		{JoinRef: `"1"`, Topic: "t", Event: "push"},
		{JoinRef: `"1"`, Ref: `"1"`, Topic: "t", Event: EventClose},
		{JoinRef: `12`, Topic: "t", Event: EventError, Payload: []byte(`{"join_ref":1}`)},
	} {
		f, err := V1.Encode(nil, &m)
		if err != nil {
			t.Fatal(err)
		}
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(f.Data, &obj); err != nil {
			t.Fatal(err)
		}
		if _, ok := obj["join_ref"]; ok || len(obj) != 4 {
			t.Errorf("V1 frame %s: want exactly event, payload, ref, topic", f.Data)
		}
	}
}

func TestV1BinaryUnsupported(t *testing.T) {
	m := Message{Topic: "t", Event: "e", Payload: []byte{1, 2}, Binary: true}
	if _, err := V1.Encode(nil, &m); !errors.Is(err, ErrBinaryUnsupported) {
		t.Errorf("Encode binary: %v, want ErrBinaryUnsupported", err)
	}
	m.Event = EventReply
	if _, err := V1.Encode(nil, &m); !errors.Is(err, ErrBinaryUnsupported) {
		t.Errorf("Encode binary reply: %v, want ErrBinaryUnsupported", err)
	}
	_, _, err := V1.(pubsub.Encoder).EncodeBroadcast(&pubsub.Message{Topic: "t", Event: "e", Binary: true})
	if !errors.Is(err, ErrBinaryUnsupported) {
		t.Errorf("EncodeBroadcast binary: %v, want ErrBinaryUnsupported", err)
	}
}

// The worked examples of §2.4, byte for byte.
const (
	hexClientPush = "00 01 01 06 06 33 37 72 6f 6f 6d 3a 31 75 70 6c 6f 61 64 de ad be ef"
	hexServerPush = "00 01 06 05 33 72 6f 6f 6d 3a 31 62 61 64 67 65 89 50"
	hexReply      = "01 01 01 06 02 33 37 72 6f 6f 6d 3a 31 6f 6b 01 02"
	hexBroadcast  = "02 06 05 72 6f 6f 6d 3a 31 66 72 61 6d 65 ff"
)

func TestV2BinaryClientPush(t *testing.T) {
	data := unhex(t, hexClientPush)
	got, err := V2.Decode(data, true)
	if err != nil {
		t.Fatal(err)
	}
	want := Message{JoinRef: `"3"`, Ref: `"7"`, Topic: "room:1", Event: "upload", Payload: []byte{0xde, 0xad, 0xbe, 0xef}, Binary: true}
	if !msgEqual(got, want) {
		t.Errorf("Decode = %+v\nwant     %+v", got, want)
	}
	f, err := EncodeClientBinary(nil, &got)
	if err != nil {
		t.Fatal(err)
	}
	if !f.Binary || !bytes.Equal(f.Data, data) {
		t.Errorf("EncodeClientBinary = % x, want % x", f.Data, data)
	}
}

// §2.4: length 0 is the empty string, not null.
func TestV2BinaryEmptyRefs(t *testing.T) {
	got, err := V2.Decode([]byte("\x00\x00\x00\x06\x06room:1upload"), true)
	if err != nil {
		t.Fatal(err)
	}
	want := Message{JoinRef: `""`, Ref: `""`, Topic: "room:1", Event: "upload", Binary: true}
	if !msgEqual(got, want) {
		t.Errorf("Decode = %+v\nwant     %+v", got, want)
	}
	if got.JoinRef.IsNull() || got.Ref.IsNull() {
		t.Error("empty binary refs decoded as null")
	}
	// A reply to it echoes the empty ref: in text as "" ...
	reply := Message{JoinRef: got.JoinRef, Ref: got.Ref, Topic: got.Topic, Event: EventReply}
	f, err := V2.Encode(nil, &reply)
	if err != nil {
		t.Fatal(err)
	}
	if want := `["","","room:1","phx_reply",{"response":{},"status":"ok"}]`; string(f.Data) != want {
		t.Errorf("text reply = %s, want %s", f.Data, want)
	}
	// ... and in binary as length 0.
	reply.Binary = true
	if f, err = V2.Encode(nil, &reply); err != nil {
		t.Fatal(err)
	}
	if want := "\x01\x00\x00\x06\x02room:1ok"; string(f.Data) != want {
		t.Errorf("binary reply = %q, want %q", f.Data, want)
	}
}

// A binary topic that is not UTF-8 used to be accepted (found by
// FuzzV2DecodeBinary), and reached V1 and V2 text sockets as U+FFFD:
// refused now, as in text frames. A text reply to a topic a Go channel
// made up still carries U+FFFD in its place.
func TestV2BinaryInvalidUTF8Topic(t *testing.T) {
	_, err := V2.Decode([]byte("\x00\x01\x01\x06\x060000000\x8a000000"), true)
	if err != errWireHeaderUTF8 {
		t.Fatalf("Decode = %v, want %v", err, errWireHeaderUTF8)
	}
	reply := Message{JoinRef: `"0"`, Ref: `"0"`, Topic: "00000\x8a", Event: EventReply}
	f, err := V2.Encode(nil, &reply)
	if err != nil {
		t.Fatal(err)
	}
	if want := `["0","0","00000\ufffd","phx_reply",{"response":{},"status":"ok"}]`; string(f.Data) != want {
		t.Errorf("reply = %s, want %s", f.Data, want)
	}
}

func TestV2BinaryEncode(t *testing.T) {
	tests := []struct {
		name string
		m    Message
		want string
	}{
		{"push", Message{JoinRef: `"3"`, Topic: "room:1", Event: "badge", Payload: []byte{0x89, 0x50}, Binary: true}, hexServerPush},
		// A server push has no ref field (§2.4).
		{"push with a ref", Message{JoinRef: `"3"`, Ref: `"7"`, Topic: "room:1", Event: "badge", Payload: []byte{0x89, 0x50}, Binary: true}, hexServerPush},
		{"push numeric join_ref", Message{JoinRef: `3`, Topic: "room:1", Event: "badge", Payload: []byte{0x89, 0x50}, Binary: true}, hexServerPush},
		{"push without join_ref", Message{Ref: `"7"`, Topic: "room:1", Event: "badge", Payload: []byte{0x89, 0x50}, Binary: true},
			"00 00 06 05 72 6f 6f 6d 3a 31 62 61 64 67 65 89 50"},
		{"reply", Message{JoinRef: `"3"`, Ref: `"7"`, Topic: "room:1", Event: EventReply, Status: "ok", Payload: []byte{1, 2}, Binary: true}, hexReply},
		{"reply default status", Message{JoinRef: `"3"`, Ref: `"7"`, Topic: "room:1", Event: EventReply, Payload: []byte{1, 2}, Binary: true}, hexReply},
		{"reply escaped ref", Message{JoinRef: `"\u0033"`, Ref: `"7"`, Topic: "room:1", Event: EventReply, Payload: []byte{1, 2}, Binary: true}, hexReply},
		{"reply null refs", Message{Topic: "room:1", Event: EventReply, Status: "error", Binary: true},
			"01 00 00 06 05 72 6f 6f 6d 3a 31 65 72 72 6f 72"},
		{"broadcast", Message{Topic: "room:1", Event: "frame", Payload: []byte{0xff}, Binary: true}, hexBroadcast},
		{"broadcast empty payload", Message{Topic: "room:1", Event: "frame", Binary: true}, "02 06 05 72 6f 6f 6d 3a 31 66 72 61 6d 65"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := V2.Encode([]byte{0xaa}, &tt.m)
			if err != nil {
				t.Fatal(err)
			}
			if want := append([]byte{0xaa}, unhex(t, tt.want)...); !bytes.Equal(f.Data, want) || !f.Binary {
				t.Errorf("Encode = % x (binary %v)\nwant     % x", f.Data, f.Binary, want)
			}
		})
	}
}

func TestDecodeServerBinary(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want Message
	}{
		{"push", hexServerPush, Message{JoinRef: `"3"`, Topic: "room:1", Event: "badge", Payload: []byte{0x89, 0x50}, Binary: true}},
		{"reply", hexReply, Message{JoinRef: `"3"`, Ref: `"7"`, Topic: "room:1", Event: EventReply, Status: "ok", Payload: []byte{1, 2}, Binary: true}},
		{"broadcast", hexBroadcast, Message{Topic: "room:1", Event: "frame", Payload: []byte{0xff}, Binary: true}},
		// As phoenix.js: length 0 reads as "".
		{"push empty join_ref", "00 00 01 01 74 65", Message{JoinRef: `""`, Topic: "t", Event: "e", Binary: true}},
		{"reply empty refs", "01 00 00 01 02 74 6f 6b", Message{JoinRef: `""`, Ref: `""`, Topic: "t", Event: EventReply, Status: "ok", Binary: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DecodeServerBinary(unhex(t, tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if !msgEqual(got, tt.want) {
				t.Errorf("DecodeServerBinary = %+v\nwant                 %+v", got, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "03", "00", "00 01 01", "00 01 06 05 33 72", "01 01 01 06", "01 01 01 06 02 33 37 72 6f 6f 6d 3a 31 6f", "02", "02 06", "02 06 05 72 6f 6f 6d 3a 31 66 72 61 6d"} {
		if m, err := DecodeServerBinary(unhex(t, bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeServerBinary(%s) = %+v, %v; want ErrMalformed", bad, m, err)
		}
	}
}

// Header fields are one byte long on the wire (§2.4): 255 bytes fit, 256
// do not.
func TestV2BinaryFieldLimits(t *testing.T) {
	s255, s256 := strings.Repeat("x", 255), strings.Repeat("x", 256)
	r255, r256 := StringRef(s255), StringRef(s256)
	type msgFn func(ref Ref, s string) Message
	cases := []struct {
		name string
		mk   msgFn
	}{
		{"push join_ref", func(r Ref, s string) Message { return Message{JoinRef: r, Topic: "t", Event: "e", Binary: true} }},
		{"push topic", func(r Ref, s string) Message { return Message{JoinRef: `"1"`, Topic: s, Event: "e", Binary: true} }},
		{"push event", func(r Ref, s string) Message { return Message{JoinRef: `"1"`, Topic: "t", Event: s, Binary: true} }},
		{"reply join_ref", func(r Ref, s string) Message {
			return Message{JoinRef: r, Ref: `"1"`, Topic: "t", Event: EventReply, Binary: true}
		}},
		{"reply ref", func(r Ref, s string) Message {
			return Message{JoinRef: `"1"`, Ref: r, Topic: "t", Event: EventReply, Binary: true}
		}},
		{"reply topic", func(r Ref, s string) Message { return Message{Ref: `"1"`, Topic: s, Event: EventReply, Binary: true} }},
		{"reply status", func(r Ref, s string) Message {
			return Message{Ref: `"1"`, Topic: "t", Event: EventReply, Status: s, Binary: true}
		}},
		{"broadcast topic", func(r Ref, s string) Message { return Message{Topic: s, Event: "e", Binary: true} }},
		{"broadcast event", func(r Ref, s string) Message { return Message{Topic: "t", Event: s, Binary: true} }},
	}
	for _, c := range cases {
		m := c.mk(r255, s255)
		f, err := V2.Encode(nil, &m)
		if err != nil {
			t.Errorf("%s: 255 bytes: %v", c.name, err)
		} else if m.Event == EventReply {
			if back, err := DecodeServerBinary(f.Data); err != nil || !msgEqual(back, withStatus(m)) {
				t.Errorf("%s: 255 bytes: decoded back to %+v, %v", c.name, back, err)
			}
		}
		m = c.mk(r256, s256)
		if _, err := V2.Encode(nil, &m); !errors.Is(err, ErrFieldTooLong) {
			t.Errorf("%s: 256 bytes: %v, want ErrFieldTooLong", c.name, err)
		}
	}

	// The ref of a server push is not sent, so its length does not matter.
	m := Message{JoinRef: `"1"`, Ref: r256, Topic: "t", Event: "e", Binary: true}
	if _, err := V2.Encode(nil, &m); err != nil {
		t.Errorf("push with a long ref: %v", err)
	}
	// Multi-byte characters count in bytes.
	m = Message{Topic: strings.Repeat("é", 128), Event: "e", Binary: true}
	if _, err := V2.Encode(nil, &m); !errors.Is(err, ErrFieldTooLong) {
		t.Errorf("256-byte topic of 128 runes: %v, want ErrFieldTooLong", err)
	}

	enc := V2.(pubsub.Encoder)
	if _, _, err := enc.EncodeBroadcast(&pubsub.Message{Topic: s255, Event: s255, Binary: true}); err != nil {
		t.Errorf("EncodeBroadcast 255: %v", err)
	}
	for _, pm := range []*pubsub.Message{{Topic: s256, Event: "e", Binary: true}, {Topic: "t", Event: s256, Binary: true}} {
		if _, _, err := enc.EncodeBroadcast(pm); !errors.Is(err, ErrFieldTooLong) {
			t.Errorf("EncodeBroadcast 256: %v, want ErrFieldTooLong", err)
		}
	}

	// Client pushes: encoding and decoding 255-byte fields.
	for i := range 4 {
		m := Message{JoinRef: `"1"`, Ref: `"2"`, Topic: "t", Event: "e", Payload: []byte("p"), Binary: true}
		long := []*string{(*string)(&m.JoinRef), (*string)(&m.Ref), &m.Topic, &m.Event}[i]
		if i < 2 {
			*long = string(r255)
		} else {
			*long = s255
		}
		f, err := EncodeClientBinary(nil, &m)
		if err != nil {
			t.Fatalf("EncodeClientBinary field %d at 255: %v", i, err)
		}
		back, err := V2.Decode(f.Data, true)
		if err != nil || !msgEqual(back, m) {
			t.Errorf("field %d at 255: decoded %+v, %v", i, back, err)
		}
		if i < 2 {
			*long = string(r256)
		} else {
			*long = s256
		}
		if _, err := EncodeClientBinary(nil, &m); !errors.Is(err, ErrFieldTooLong) {
			t.Errorf("EncodeClientBinary field %d at 256: %v, want ErrFieldTooLong", i, err)
		}
	}
}

// withStatus is m as DecodeServerBinary returns it: replies carry a
// status, and refs are strings, "" for null (length 0).
func withStatus(m Message) Message {
	if m.Event == EventReply && m.Status == "" {
		m.Status = "ok"
	}
	m.JoinRef = StringRef(m.JoinRef.Text())
	if m.Event == EventReply {
		m.Ref = StringRef(m.Ref.Text())
	}
	return m
}

// roundTripMessages are realistic server messages; each must decode back
// to itself.
var roundTripMessages = []Message{
	{JoinRef: `"3"`, Ref: `"3"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{}`)},
	{JoinRef: `"3"`, Ref: `"4"`, Topic: "room:lobby", Event: EventReply, Status: "error", Payload: []byte(`{"reason":"unmatched topic"}`)},
	{Ref: `"5"`, Topic: TopicPhoenix, Event: EventReply, Status: "ok", Payload: []byte(`{}`)},
	{JoinRef: `12`, Ref: `13`, Topic: "room:lobby", Event: EventReply, Status: "partial", Payload: []byte(`[1,"two",null]`)},
	{Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"héllo \"world\"","n":[1,2,{"x":null}]}`)},
	{JoinRef: `"3"`, Topic: "room:lobby", Event: "notice", Payload: []byte(`{"text":"welcome"}`)},
	{JoinRef: `"3"`, Ref: `"3"`, Topic: "room:lobby", Event: EventClose, Payload: []byte(`{}`)},
	{JoinRef: `"3"`, Ref: `"3"`, Topic: "room:lobby", Event: EventError, Payload: []byte(`{"reason":"channel_crash"}`)},
	{Topic: "a\"b\\c\n\u2028", Event: "ünïcødé ✓", Payload: []byte(`null`)},
	{JoinRef: `""`, Ref: `""`, Topic: "", Event: "", Payload: []byte(`""`)},
}

func TestSerializerRoundTrip(t *testing.T) {
	for i, m := range roundTripMessages {
		for _, ser := range []Serializer{V1, V2} {
			want := m
			if ser == V1 {
				want.JoinRef = NullRef // never sent in V1 (§2.2)
			}
			f, err := ser.Encode(nil, &m)
			if err != nil {
				t.Fatalf("%d %s: Encode: %v", i, ser.Vsn(), err)
			}
			got, err := ser.Decode(f.Data, f.Binary)
			if err != nil {
				t.Fatalf("%d %s: Decode(%s): %v", i, ser.Vsn(), f.Data, err)
			}
			if !msgEqual(got, want) {
				t.Errorf("%d %s: %s decoded to %+v\nwant %+v", i, ser.Vsn(), f.Data, got, want)
			}
		}

		// Binary: the server's frames go through DecodeServerBinary, a
		// client's through EncodeClientBinary and Decode.
		bm := m
		bm.Binary, bm.Payload = true, []byte{0, 1, 2, 0xff, '"'}
		f, err := V2.Encode(nil, &bm)
		if err != nil {
			t.Fatalf("%d: binary Encode: %v", i, err)
		}
		got, err := DecodeServerBinary(f.Data)
		if err != nil {
			t.Fatalf("%d: DecodeServerBinary(% x): %v", i, f.Data, err)
		}
		// Binary refs are bare text: numbers come back as strings, null
		// as "" (as in phoenix.js). A push has no ref, a broadcast neither
		// ref.
		want := withStatus(bm)
		switch {
		case bm.Event == EventReply:
		case bm.JoinRef.IsNull() && bm.Ref.IsNull():
			want.JoinRef, want.Ref = NullRef, NullRef
		default:
			want.Ref = NullRef
		}
		if !msgEqual(got, want) {
			t.Errorf("%d: binary % x decoded to %+v\nwant %+v", i, f.Data, got, want)
		}

		cf, err := EncodeClientBinary(nil, &bm)
		if err != nil {
			t.Fatalf("%d: EncodeClientBinary: %v", i, err)
		}
		got, err = V2.Decode(cf.Data, true)
		if err != nil {
			t.Fatalf("%d: Decode client binary: %v", i, err)
		}
		want = bm
		want.Status = ""
		want.JoinRef, want.Ref = StringRef(bm.JoinRef.Text()), StringRef(bm.Ref.Text())
		if !msgEqual(got, want) {
			t.Errorf("%d: client binary decoded to %+v\nwant %+v", i, got, want)
		}
	}
}

func TestEncodeBroadcast(t *testing.T) {
	text := pubsub.Message{Topic: "room:lobby", Event: "new_msg", Payload: []byte(`{"body":"hi","from":"ann"}`)}
	empty := pubsub.Message{Topic: "room:\"x\"\n", Event: "é"}
	bin := pubsub.Message{Topic: "room:1", Event: "frame", Payload: []byte{0xff}, Binary: true}
	at := func(m *pubsub.Message, epoch string, offset uint64) pubsub.Message {
		return pubsub.Message{Topic: m.Topic, Event: m.Event, Payload: m.Payload, Binary: m.Binary, Pos: pubsub.Position{Epoch: epoch, Offset: offset}}
	}
	posText, posMax, posZero, posBin := at(&text, "e-1_Z", 42), at(&empty, "x", math.MaxUint64), at(&text, "e", 0), at(&bin, "e", 7)
	tests := []struct {
		ser        Serializer
		m          *pubsub.Message
		want       string
		wantBinary bool
	}{
		{V1, &text, `{"event":"new_msg","payload":{"body":"hi","from":"ann"},"ref":null,"topic":"room:lobby"}`, false},
		{V2, &text, `[null,null,"room:lobby","new_msg",{"body":"hi","from":"ann"}]`, false},
		{V1, &empty, `{"event":"é","payload":{},"ref":null,"topic":"room:\"x\"\n"}`, false},
		{V2, &empty, `[null,null,"room:\"x\"\n","é",{}]`, false},
		{V2, &bin, string(unhex(t, hexBroadcast)), true},
		// A broadcast of a topic with history carries its position as
		// the ref (PROTOCOL.md §12); a binary one has no ref to carry it.
		{V1, &posText, `{"event":"new_msg","payload":{"body":"hi","from":"ann"},"ref":"e-1_Z:42","topic":"room:lobby"}`, false},
		{V2, &posText, `[null,"e-1_Z:42","room:lobby","new_msg",{"body":"hi","from":"ann"}]`, false},
		{V1, &posMax, `{"event":"é","payload":{},"ref":"x:18446744073709551615","topic":"room:\"x\"\n"}`, false},
		{V2, &posMax, `[null,"x:18446744073709551615","room:\"x\"\n","é",{}]`, false},
		{V2, &posZero, `[null,"e:0","room:lobby","new_msg",{"body":"hi","from":"ann"}]`, false},
		{V2, &posBin, string(unhex(t, hexBroadcast)), true},
	}
	for _, tt := range tests {
		enc, ok := tt.ser.(pubsub.Encoder)
		if !ok {
			t.Fatalf("%s serializer is not a pubsub.Encoder", tt.ser.Vsn())
		}
		data, binary, err := enc.EncodeBroadcast(tt.m)
		if err != nil {
			t.Fatalf("%s: %v", tt.ser.Vsn(), err)
		}
		if string(data) != tt.want || binary != tt.wantBinary {
			t.Errorf("%s: EncodeBroadcast = %q (binary %v)\nwant %q", tt.ser.Vsn(), data, binary, tt.want)
		}
		if cap(data) != len(data) {
			t.Errorf("%s: EncodeBroadcast allocated %d bytes for %d", tt.ser.Vsn(), cap(data), len(data))
		}
		// It agrees with Encode of the same broadcast.
		m := Message{Topic: tt.m.Topic, Event: tt.m.Event, Payload: tt.m.Payload, Binary: tt.m.Binary}
		if !tt.m.Binary && !tt.m.Pos.IsZero() {
			m.Ref = StringRef(tt.m.Pos.String())
		}
		f, err := tt.ser.Encode(nil, &m)
		if err != nil || !bytes.Equal(f.Data, data) || f.Binary != binary {
			t.Errorf("%s: Encode = %q, %v; EncodeBroadcast = %q", tt.ser.Vsn(), f.Data, err, data)
		}
		allocs := testing.AllocsPerRun(50, func() { _, _, _ = enc.EncodeBroadcast(tt.m) })
		if allocs != 1 {
			t.Errorf("%s: EncodeBroadcast made %v allocations, want 1", tt.ser.Vsn(), allocs)
		}
	}
}

// pubsub caches one encoding per Encoder, compared with ==.
func TestSerializersAsEncoderKeys(t *testing.T) {
	e1, e2 := V1.(pubsub.Encoder), V2.(pubsub.Encoder)
	again, _ := Negotiate("2.0.0")
	if e1 == e2 || again.(pubsub.Encoder) != e2 {
		t.Fatal("serializers do not compare as distinct, stable keys")
	}
	m := &pubsub.Message{Topic: "t", Event: "e", Payload: []byte(`{}`)}
	d1, _, _ := m.Encoded(e1)
	d2, _, _ := m.Encoded(e2)
	d2again, _, _ := m.Encoded(again.(pubsub.Encoder))
	if string(d1) == string(d2) || &d2[0] != &d2again[0] {
		t.Errorf("cached encodings: %s, %s, %s", d1, d2, d2again)
	}
}

func TestSerializerEncodeAllocations(t *testing.T) {
	skipAllocCountsUnderRace(t)
	m := Message{JoinRef: `"3"`, Ref: `"4"`, Topic: "room:lobby", Event: EventReply, Status: "ok", Payload: []byte(`{"id":17}`)}
	bm := m
	bm.Binary = true
	for _, tc := range []struct {
		ser Serializer
		m   *Message
	}{{V1, &m}, {V2, &m}, {V2, &bm}} {
		// Sized from the start: one allocation into a nil dst.
		if n := testing.AllocsPerRun(50, func() { _, _ = tc.ser.Encode(nil, tc.m) }); n != 1 {
			t.Errorf("%s binary=%v: Encode(nil) made %v allocations, want 1", tc.ser.Vsn(), tc.m.Binary, n)
		}
		buf := make([]byte, 0, 512)
		if n := testing.AllocsPerRun(50, func() { _, _ = tc.ser.Encode(buf[:0], tc.m) }); n != 0 {
			t.Errorf("%s binary=%v: Encode into a large dst made %v allocations, want 0", tc.ser.Vsn(), tc.m.Binary, n)
		}
	}
}
