package channels

import (
	"fmt"
	"strings"
)

// Router maps topics to channel implementations (PROTOCOL.md §3.3): a
// route is an exact topic ("system") or a prefix ending in '*' ("room:*").
// The first route that matches wins, as in Phoenix. Routes are added
// before the endpoint serves; a Router is not safe for concurrent Handle.
type Router struct {
	routes []route
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
	star := strings.IndexByte(pattern, '*')
	if pattern == "" || (star >= 0 && star != len(pattern)-1) {
		panic(fmt.Sprintf("channels: invalid route pattern %q: '*' is only allowed at the end", pattern))
	}
	if star >= 0 {
		r.routes = append(r.routes, route{pattern: pattern[:star], prefix: true, factory: f})
		return
	}
	r.routes = append(r.routes, route{pattern: pattern, factory: f})
}

// With returns a copy of r with one more route, leaving r as it was: how
// a node adds its own channels (the dashboard) to an application's router
// that other nodes in the same process may share.
func (r *Router) With(pattern string, f ChannelFactory) *Router {
	c := &Router{routes: append([]route(nil), r.routes...)}
	c.Handle(pattern, f)
	return c
}

// Match returns the factory of the first route matching topic.
func (r *Router) Match(topic string) (ChannelFactory, bool) {
	for _, rt := range r.routes {
		if rt.prefix && strings.HasPrefix(topic, rt.pattern) || !rt.prefix && topic == rt.pattern {
			return rt.factory, true
		}
	}
	return nil, false
}
