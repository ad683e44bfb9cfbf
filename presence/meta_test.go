package presence

import (
	"encoding/json"
	"maps"
	"testing"
)

// WithRefs writes the refs into a meta without decoding it when it names
// neither ref; what comes out means what the decoding path makes of it:
// the meta's members, phx_ref, and phx_ref_prev when given.
func TestWithRefsKeepsTheMeta(t *testing.T) {
	metas := []string{``, `{}`, ` { } `, `{"online_at":1765000000000}`, "{\n\t\"a\": [1, {\"b\": null}], \"c\": \"<&>\" }\n",
		`{"phx_ref":"client","x":1}`, `{"y":"phx_ref_prev"}`, `{"nested":{"phx_ref":"x"}}`}
	for _, m := range metas {
		for _, prev := range []string{"", "PREV"} {
			got, err := WithRefs(json.RawMessage(m), "REF", prev)
			if err != nil {
				t.Fatalf("%q: %v", m, err)
			}
			var fields map[string]any
			if err := json.Unmarshal(got, &fields); err != nil {
				t.Fatalf("%q gave %s: %v", m, got, err)
			}
			want := map[string]any{}
			if m != `` {
				if err := json.Unmarshal([]byte(m), &want); err != nil {
					t.Fatal(err)
				}
			}
			want["phx_ref"] = "REF"
			delete(want, "phx_ref_prev")
			if prev != "" {
				want["phx_ref_prev"] = prev
			}
			if !maps.EqualFunc(fields, want, func(a, b any) bool { x, _ := json.Marshal(a); y, _ := json.Marshal(b); return string(x) == string(y) }) {
				t.Errorf("WithRefs(%q, %q) = %s, want the members of %v", m, prev, got, want)
			}
		}
	}
	for _, bad := range []string{`[]`, `"x"`, `1`, `null`, `{`, `{"a":}`, `{}x`, "{}\u00a0"} {
		if _, err := WithRefs(json.RawMessage(bad), "REF", ""); err != ErrNotObject {
			t.Errorf("WithRefs(%q) = %v, want ErrNotObject", bad, err)
		}
	}
}
