package main

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
)

// Secrets given as flags are noticed (the node warns at start-up), and
// --help says where they belong.
func TestSecretFlagsAreNoticed(t *testing.T) {
	o, err := parseFlags([]string{"--api-key", "k", "--redis", "redis://:pw@r:6379", "--max-channels", "5"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(o.secretsOnCommandLine, []string{"--api-key", "--redis"}) {
		t.Errorf("secrets on the command line: %v", o.secretsOnCommandLine)
	}
	t.Setenv("CHANNELS_TOKEN_SECRET", "0123456789abcdef0123456789abcdef")
	if o, _ := parseFlags([]string{"--redis", "redis://r:6379"}, io.Discard); len(o.secretsOnCommandLine) != 0 {
		t.Errorf("no secret flags, yet %v", o.secretsOnCommandLine)
	}
	var help bytes.Buffer
	_, _ = parseFlags([]string{"--help"}, &help)
	if !strings.Contains(help.String(), "belong in the environment") {
		t.Errorf("--help does not say where secrets belong:\n%s", help.String())
	}
}
