package main

import (
	"io"
	"testing"
	"time"
)

// The limits on WebSocket messages in progress are flags with their
// defaults, and environment variables.
func TestMessageLimitFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.messageTimeout != 30*time.Second || o.maxMessageBuffers != 64<<20 {
		t.Fatalf("defaults: --message-timeout %s, --max-message-buffers %d", o.messageTimeout, o.maxMessageBuffers)
	}
	t.Setenv("CHANNELS_MESSAGE_TIMEOUT", "5s")
	t.Setenv("CHANNELS_MAX_MESSAGE_BUFFERS", "-1")
	if o, err = parseFlags(nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if o.messageTimeout != 5*time.Second || o.maxMessageBuffers != -1 {
		t.Fatalf("from the environment: --message-timeout %s, --max-message-buffers %d", o.messageTimeout, o.maxMessageBuffers)
	}
	if _, err := parseFlags([]string{"--message-timeout", "0"}, io.Discard); err == nil {
		t.Error("--message-timeout 0 accepted")
	}
}
