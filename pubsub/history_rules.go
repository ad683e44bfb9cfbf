package pubsub

import (
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// HistoryRule gives the topics that match Pattern their history. A pattern
// is an exact topic ("lobby") or a prefix ending in '*' ("room:*"), as
// channel routes are.
type HistoryRule struct {
	Pattern string
	HistoryOptions
}

// Matches reports whether topic matches the rule's pattern.
func (r HistoryRule) Matches(topic string) bool {
	if p, ok := strings.CutSuffix(r.Pattern, "*"); ok {
		return strings.HasPrefix(topic, p)
	}
	return topic == r.Pattern
}

// ParseHistoryRules parses the --history flag's syntax: rules separated by
// ';' or whitespace, each "pattern=size[,ttl]", e.g. "room:*=100,5m;lobby=20".
// The TTL is a Go duration; without one it is DefaultHistoryTTL. Size 0
// keeps no history for the matching topics (a rule that turns off what a
// broader rule, or a channel, would give them). The empty string is no
// rules.
func ParseHistoryRules(s string) ([]HistoryRule, error) {
	var rules []HistoryRule
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ';' || r == ' ' || r == '\t' || r == '\n' }) {
		pattern, spec, ok := strings.Cut(f, "=")
		if !ok || pattern == "" {
			return nil, fmt.Errorf("pubsub: history rule %q: want pattern=size[,ttl]", f)
		}
		if i := strings.IndexByte(pattern, '*'); i >= 0 && i != len(pattern)-1 {
			return nil, fmt.Errorf("pubsub: history rule %q: '*' is only allowed at the end of the pattern", f)
		}
		sizeS, ttlS, hasTTL := strings.Cut(spec, ",")
		size, err := strconv.Atoi(sizeS)
		if err != nil || size < 0 || size > MaxHistorySize {
			return nil, fmt.Errorf("pubsub: history rule %q: size must be 0..%d", f, MaxHistorySize)
		}
		r := HistoryRule{Pattern: pattern, HistoryOptions: HistoryOptions{Size: size}}
		if hasTTL {
			ttl, err := time.ParseDuration(ttlS)
			if err != nil || ttl < time.Second {
				return nil, fmt.Errorf("pubsub: history rule %q: ttl must be a duration of at least 1s", f)
			}
			r.TTL = ttl
		}
		rules = append(rules, r)
	}
	return rules, nil
}

// MaxHistorySize bounds HistoryOptions.Size in rules: a recovery replays
// up to Size messages to one client in one go.
const MaxHistorySize = 100_000

// RulesPolicy returns the policy that gives a topic the options of the
// first rule that matches it (size 0 included: a rule can keep a topic
// out of what follows), else fallback's answer, else none. It is nil when
// there are no rules and no fallback, so that a PubSub without history
// pays nothing per publish. The rules are copied.
func RulesPolicy(rules []HistoryRule, fallback HistoryPolicy) HistoryPolicy {
	if len(rules) == 0 {
		return fallback
	}
	rules = append([]HistoryRule(nil), rules...)
	return func(topic string) HistoryOptions {
		for _, r := range rules {
			if r.Matches(topic) {
				return r.HistoryOptions
			}
		}
		if fallback != nil {
			return fallback(topic)
		}
		return HistoryOptions{}
	}
}

// PolicyHolder keeps a History's policy for the implementations: set at any
// time, read on every publish. Without a policy a read costs one atomic
// load, which is what keeps topics without history at their old cost. The
// zero value holds no policy.
type PolicyHolder struct {
	f atomic.Pointer[HistoryPolicy]
}

// Set replaces the policy; nil removes it.
func (h *PolicyHolder) Set(f HistoryPolicy) {
	if f == nil {
		h.f.Store(nil)
		return
	}
	h.f.Store(&f)
}

// Options is the policy's answer for topic, and whether it keeps history.
func (h *PolicyHolder) Options(topic string) (HistoryOptions, bool) {
	f := h.f.Load()
	if f == nil {
		return HistoryOptions{}, false
	}
	o := (*f)(topic)
	return o, o.Enabled()
}
