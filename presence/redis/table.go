package redis

import "slices"

// topicTable is this node's entries on one topic, keyed by owner (one
// channel join). An owner tracks one key in the common case: that entry
// is first's value, and the owner's other keys (up to Limits.MaxPerOwner
// in all) are in more. One map slot per joined socket, keyed by the
// owner string the join holds anyway: a table keyed by (owner, key) and
// a count per (topic, owner) for the limit took two slots of 40 bytes
// each, some 100 bytes per idle socket (BENCHMARKS.md, "2026-12-07 —
// memory per idle joined socket"). Guarded by Tracker.mu.
type topicTable struct {
	first map[string]*entry   // owner -> its first entry
	more  map[string][]*entry // owner -> its other entries; nil until an owner has two
	n     int                 // entries, over all owners
}

func newTopicTable() *topicTable { return &topicTable{first: make(map[string]*entry)} }

// get returns owner's entry for key, or nil.
func (tt *topicTable) get(owner, key string) *entry {
	e := tt.first[owner]
	if e == nil || e.key == key {
		return e
	}
	for _, m := range tt.more[owner] {
		if m.key == key {
			return m
		}
	}
	return nil
}

// count returns how many entries owner has.
func (tt *topicTable) count(owner string) int {
	if tt.first[owner] == nil {
		return 0
	}
	return 1 + len(tt.more[owner])
}

// add adds e for owner; owner has no entry for e.key.
func (tt *topicTable) add(owner string, e *entry) {
	tt.n++
	if tt.first[owner] == nil {
		tt.first[owner] = e
		return
	}
	if tt.more == nil {
		tt.more = make(map[string][]*entry)
	}
	tt.more[owner] = append(tt.more[owner], e)
}

// replace puts e in the place of owner's entry for e.key, which exists.
func (tt *topicTable) replace(owner string, e *entry) {
	if f := tt.first[owner]; f.key == e.key {
		tt.first[owner] = e
		return
	}
	for i, m := range tt.more[owner] {
		if m.key == e.key {
			tt.more[owner][i] = e
			return
		}
	}
}

// remove removes owner's entry for key and returns it, or nil.
func (tt *topicTable) remove(owner, key string) *entry {
	f := tt.first[owner]
	if f == nil {
		return nil
	}
	more := tt.more[owner]
	i := -1
	if f.key != key {
		for j, m := range more {
			if m.key == key {
				i = j
				break
			}
		}
		if i < 0 {
			return nil
		}
		f = more[i]
	}
	tt.n--
	if i < 0 { // the first entry: another of owner's takes its place
		if len(more) == 0 {
			delete(tt.first, owner)
			return f
		}
		last := len(more) - 1
		tt.first[owner] = more[last]
		more[last] = nil // the array must not keep the entry alive
		more = more[:last]
	} else {
		more = slices.Delete(more, i, i+1) // which clears the slot it vacates
	}
	if len(more) == 0 {
		delete(tt.more, owner)
	} else {
		tt.more[owner] = more
	}
	return f
}

// removeOwner removes every entry of owner, calling f with each.
func (tt *topicTable) removeOwner(owner string, f func(*entry)) {
	e := tt.first[owner]
	if e == nil {
		return
	}
	delete(tt.first, owner)
	more := tt.more[owner]
	delete(tt.more, owner)
	tt.n -= 1 + len(more)
	f(e)
	for _, m := range more {
		f(m)
	}
}

// each calls f with every entry.
func (tt *topicTable) each(f func(*entry)) {
	for _, e := range tt.first {
		f(e)
	}
	for _, more := range tt.more {
		for _, e := range more {
			f(e)
		}
	}
}
