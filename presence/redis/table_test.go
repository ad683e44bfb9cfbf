package redis

import (
	"slices"
	"testing"
)

// oneEntry is a topic table with one entry, for tests of what depends
// only on a topic having entries here.
func oneEntry() *topicTable {
	tt := newTopicTable()
	tt.add("o", &entry{key: "k"})
	return tt
}

// TestTopicTable follows owners with one key and with several through
// the table's operations, checking after each step every entry, the
// per-owner counts and the total against a plain model.
func TestTopicTable(t *testing.T) {
	tt := newTopicTable()
	model := map[[2]string]*entry{} // {owner, key} -> entry
	check := func(step string) {
		t.Helper()
		if tt.n != len(model) {
			t.Fatalf("%s: n = %d, want %d", step, tt.n, len(model))
		}
		counts := map[string]int{}
		for k, e := range model {
			counts[k[0]]++
			if got := tt.get(k[0], k[1]); got != e {
				t.Fatalf("%s: get(%s, %s) = %v, want %v", step, k[0], k[1], got, e)
			}
		}
		for _, owner := range []string{"a", "b", "c"} {
			if got := tt.count(owner); got != counts[owner] {
				t.Fatalf("%s: count(%s) = %d, want %d", step, owner, got, counts[owner])
			}
		}
		var seen []*entry
		tt.each(func(e *entry) { seen = append(seen, e) })
		if len(seen) != len(model) {
			t.Fatalf("%s: each saw %d entries, want %d", step, len(seen), len(model))
		}
		for _, e := range model {
			if !slices.Contains(seen, e) {
				t.Fatalf("%s: each missed %v", step, e)
			}
		}
		if tt.get("a", "none") != nil || tt.get("nobody", "k1") != nil {
			t.Fatalf("%s: get found what was never added", step)
		}
	}
	add := func(owner, key string) {
		e := &entry{key: key, ref: owner + "/" + key}
		tt.add(owner, e)
		model[[2]string{owner, key}] = e
	}
	add("a", "k1")
	add("b", "k1")
	check("one key each")
	add("a", "k2")
	add("a", "k3")
	add("a", "k4")
	check("a with four keys")

	e := &entry{key: "k3", ref: "a/k3 updated"}
	tt.replace("a", e)
	model[[2]string{"a", "k3"}] = e
	e = &entry{key: "k1", ref: "a/k1 updated"}
	tt.replace("a", e)
	model[[2]string{"a", "k1"}] = e
	check("replaced in place")

	if got := tt.remove("a", "k1"); got != model[[2]string{"a", "k1"}] {
		t.Fatalf("remove(a, k1) = %v", got)
	}
	delete(model, [2]string{"a", "k1"})
	check("a's first entry removed: another takes its place")
	if got := tt.remove("a", "k3"); got != model[[2]string{"a", "k3"}] {
		t.Fatalf("remove(a, k3) = %v", got)
	}
	delete(model, [2]string{"a", "k3"})
	check("one of a's other entries removed")
	if tt.remove("a", "k3") != nil || tt.remove("c", "k1") != nil {
		t.Fatal("removed what is not there")
	}
	check("nothing removed")

	add("c", "k1")
	add("c", "k2")
	var gone []*entry
	tt.removeOwner("a", func(e *entry) { gone = append(gone, e) })
	for k := range model {
		if k[0] == "a" {
			if !slices.Contains(gone, model[k]) {
				t.Fatalf("removeOwner(a) missed %v", model[k])
			}
			delete(model, k)
		}
	}
	if len(gone) != 2 {
		t.Fatalf("removeOwner(a) removed %d entries, want 2", len(gone))
	}
	check("a removed")
	if len(tt.more) != 1 {
		t.Fatalf("more holds %d owners, want 1 (c)", len(tt.more))
	}
	tt.removeOwner("c", func(*entry) {})
	tt.remove("b", "k1")
	clear(model)
	check("empty")
	if len(tt.first) != 0 || len(tt.more) != 0 {
		t.Fatalf("an empty table keeps %d first entries and %d owners' others", len(tt.first), len(tt.more))
	}
}
