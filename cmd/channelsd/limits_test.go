package main

import (
	"io"
	"testing"
	"time"
)

// Every limit is a flag with its default, and an environment variable.
func TestLimitFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.maxSockets != 19000 || o.maxPendingUpgrades != 1000 || o.handshakeTimeout != 10*time.Second ||
		o.maxPayloadSize != 64<<10 || o.maxTopicLength != 256 || o.maxEventLength != 128 ||
		o.maxMessagesPerSec != 100 || o.burst != 200 || o.lpMaxSessions != 10000 || o.lpMaxBuffered != 1000 {
		t.Fatalf("defaults: %+v", *o)
	}
	for env, v := range map[string]string{
		"CHANNELS_MAX_SOCKETS":             "5",
		"CHANNELS_MAX_PENDING_UPGRADES":    "6",
		"CHANNELS_HANDSHAKE_TIMEOUT":       "3s",
		"CHANNELS_MAX_PAYLOAD_SIZE":        "7",
		"CHANNELS_MAX_TOPIC_LENGTH":        "8",
		"CHANNELS_MAX_EVENT_LENGTH":        "9",
		"CHANNELS_MAX_MESSAGES_PER_SECOND": "2.5",
		"CHANNELS_BURST":                   "11",
		"CHANNELS_LONGPOLL_MAX_SESSIONS":   "12",
		"CHANNELS_LONGPOLL_MAX_BUFFERED":   "13",
	} {
		t.Setenv(env, v)
	}
	o, err = parseFlags([]string{"--max-sockets", "-1"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.maxSockets != -1 || o.maxPendingUpgrades != 6 || o.handshakeTimeout != 3*time.Second ||
		o.maxPayloadSize != 7 || o.maxTopicLength != 8 || o.maxEventLength != 9 ||
		o.maxMessagesPerSec != 2.5 || o.burst != 11 || o.lpMaxSessions != 12 || o.lpMaxBuffered != 13 {
		t.Fatalf("from the environment: %+v", *o)
	}
	for _, bad := range [][]string{
		{"--handshake-timeout", "0"},
		{"--max-messages-per-second", "-1"},
		{"--longpoll-max-buffered", "0"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// The HTTP server's bounds: flags with defaults and environment variables.
func TestHTTPServerFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.httpIdleTimeout != 60*time.Second || o.httpRequestTimeout != 30*time.Second || o.maxHeaderBytes != 32<<10 || o.maxConnections != 0 || o.metricsPublic {
		t.Fatalf("defaults: %+v", *o)
	}
	for env, v := range map[string]string{
		"CHANNELS_HTTP_IDLE_TIMEOUT":    "5s",
		"CHANNELS_HTTP_REQUEST_TIMEOUT": "6s",
		"CHANNELS_MAX_HEADER_BYTES":     "7",
		"CHANNELS_MAX_CONNECTIONS":      "8",
		"CHANNELS_METRICS_PUBLIC":       "true",
	} {
		t.Setenv(env, v)
	}
	if o, err = parseFlags(nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if o.httpIdleTimeout != 5*time.Second || o.httpRequestTimeout != 6*time.Second || o.maxHeaderBytes != 7 || o.maxConnections != 8 || !o.metricsPublic {
		t.Fatalf("from the environment: %+v", *o)
	}
	if _, err := parseFlags([]string{"--http-idle-timeout", "0"}, io.Discard); err == nil {
		t.Error("--http-idle-timeout 0 accepted")
	}
}
