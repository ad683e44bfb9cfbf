package presence

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"testing"
)

// AppendJSON writes what encoding/json writes for the same State, but for
// the order of keys, for keys that need escaping too.
func TestStateJSONMatchesEncodingJSON(t *testing.T) {
	keys := []string{"", "42", "ann", `a"b`, `back\slash`, "tab\there", "nl\n", "<script>&", "é", "日本", "\xff\xfe invalid", "\u2028", "\x7f"}
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 200 {
		s := State{}
		for range rng.IntN(6) {
			k := keys[rng.IntN(len(keys))]
			if rng.IntN(2) == 0 {
				k = fmt.Sprintf("user-%d", rng.IntN(1000))
			}
			for range 1 + rng.IntN(3) {
				meta, _ := json.Marshal(map[string]any{"phx_ref": NewRef(), "online_at": rng.Int64(), "name": k})
				s.Add(k, meta)
			}
		}
		want, err := json.Marshal(map[string]Entry(s))
		if err != nil {
			t.Fatal(err)
		}
		if len(s) == 0 {
			want = []byte("{}")
		}
		got, _ := s.MarshalJSON()
		// Each key's member, as encoding/json writes it, appears whole.
		var members map[string]json.RawMessage
		if err := json.Unmarshal(got, &members); err != nil {
			t.Fatalf("round %d: %s: %v", round, got, err)
		}
		if len(members) != len(s) || len(got) != len(want) {
			t.Fatalf("round %d:\n got %s\nwant %s (in some order)", round, got, want)
		}
		for k, e := range s {
			member, _ := json.Marshal(map[string]Entry{k: e})
			if !bytes.Contains(got, member[1:len(member)-1]) {
				t.Fatalf("round %d: %s lacks %s", round, got, member)
			}
		}
	}
	var nilState State
	if got := nilState.AppendJSON([]byte("x")); string(got) != "x{}" {
		t.Fatalf("nil State: %s", got)
	}
}

// Any key and any valid meta give valid JSON that decodes back to them.
func FuzzStateJSON(f *testing.F) {
	f.Add("ann", `{"phx_ref":"x"}`, `{"a":[1,2]}`)
	f.Add("a\"\\<>&\x00\xff", `{"s":"\u2028"}`, `null`)
	f.Fuzz(func(t *testing.T, key, meta1, meta2 string) {
		s := State{}
		for _, m := range []string{meta1, meta2} {
			if json.Valid([]byte(m)) {
				s.Add(key, json.RawMessage(m))
			}
		}
		if len(s) == 0 {
			return
		}
		b := s.AppendJSON(nil)
		var back map[string]struct {
			Metas []json.RawMessage `json:"metas"`
		}
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("invalid JSON %q: %v", b, err)
		}
		if len(back) != 1 {
			t.Fatalf("%q decoded to %d keys", b, len(back))
		}
		for k, e := range back {
			// Invalid UTF-8 comes back as U+FFFD, as encoding/json has it.
			var want string
			_ = json.Unmarshal(mustMarshal(key), &want)
			if k != want {
				t.Fatalf("key %q came back as %q, want %q", key, k, want)
			}
			if len(e.Metas) != len(s[key].Metas) {
				t.Fatalf("%d metas came back, want %d", len(e.Metas), len(s[key].Metas))
			}
			for i, m := range e.Metas {
				var a, b any
				_ = json.Unmarshal(m, &a)
				_ = json.Unmarshal(s[key].Metas[i], &b)
				if fmt.Sprint(a) != fmt.Sprint(b) {
					t.Fatalf("meta %d came back as %s, want %s", i, m, s[key].Metas[i])
				}
			}
		}
	})
}

func mustMarshal(s string) []byte { b, _ := json.Marshal(s); return b }
