package transport

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// Client addresses, for MaxSessionsPerAddr.
//
// A session counts against the address of the client that opened it:
// the peer address of the request, with IPv4 addresses taken whole and
// IPv6 ones by /64 (one subscriber usually holds a whole /64, so counting
// single IPv6 addresses would not bound one client). Behind a proxy or a
// load balancer every peer address is the proxy's, and all of its clients
// would share one count: list the proxies in TrustedProxies, and a
// request whose peer is one of them counts against the address the
// proxies report in X-Forwarded-For. The header is read from the right
// (each proxy appends the address it received the request from), skipping
// the addresses of trusted proxies: the first other address is the
// client. Addresses further left were written by the client itself, or
// by proxies nobody vouches for, and are ignored. A request from an
// untrusted peer counts against that peer, whatever its headers say.

// parseTrustedProxies parses TrustedProxies: CIDRs, or single addresses.
func parseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, errors.New("transport: trusted proxy " + s + " is neither a CIDR nor an address")
			}
			p = netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), max(p.Bits()-96, 0))
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// clientKey returns what a request from r counts against.
func (h *LongPollHandler) clientKey(r *http.Request) netip.Prefix {
	ip := parseIP(r.RemoteAddr, true)
	if ip.IsValid() && h.trusted(ip) {
		ip = h.forwardedClient(r, ip)
	}
	return addrGroup(ip)
}

// forwardedClient walks X-Forwarded-For from the right, from peer (a
// trusted proxy), to the first address that is not a trusted proxy. An
// entry that is not an address stops the walk at the last address known.
func (h *LongPollHandler) forwardedClient(r *http.Request, peer netip.Addr) netip.Addr {
	values := r.Header.Values("X-Forwarded-For")
	ip := peer
	for i := len(values) - 1; i >= 0; i-- {
		hops := strings.Split(values[i], ",")
		for j := len(hops) - 1; j >= 0; j-- {
			a := parseIP(strings.TrimSpace(hops[j]), false)
			if !a.IsValid() {
				return ip
			}
			ip = a
			if !h.trusted(a) {
				return ip
			}
		}
	}
	return ip
}

func (h *LongPollHandler) trusted(a netip.Addr) bool {
	for _, p := range h.proxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseIP reads an address, with a port when withPort (host:port, as in
// RemoteAddr), or optionally so ("[::1]:80" or "1.2.3.4:80" in a
// header). The zero Addr when it is none.
func parseIP(s string, withPort bool) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr().Unmap().WithZone("")
	}
	if withPort {
		if host, _, err := net.SplitHostPort(s); err == nil {
			s = host
		}
	}
	a, err := netip.ParseAddr(strings.Trim(s, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return a.Unmap().WithZone("")
}

// addrGroup is the key a client address counts under: IPv4 whole, IPv6
// by /64. Requests whose address cannot be read share the zero key.
func addrGroup(a netip.Addr) netip.Prefix {
	switch {
	case a.Is4():
		return netip.PrefixFrom(a, 32)
	case a.Is6():
		p, _ := a.Prefix(64)
		return p
	}
	return netip.Prefix{}
}
