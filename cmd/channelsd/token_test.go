package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/channelsd/channelsd/channels/auth"
)

const testSecret = "test-secret-test-secret-test-secret-0123"

func TestTokenCommand(t *testing.T) {
	t.Setenv("CHANNELS_TOKEN_SECRET", testSecret)
	var out, errOut bytes.Buffer
	if err := tokenCommand([]string{"--sub", "alice", "--topics", "private:team-1, room:*", "--ttl", "10m"}, &out, &errOut); err != nil {
		t.Fatalf("token: %v (%s)", err, errOut.String())
	}
	v, err := auth.NewVerifier(testSecret, "")
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("the printed token does not verify: %v", err)
	}
	if c.Subject != "alice" || strings.Join(c.Topics, ",") != "private:team-1,room:*" {
		t.Fatalf("claims %+v", c)
	}
	if left := time.Until(c.ExpiresAt.Time); left <= 9*time.Minute || left > 10*time.Minute {
		t.Fatalf("expires in %s, want 10m", left)
	}

	out.Reset()
	if err := tokenCommand([]string{"--sub", "bob"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if c, err := v.Verify(strings.TrimSpace(out.String())); err != nil || c.Topics != nil {
		t.Fatalf("without --topics: %+v, %v; want no topics claim", c, err)
	}
}

func TestTokenCommandErrors(t *testing.T) {
	t.Setenv("CHANNELS_TOKEN_SECRET", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sub", "alice"}, "no secret"},
		{[]string{"--token-secret", testSecret}, "--sub is required"},
		{[]string{"--token-secret", "short", "--sub", "alice"}, "at least 32 bytes"},
		{[]string{"--token-secret", testSecret, "--sub", "alice", "--topics", "a*b"}, "only allowed at the end"},
		{[]string{"--token-secret", testSecret, "--sub", "alice", "--ttl", "-1s"}, "must be positive"},
	} {
		var out, errOut bytes.Buffer
		err := tokenCommand(tc.args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("token %q: err %v, want %q", tc.args, err, tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("token %q printed %q", tc.args, out.String())
		}
	}
}

func TestRunTokenSecretChecked(t *testing.T) {
	t.Setenv("CHANNELS_TOKEN_SECRET", "")
	t.Setenv("CHANNELS_TOKEN_SECRET_PREVIOUS", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--addr", "127.0.0.1:0", "--token-secret", "short"}, "at least 32 bytes"},
		{[]string{"--addr", "127.0.0.1:0", "--token-secret-previous", testSecret}, "needs --token-secret"},
	} {
		var errOut bytes.Buffer
		err := run(tc.args, &errOut)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %q: err %v, want %q", tc.args, err, tc.want)
		}
	}
}
