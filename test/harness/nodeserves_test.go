package harness

import "testing"

func TestNodeServes(t *testing.T) {
	text := "aaa 10.0.0.2:6379@16379 myself,master - 0 0 1 connected 0-5460 10963 [10964->-bbb]\n" +
		"bbb 10.0.0.3:6379@16379 master - 0 0 2 connected 10922-10962 10964-16383\n"
	for _, c := range []struct {
		id   string
		slot int
		want bool
	}{
		{"aaa", 0, true}, {"aaa", 5460, true}, {"aaa", 10963, true}, {"aaa", 10964, false}, {"aaa", 5461, false},
		{"bbb", 10963, false}, {"bbb", 10964, true}, {"bbb", 10922, true}, {"ccc", 1, false},
	} {
		if got := nodeServes(text, c.id, c.slot); got != c.want {
			t.Errorf("nodeServes(%s, %d) = %v, want %v", c.id, c.slot, got, c.want)
		}
	}
}
