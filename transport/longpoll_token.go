package transport

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"strings"
	"time"
)

// Long-poll session tokens (PROTOCOL.md §8.2). To clients a token is
// opaque; here it is
//
//	base64url(payload) "." base64url(HMAC-SHA256(secret, payload))
//
// without padding, where payload is
//
//	version (1 byte, 1) | issued (8 bytes, Unix ms, big endian) |
//	session id (16 bytes) | node id (the rest, at most 255 bytes)
//
// The node id names the node that owns the session, for the cross-node
// relay; the session id is random.
//
// Version 2 is the form a later release may issue once every live node
// reads it (form "token" at level 2, pubsub/redis gate.go; the release of
// b847059 refuses any version but 1 and would lose the session):
//
//	version (1 byte, 2) | issued | session id | uvarint len, node id |
//	extension (the rest: read by the issuing node only, skipped here)
//
// This release reads it, routing by the length-prefixed node id and
// verifying the MAC over the whole payload, but issues version 1 only. Verification recomputes the MAC and
// compares in constant time (hmac.Equal), then checks the age. Only the
// canonical encoding verifies: characters outside the URL-safe alphabet
// (including the CR and LF that encoding/base64 would skip) and
// non-canonical trailing bits are refused, so a token that verifies
// re-encodes to itself.

const (
	lpTokenVersion    = 1
	lpTokenVersionExt = 2
	lpSessionIDLen    = 16
	lpMaxNodeIDLen    = 255
	lpTokenHeaderLen  = 1 + 8 + lpSessionIDLen
	lpMACLen          = sha256.Size
	lpMaxTokenLen     = 512 // far above the largest valid token (~430 chars)
	lpMinTokenPartLen = 1
)

var lpB64 = base64.RawURLEncoding.Strict()

// lpToken is the content of a session token.
type lpToken struct {
	NodeID  string
	Session [lpSessionIDLen]byte
	Issued  time.Time // millisecond precision
}

// signLongPollToken encodes and signs t. A node id above 255 bytes is
// cut (NewLongPollHandler refuses one).
func signLongPollToken(key []byte, t lpToken) string {
	node := t.NodeID
	if len(node) > lpMaxNodeIDLen {
		node = node[:lpMaxNodeIDLen]
	}
	payload := make([]byte, lpTokenHeaderLen, lpTokenHeaderLen+len(node))
	payload[0] = lpTokenVersion
	binary.BigEndian.PutUint64(payload[1:9], uint64(t.Issued.UnixMilli()))
	copy(payload[9:], t.Session[:])
	payload = append(payload, node...)
	mac := hmac.New(sha256.New, key)
	mac.Write(payload)
	sum := mac.Sum(nil)

	var b strings.Builder
	b.Grow(lpB64.EncodedLen(len(payload)) + 1 + lpB64.EncodedLen(len(sum)))
	b.WriteString(lpB64.EncodeToString(payload))
	b.WriteByte('.')
	b.WriteString(lpB64.EncodeToString(sum))
	return b.String()
}

// parseLongPollToken verifies s with key and returns its content. It
// never panics, whatever s holds. Age is not checked here.
func parseLongPollToken(key []byte, s string) (lpToken, bool) {
	var t lpToken
	payload, got, ok := splitLongPollToken(s)
	if !ok {
		return t, false
	}
	mac := hmac.New(sha256.New, key)
	mac.Write(payload)
	if !hmac.Equal(mac.Sum(nil), got) {
		return t, false
	}
	ms := binary.BigEndian.Uint64(payload[1:9])
	if ms > 1<<62 {
		return t, false
	}
	t.Issued = time.UnixMilli(int64(ms))
	copy(t.Session[:], payload[9:lpTokenHeaderLen])
	t.NodeID = tokenNode(payload)
	return t, true
}

// longPollTokenNode returns the node a token names WITHOUT verifying its
// MAC: only the owning node holds the key, so a node that is not the
// owner can only route the request there, where it is verified. A forged
// token thus costs one relayed request that the named node refuses.
func longPollTokenNode(s string) (string, bool) {
	payload, _, ok := splitLongPollToken(s)
	if !ok {
		return "", false
	}
	return tokenNode(payload), true
}

// tokenNode returns the node id of a payload splitLongPollToken accepted.
func tokenNode(payload []byte) string {
	if payload[0] == lpTokenVersion {
		return string(payload[lpTokenHeaderLen:])
	}
	n, k := binary.Uvarint(payload[lpTokenHeaderLen:])
	return string(payload[lpTokenHeaderLen+k : lpTokenHeaderLen+k+int(n)])
}

// splitLongPollToken decodes the two parts of a well-formed token of a
// version this release reads.
func splitLongPollToken(s string) (payload, mac []byte, ok bool) {
	if len(s) > lpMaxTokenLen {
		return nil, nil, false
	}
	dot := strings.IndexByte(s, '.')
	if dot < lpMinTokenPartLen || dot == len(s)-1 {
		return nil, nil, false
	}
	p64, m64 := s[:dot], s[dot+1:]
	if !lpAlphabet(p64) || !lpAlphabet(m64) {
		return nil, nil, false
	}
	payload, err := lpB64.DecodeString(p64)
	if err != nil || len(payload) < lpTokenHeaderLen {
		return nil, nil, false
	}
	switch payload[0] {
	case lpTokenVersion:
		if len(payload) > lpTokenHeaderLen+lpMaxNodeIDLen {
			return nil, nil, false
		}
	case lpTokenVersionExt:
		// The token's length bounds the extension (lpMaxTokenLen).
		n, k := binary.Uvarint(payload[lpTokenHeaderLen:])
		if k <= 0 || n > lpMaxNodeIDLen || n > uint64(len(payload)-lpTokenHeaderLen-k) {
			return nil, nil, false
		}
	default:
		return nil, nil, false
	}
	mac, err = lpB64.DecodeString(m64)
	if err != nil || len(mac) != lpMACLen {
		return nil, nil, false
	}
	return payload, mac, true
}

// lpAlphabet reports whether s holds only base64url characters.
func lpAlphabet(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}
