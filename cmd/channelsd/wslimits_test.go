package main

import (
	"io"
	"testing"
	"time"
)

// The limits on WebSocket messages in progress and on the upgrade's
// request target are flags with their defaults, and environment
// variables.
func TestMessageLimitFlags(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.messageTimeout != 30*time.Second || o.maxMessageBuffers != 64<<20 || o.maxURLLength != 16<<10 {
		t.Fatalf("defaults: --message-timeout %s, --max-message-buffers %d, --max-url-length %d", o.messageTimeout, o.maxMessageBuffers, o.maxURLLength)
	}
	t.Setenv("CHANNELS_MESSAGE_TIMEOUT", "5s")
	t.Setenv("CHANNELS_MAX_MESSAGE_BUFFERS", "-1")
	t.Setenv("CHANNELS_MAX_URL_LENGTH", "-1")
	if o, err = parseFlags(nil, io.Discard); err != nil {
		t.Fatal(err)
	}
	if o.messageTimeout != 5*time.Second || o.maxMessageBuffers != -1 || o.maxURLLength != -1 {
		t.Fatalf("from the environment: --message-timeout %s, --max-message-buffers %d", o.messageTimeout, o.maxMessageBuffers)
	}
	if _, err := parseFlags([]string{"--message-timeout", "0"}, io.Discard); err == nil {
		t.Error("--message-timeout 0 accepted")
	}
}
