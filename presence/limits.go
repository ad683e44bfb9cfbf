package presence

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"unicode/utf8"
)

// Defaults of Limits (README "Limits").
const (
	// DefaultMaxKeyLength is a token's longest sub (channels/auth): a
	// user id, not a document. Every presence_diff and presence_state of
	// the topic repeats the key, to every subscriber: with keys of 300 KB,
	// one client joining and leaving a room got most of its other members
	// closed as slow consumers.
	DefaultMaxKeyLength = 256
	// DefaultMaxMetaSize leaves room for a status, a device and a display
	// name, as presence metas hold.
	DefaultMaxMetaSize = 2 << 10
	// DefaultMaxPerTopic bounds the room every join is sent whole
	// (presence_state): 10,000 entries of the default application's size
	// (a key of at most 256 bytes, a meta of about 60) are 3.3 MB, under a
	// WebSocket's 4 MiB outbound queue.
	DefaultMaxPerTopic = 10000
	// DefaultMaxPerOwner: a join tracks its user, sometimes a few keys
	// more; an application that tracks keys a client names would
	// otherwise let one socket fill every room it joins.
	DefaultMaxPerOwner = 16
)

// Limits bounds what one tracker holds, whatever the application asks
// it to track: the keys and metas come from clients (a user name), and
// each one is repeated in every diff and state of its topic, to every
// subscriber. Zero fields take the defaults; -1 means no limit.
type Limits struct {
	// MaxKeyLength is the longest key, in bytes.
	MaxKeyLength int
	// MaxMetaSize is the largest meta, in bytes, as given to Track or
	// Update (before phx_ref is added).
	MaxMetaSize int
	// MaxPerTopic is the most entries this node tracks on one topic; a
	// Track beyond fails with ErrTopicFull (Update is not counted). With
	// presence/redis each node counts its own entries.
	MaxPerTopic int
	// MaxPerOwner is the most keys one owner (one join) tracks at once;
	// a Track beyond fails with ErrTooManyKeys.
	MaxPerOwner int
}

// Errors of Track and Update for entries outside the Limits. Each says
// what to fix; the default application replies with them.
var (
	ErrKeyTooLong   = errors.New("presence: key too long")
	ErrMetaTooLarge = errors.New("presence: meta too large")
	ErrInvalidKey   = errors.New("presence: key must be UTF-8")
	ErrTopicFull    = errors.New("presence: too many presences on this topic")
	ErrTooManyKeys  = errors.New("presence: too many keys tracked by this join")
)

// WithDefaults returns l with its zero fields set to the defaults and
// its negative ones to -1 (no limit).
func (l Limits) WithDefaults() Limits {
	def := func(v *int, d int) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = -1
		}
	}
	def(&l.MaxKeyLength, DefaultMaxKeyLength)
	def(&l.MaxMetaSize, DefaultMaxMetaSize)
	def(&l.MaxPerTopic, DefaultMaxPerTopic)
	def(&l.MaxPerOwner, DefaultMaxPerOwner)
	return l
}

// ValidEntry reports whether key and meta may reach clients: key is
// UTF-8 and meta is empty or a JSON object in UTF-8. encoding/json
// accepts invalid UTF-8 inside strings, and a meta is relayed as it is:
// one text frame that is not UTF-8 closes the WebSocket of every
// subscriber it reaches. Trackers apply it to what they read from
// elsewhere (other nodes' entries in Redis) as well.
func ValidEntry(key string, meta json.RawMessage) error {
	if !utf8.ValidString(key) {
		return ErrInvalidKey
	}
	if len(meta) == 0 {
		return nil
	}
	if !utf8.Valid(meta) || !json.Valid(meta) {
		return ErrNotObject
	}
	if t := bytes.TrimLeft(meta, " \t\r\n"); len(t) == 0 || t[0] != '{' {
		return ErrNotObject
	}
	return nil
}

// Checker applies Limits for a tracker and counts its refusals. The
// trackers of this package and of presence/redis each hold one.
type Checker struct {
	limits Limits

	keyLength, metaSize, topicEntries, ownerEntries atomic.Uint64
}

// NewChecker returns a Checker of l (with defaults applied).
func NewChecker(l Limits) *Checker { return &Checker{limits: l.WithDefaults()} }

// Limits returns the limits applied, defaults included.
func (c *Checker) Limits() Limits { return c.limits }

// Entry checks a key and meta given to Track or Update.
func (c *Checker) Entry(key string, meta json.RawMessage) error {
	if lim := c.limits.MaxKeyLength; lim >= 0 && len(key) > lim {
		c.keyLength.Add(1)
		return fmt.Errorf("%w: %d bytes, at most %d", ErrKeyTooLong, len(key), lim)
	}
	if lim := c.limits.MaxMetaSize; lim >= 0 && len(meta) > lim {
		c.metaSize.Add(1)
		return fmt.Errorf("%w: %d bytes, at most %d", ErrMetaTooLarge, len(meta), lim)
	}
	return ValidEntry(key, meta)
}

// Room checks that a topic holding n entries of this node takes one more.
func (c *Checker) Room(n int) error {
	if lim := c.limits.MaxPerTopic; lim >= 0 && n >= lim {
		c.topicEntries.Add(1)
		return fmt.Errorf("%w (%d)", ErrTopicFull, lim)
	}
	return nil
}

// Owner checks that an owner tracking n keys on a topic takes one more.
func (c *Checker) Owner(n int) error {
	if lim := c.limits.MaxPerOwner; lim >= 0 && n >= lim {
		c.ownerEntries.Add(1)
		return fmt.Errorf("%w (%d)", ErrTooManyKeys, lim)
	}
	return nil
}

// LimitHits is pubsub.LimitCounter's method, for the trackers to expose.
func (c *Checker) LimitHits() map[string]func() uint64 {
	return map[string]func() uint64{
		"presence_key_length":    c.keyLength.Load,
		"presence_meta_size":     c.metaSize.Load,
		"presence_topic_entries": c.topicEntries.Load,
		"presence_join_entries":  c.ownerEntries.Load,
	}
}
