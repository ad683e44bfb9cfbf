package auth

import (
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/golang-jwt/jwt/v5"
)

// Limits on what a token may hold. A token arrives from untrusted clients
// in a URL or a header: anything longer is refused before it is decoded.
const (
	// MaxTokenLength is the longest token accepted, in bytes.
	MaxTokenLength = 8 << 10
	// MaxSubjectLength is the longest sub claim, in bytes.
	MaxSubjectLength = 256
	// MaxTopics is the most patterns a topics claim may hold.
	MaxTopics = 100
	// MinSecretLength is the shortest secret accepted, in bytes: HS256
	// wants a key of at least the hash's size (RFC 7518 §3.2).
	MinSecretLength = 32
)

// Errors Verify returns, besides the jwt library's (wrapped).
var (
	ErrNoToken      = errors.New("auth: no token")
	ErrTokenTooLong = errors.New("auth: token too long")
	ErrInvalidToken = errors.New("auth: invalid token")
)

// Claims are a socket token's claims (see the package documentation).
type Claims struct {
	// Topics bounds the topics the socket may join, when not nil. Patterns
	// are exact topics or prefixes ending in '*'. An empty, non-nil list
	// allows no topic.
	Topics []string `json:"topics,omitzero"`
	jwt.RegisteredClaims
}

// Validate checks what the jwt library does not: sub is present and
// reasonable, and the topic patterns are well formed. The library calls
// it after the signature and the time claims have been checked.
func (c *Claims) Validate() error {
	switch {
	case c.Subject == "":
		return errors.New("sub is required")
	case len(c.Subject) > MaxSubjectLength:
		return fmt.Errorf("sub longer than %d bytes", MaxSubjectLength)
	case !utf8.ValidString(c.Subject):
		return errors.New("sub is not valid UTF-8")
	case len(c.Topics) > MaxTopics:
		return fmt.Errorf("more than %d topics", MaxTopics)
	}
	for _, p := range c.Topics {
		if err := ValidPattern(p); err != nil {
			return err
		}
	}
	return nil
}

// ValidPattern checks a topic pattern: non-empty, valid UTF-8, and '*'
// only as its last byte.
func ValidPattern(p string) error {
	star := strings.IndexByte(p, '*')
	switch {
	case p == "":
		return errors.New("empty topic pattern")
	case !utf8.ValidString(p):
		return errors.New("topic pattern is not valid UTF-8")
	case star >= 0 && star != len(p)-1:
		return fmt.Errorf("topic pattern %q: '*' is only allowed at the end", p)
	}
	return nil
}

// MatchTopic reports whether topic matches pattern: equal to it, or, for
// a pattern ending in '*', starting with what precedes the '*'.
func MatchTopic(pattern, topic string) bool {
	if prefix, ok := strings.CutSuffix(pattern, "*"); ok {
		return strings.HasPrefix(topic, prefix)
	}
	return pattern == topic
}

// matchAny reports whether any of patterns matches topic.
func matchAny(patterns []string, topic string) bool {
	for _, p := range patterns {
		if MatchTopic(p, topic) {
			return true
		}
	}
	return false
}

// AllowsTopic reports whether the token's topics claim lets the socket
// join topic: always when the claim is absent.
func (c *Claims) AllowsTopic(topic string) bool {
	return c.Topics == nil || matchAny(c.Topics, topic)
}

// GrantsTopic reports whether the topics claim names topic explicitly,
// what a private topic needs: false when the claim is absent.
func (c *Claims) GrantsTopic(topic string) bool {
	return c.Topics != nil && matchAny(c.Topics, topic)
}

// Verifier checks tokens. It is safe for concurrent use.
type Verifier struct {
	keys   jwt.VerificationKeySet
	sign   []byte
	parser *jwt.Parser
	now    func() time.Time
}

// NewVerifier returns a Verifier that accepts tokens signed with secret
// or, when it is not empty, previous (during a rotation), and signs with
// secret. Secrets are used as bytes, as given, and must be at least
// MinSecretLength bytes long.
func NewVerifier(secret, previous string) (*Verifier, error) {
	return newVerifier(secret, previous, time.Now)
}

func newVerifier(secret, previous string, now func() time.Time) (*Verifier, error) {
	if len(secret) < MinSecretLength {
		return nil, fmt.Errorf("auth: the token secret must be at least %d bytes long (e.g. openssl rand -hex 32)", MinSecretLength)
	}
	v := &Verifier{sign: []byte(secret), now: now}
	v.keys.Keys = append(v.keys.Keys, []byte(secret))
	if previous != "" {
		if len(previous) < MinSecretLength {
			return nil, fmt.Errorf("auth: the previous token secret must be at least %d bytes long", MinSecretLength)
		}
		v.keys.Keys = append(v.keys.Keys, []byte(previous))
	}
	v.parser = jwt.NewParser(
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
		jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(func() time.Time { return v.now() }),
	)
	return v, nil
}

// Verify checks token's length, alg, signature (against the current and
// the previous secret), expiry and claims, and returns its claims. Every
// error wraps ErrInvalidToken, or is ErrNoToken or ErrTokenTooLong.
func (v *Verifier) Verify(token string) (*Claims, error) {
	switch {
	case token == "":
		return nil, ErrNoToken
	case len(token) > MaxTokenLength:
		return nil, ErrTokenTooLong
	}
	claims := &Claims{}
	if _, err := v.parser.ParseWithClaims(token, claims, func(*jwt.Token) (any, error) { return v.keys, nil }); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidToken, err)
	}
	return claims, nil
}

// Sign returns a token for sub, valid for ttl from now, with the topics
// claim when topics is not nil. It signs with the current secret.
func (v *Verifier) Sign(sub string, topics []string, ttl time.Duration) (string, error) {
	now := v.now()
	c := &Claims{
		Topics: topics,
		RegisteredClaims: jwt.RegisteredClaims{
			Subject:   sub,
			IssuedAt:  jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
		},
	}
	return v.SignClaims(c)
}

// SignClaims signs c as it is with the current secret, after checking
// that Verify would accept its sub and topics (not its times).
func (v *Verifier) SignClaims(c *Claims) (string, error) {
	if err := c.Validate(); err != nil {
		return "", fmt.Errorf("auth: %w", err)
	}
	if c.ExpiresAt == nil {
		return "", errors.New("auth: exp is required")
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(v.sign)
}
