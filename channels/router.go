package channels

import (
	"fmt"
	"slices"
	"strings"

	"github.com/channelsd/channelsd/pubsub"
)

// Router maps topics to channel implementations (PROTOCOL.md §3.3): a
// route is an exact topic ("system") or a prefix ending in '*' ("room:*").
// The first route that matches wins, as in Phoenix. Routes are added
// before the endpoint serves; a Router is not safe for concurrent Handle.
type Router struct {
	routes  []route
	history []pubsub.HistoryRule
}

type route struct {
	pattern string
	prefix  bool
	factory ChannelFactory
}

// ChannelFactory makes the Channel for one join of topic. Each join gets
// its own value, the way each Phoenix join gets its own process, so a
// Channel may keep per-join state in its fields.
type ChannelFactory func(topic string) Channel

// Handle adds a route. It panics on a pattern with '*' anywhere but at the
// end, a programming error that must not reach production.
func (r *Router) Handle(pattern string, f ChannelFactory) {
	p, prefix := parsePattern(pattern)
	r.routes = append(r.routes, route{pattern: p, prefix: prefix, factory: f})
}

// parsePattern checks a route pattern and splits off its trailing '*'.
func parsePattern(pattern string) (p string, prefix bool) {
	star := strings.IndexByte(pattern, '*')
	if pattern == "" || (star >= 0 && star != len(pattern)-1) {
		panic(fmt.Sprintf("channels: invalid route pattern %q: '*' is only allowed at the end", pattern))
	}
	if star >= 0 {
		return pattern[:star], true
	}
	return pattern, false
}

func matches(p string, prefix bool, topic string) bool {
	if prefix {
		return strings.HasPrefix(topic, p)
	}
	return topic == p
}

// History gives the topics matching pattern (Handle's syntax) a history
// of broadcasts that clients recover from (PROTOCOL.md §12), and returns
// r. The first History pattern matching a topic decides, even one with
// zero options, which keeps a topic out of a broader pattern's history.
// It takes effect through HistoryPolicy, which the node hands its PubSub.
func (r *Router) History(pattern string, o pubsub.HistoryOptions) *Router {
	parsePattern(pattern) // its panic on a misplaced '*'
	r.history = append(r.history, pubsub.HistoryRule{Pattern: pattern, HistoryOptions: o})
	return r
}

// HistoryPolicy is the policy of r's History routes: a topic gets the
// options of the first History pattern that matches it, else fallback's
// (the node's --history rules), else none. It is nil when r has no
// History routes and fallback is nil, so that a PubSub without history
// pays nothing per publish. The routes are copied: History calls made
// afterwards do not change the policy returned.
func (r *Router) HistoryPolicy(fallback pubsub.HistoryPolicy) pubsub.HistoryPolicy {
	return pubsub.RulesPolicy(r.history, fallback)
}

// With returns a copy of r with one more route, leaving r as it was: how
// a node adds its own channels (the dashboard) to an application's router
// that other nodes in the same process may share.
func (r *Router) With(pattern string, f ChannelFactory) *Router {
	c := &Router{routes: slices.Clone(r.routes), history: slices.Clone(r.history)}
	c.Handle(pattern, f)
	return c
}

// Match returns the factory of the first route matching topic.
func (r *Router) Match(topic string) (ChannelFactory, bool) {
	for _, rt := range r.routes {
		if matches(rt.pattern, rt.prefix, topic) {
			return rt.factory, true
		}
	}
	return nil, false
}
