package channels

import "testing"

// TestRecoveryQuery: what a join's params ask of the history, escaped
// keys included (the quick look for the keys must not miss them).
func TestRecoveryQuery(t *testing.T) {
	for _, tc := range []struct {
		params string
		asked  joinAsk
		bad    bool
	}{
		{`{}`, askNothing, false},
		{`{"user":"u1"}`, askNothing, false},
		{`{"user":"history buff"}`, askNothing, false},
		{`{"since":"e:3"}`, askSince, false},
		{`{"\u0073ince":"e:3"}`, askSince, false},
		{`{"since":null,"history":2}`, askHistory, false},
		{`{"hi\u0073tory":2}`, askHistory, false},
		{`{"since":"e"}`, askSince, true},
		{`{"history":"2"}`, askHistory, true},
		{`{"a":"\u00e9"}`, askNothing, false},
		{`[1]`, askNothing, false},
	} {
		_, asked, bad := recoveryQuery(Payload{Data: []byte(tc.params)}, 10)
		if asked != tc.asked || bad != tc.bad {
			t.Errorf("%s: asked %d bad %v, want %d %v", tc.params, asked, bad, tc.asked, tc.bad)
		}
	}
}
