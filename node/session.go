package node

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"time"
)

// Dashboard sessions and join tickets: "<expiry unix>.<mac>" where mac is
// HMAC-SHA256 over the purpose and the expiry. The key derives from the
// API key, so every node of a cluster accepts what any node issued (the
// page, its ticket and its WebSocket may each reach another node behind a
// load balancer), and changing the API key ends every session. Without an
// API key the key is random to the process: there is nothing to share,
// since only local clients are served.

// Purposes, so that a value issued for one is worth nothing as the other:
// the session cookie is HttpOnly, and the page's script must never hold
// anything that opens a session.
const (
	purposeSession = "session"
	purposeTicket  = "ticket"
)

const (
	// dashboardSessionTTL bounds a dashboard login: short, since the cookie
	// opens the dashboard to whoever holds the browser.
	dashboardSessionTTL = time.Hour
	// dashboardTicketTTL bounds a join ticket: the page fetches one just
	// before each join.
	dashboardTicketTTL = time.Minute
)

type sessionKeys struct {
	key []byte
}

func newSessionKeys(apiKey string) sessionKeys {
	if apiKey == "" {
		k := make([]byte, 32)
		_, _ = rand.Read(k) // never fails (crypto/rand)
		return sessionKeys{key: k}
	}
	m := hmac.New(sha256.New, []byte(apiKey))
	m.Write([]byte("channelsd dashboard sessions v1"))
	return sessionKeys{key: m.Sum(nil)}
}

func (k sessionKeys) mac(purpose, expiry string) string {
	m := hmac.New(sha256.New, k.key)
	m.Write([]byte(purpose + "\x00" + expiry))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// issue returns a value for purpose that is valid until now+ttl.
func (k sessionKeys) issue(purpose string, now time.Time, ttl time.Duration) string {
	exp := strconv.FormatInt(now.Add(ttl).Unix(), 10)
	return exp + "." + k.mac(purpose, exp)
}

// valid reports whether v was issued for purpose and has not expired.
func (k sessionKeys) valid(purpose, v string, now time.Time) bool {
	exp, mac, ok := strings.Cut(v, ".")
	if !ok || len(v) > 128 {
		return false
	}
	t, err := strconv.ParseInt(exp, 10, 64)
	if err != nil || now.Unix() >= t {
		return false
	}
	return hmac.Equal([]byte(mac), []byte(k.mac(purpose, exp)))
}
