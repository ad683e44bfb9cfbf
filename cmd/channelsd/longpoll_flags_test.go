package main

import (
	"io"
	"testing"
	"time"
)

// The long-poll bounds of issue 16 are flags with safe defaults, and
// environment variables.
func TestLongPollLimitFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.lpMaxBufferedBytes != 4<<20 || o.lpMaxAnswerBytes <= 0 || o.lpMaxAnswerBytes > 4<<20 || o.lpIOTimeout != 10*time.Second {
		t.Fatalf("defaults: %+v", *o)
	}
	t.Setenv("CHANNELS_LONGPOLL_MAX_BUFFERED_BYTES", "-1")
	t.Setenv("CHANNELS_LONGPOLL_MAX_ANSWER_BYTES", "1000")
	t.Setenv("CHANNELS_LONGPOLL_IO_TIMEOUT", "3s")
	if o, err = parseFlags(nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if o.lpMaxBufferedBytes != -1 || o.lpMaxAnswerBytes != 1000 || o.lpIOTimeout != 3*time.Second {
		t.Fatalf("from the environment: %+v", *o)
	}
	for _, bad := range [][]string{
		{"--longpoll-max-answer-bytes", "0"},
		{"--longpoll-max-answer-bytes", "100000000"},
		{"--longpoll-io-timeout", "0"},
	} {
		if _, err := parseFlags(bad, io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

func TestLongPollAddressFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.lpMaxPerAddr != 100 || o.trustedProxies != "" {
		t.Fatalf("defaults: %+v", *o)
	}
	t.Setenv("CHANNELS_LONGPOLL_MAX_SESSIONS_PER_ADDRESS", "7")
	t.Setenv("CHANNELS_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1")
	if o, err = parseFlags(nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if o.lpMaxPerAddr != 7 || len(splitList(o.trustedProxies)) != 2 {
		t.Fatalf("from the environment: %+v", *o)
	}
}
