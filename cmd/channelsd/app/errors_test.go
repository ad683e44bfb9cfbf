package app

import (
	"errors"
	"fmt"
	"testing"

	"github.com/channelsd/channelsd/presence"
)

// An error not made for clients never reaches one in an error reply:
// the demo's channels answer with a fixed reason, and keep Phoenix's
// words for the presence errors Phoenix also has.
func TestErrorReasonKeepsServerErrorsFromClients(t *testing.T) {
	secret := fmt.Errorf("redis: publish: dial 10.0.0.7:6379: %w", errors.New("password=hunter2"))
	if got := errorReason(secret); got != "server error" {
		t.Errorf("errorReason(%v) = %v, want the fixed reason", secret, got)
	}
	if got := errorReason(fmt.Errorf("track: %w", presence.ErrAlreadyTracked)); got != "already_tracked" {
		t.Errorf("a presence error lost its Phoenix reason: %v", got)
	}
}
