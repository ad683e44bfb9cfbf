package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/channelsd/channelsd/cmd/channelsd/app"
)

const goodConfig = `channels:
  - topic: "room:*"
    app: room
  - topic: "order:*"
    join: {proxy: "http://app:3000/channels/join"}
`

func TestCheckConfigCommand(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good.yaml"), filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(good, []byte(goodConfig), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bad, []byte("channels:\n  - topic: a\n    jion: {proxy: http://a/j}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := checkConfigCommand([]string{"--check-config", good}, &out); err != nil || !strings.Contains(out.String(), "ok, 2 channels") {
		t.Errorf("good file: %v, %q", err, out.String())
	}
	if err := checkConfigCommand([]string{"--check-config=" + bad}, &out); err == nil || !strings.Contains(err.Error(), "line 3: field jion not found") {
		t.Errorf("bad file: %v", err)
	}
	if err := checkConfigCommand([]string{"--check-config", filepath.Join(dir, "none.yaml")}, &out); err == nil {
		t.Error("a missing file passed")
	}
	if err := checkConfigCommand([]string{"--check-config"}, &out); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Errorf("no file: %v", err)
	}
}

// A missing --config file stops the start before anything starts.
func TestRunRefusesMissingConfig(t *testing.T) {
	cleanEnv(t)
	err := run([]string{"--config", filepath.Join(t.TempDir(), "none.yaml")}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "config:") {
		t.Errorf("run with a missing file: %v", err)
	}
}

// --print-default-config prints a configuration that --check-config
// passes, the one the node serves without --config.
func TestPrintDefaultConfig(t *testing.T) {
	var out bytes.Buffer
	if err := printDefaultConfigCommand(&out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), app.DefaultConfig) || !strings.Contains(out.String(), "app: room") {
		t.Fatalf("printed %q", out.String())
	}
	path := filepath.Join(t.TempDir(), "default.yaml")
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	var check bytes.Buffer
	if err := checkConfigCommand([]string{"--check-config", path}, &check); err != nil || !strings.Contains(check.String(), "ok, 2 channels") {
		t.Errorf("check of the printed default: %v, %q", err, check.String())
	}
}
