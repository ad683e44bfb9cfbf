package main

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"testing"
)

// The profiles stay on loopback: any other --pprof-addr is refused at
// start-up, not served.
func TestPprofAddrMustBeLoopback(t *testing.T) {
	for _, addr := range []string{":6060", "0.0.0.0:6060", "[::]:6060", "10.0.0.5:6060", "pprof.example:6060", "6060"} {
		if _, err := parseFlags([]string{"--pprof-addr", addr}, io.Discard); err == nil || !strings.Contains(err.Error(), "--pprof-addr") {
			t.Errorf("--pprof-addr %s: %v, want refused", addr, err)
		}
	}
	t.Setenv("CHANNELS_PPROF_ADDR", ":6060")
	if _, err := parseFlags(nil, io.Discard); err == nil {
		t.Error("CHANNELS_PPROF_ADDR=:6060 accepted")
	}
	for _, addr := range []string{"127.0.0.1:6060", "[::1]:6060", "localhost:6060", "127.0.0.2:0"} {
		if o, err := parseFlags([]string{"--pprof-addr", addr}, io.Discard); err != nil || o.pprofAddr != addr {
			t.Errorf("--pprof-addr %s: %v", addr, err)
		}
	}
}

// /debug/pprof/cmdline would show the command line, secrets included.
func TestPprofHidesTheCommandLine(t *testing.T) {
	srv := httptest.NewServer(pprofMux())
	defer srv.Close()
	get := func(path string) (int, string) {
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(b)
	}
	if code, body := get("/debug/pprof/cmdline"); code != http.StatusNotFound || strings.Contains(body, os.Args[0]) {
		t.Errorf("/debug/pprof/cmdline: %d %q, want 404", code, body)
	}
	if code, _ := get("/debug/pprof/"); code != http.StatusOK {
		t.Errorf("/debug/pprof/: %d", code)
	}
	if code, _ := get("/debug/pprof/heap?debug=1"); code != http.StatusOK {
		t.Errorf("/debug/pprof/heap: %d", code)
	}
}

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
