package main

import (
	"io"
	"testing"
)

// The presence and Redis message limits are flags with safe defaults and
// CHANNELS_* variables.
func TestPresenceAndRedisLimitFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.presenceKeyLength != 256 || o.presenceMetaSize != 2048 || o.presencePerTopic != 10000 || o.presencePerJoin != 16 || o.redisMaxMessage != 2<<20 {
		t.Fatalf("defaults: key %d, meta %d, per topic %d, redis message %d", o.presenceKeyLength, o.presenceMetaSize, o.presencePerTopic, o.redisMaxMessage)
	}
	for env, v := range map[string]string{
		"CHANNELS_PRESENCE_MAX_KEY_LENGTH": "64",
		"CHANNELS_PRESENCE_MAX_META_SIZE":  "512",
		"CHANNELS_PRESENCE_MAX_PER_TOPIC":  "-1",
		"CHANNELS_PRESENCE_MAX_PER_JOIN":   "3",
		"CHANNELS_REDIS_MAX_MESSAGE_SIZE":  "4194304",
	} {
		t.Setenv(env, v)
	}
	o, err = parseFlags([]string{"--redis", "redis://127.0.0.1:1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.presenceKeyLength != 64 || o.presenceMetaSize != 512 || o.presencePerTopic != -1 || o.presencePerJoin != 3 || o.redisMaxMessage != 4<<20 {
		t.Fatalf("from the environment: %+v", *o)
	}
	for _, bad := range [][]string{
		{"--presence-max-key-length", "0"},
		{"--presence-max-per-topic", "0"},
		{"--presence-max-per-join", "0"},
		{"--redis", "redis://127.0.0.1:1", "--redis-max-message-size", "1000"},
		// A relayed long-poll POST of the largest body must fit.
		{"--redis", "redis://127.0.0.1:1", "--redis-max-message-size", "1048576"},
		{"--redis", "redis://127.0.0.1:1", "--max-frame-size", "4194304"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	// Without Redis the message bound does not apply.
	if _, err := parseFlags([]string{"--max-frame-size", "4194304"}, io.Discard); err != nil {
		t.Errorf("--max-frame-size without --redis: %v", err)
	}
}
