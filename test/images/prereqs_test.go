package images

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// allNeeds is what `make test` asks prereqs.sh for (the Makefile's
// TEST_NEEDS).
var allNeeds = []string{"go", "cgo", "docker", "redis", "redis-image", "haproxy-image", "chromium", "certs"}

// allPackages is what a machine with only Go and Docker is missing, in the
// order prereqs.sh lists them.
const allPackages = "gcc libc6-dev redis-server haproxy chromium fonts-liberation ca-certificates"

// fakeTools are shell scripts standing in for the commands prereqs.sh
// runs. apt-get logs each call (prefixed by "sudo" when sudo ran it) and
// "installs" a package by creating what prereqs.sh looks for, under the
// fake root or in the fake bin directory.
var fakeTools = map[string]string{
	"go": `[ "$1 $2" = "env GOVERSION" ] && echo "${FAKE_GOVERSION:-go1.26.8}"`,
	"docker": `if [ "$FAKE_DOCKER" = down ]; then
	echo "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?" >&2
	exit 1
fi
echo 20.10.24`,
	"id": `echo "$FAKE_UID"`,
	"apt-get": `echo "${FAKE_VIA:+$FAKE_VIA }$*" >>"$FAKE_LOG"
[ "$1" = install ] || exit 0
for p in "$@"; do
	case $p in
	gcc) printf '#!/bin/sh\n' >"$FAKE_BIN/gcc"; chmod +x "$FAKE_BIN/gcc" ;;
	libc6-dev) mkdir -p "$PREREQS_ROOT/usr/include"; : >"$PREREQS_ROOT/usr/include/stdio.h" ;;
	redis-server) mkdir -p "$PREREQS_ROOT/usr/bin"; printf '#!/bin/sh\n' >"$PREREQS_ROOT/usr/bin/redis-server"; chmod +x "$PREREQS_ROOT/usr/bin/redis-server" ;;
	haproxy) mkdir -p "$PREREQS_ROOT/usr/sbin"; printf '#!/bin/sh\n' >"$PREREQS_ROOT/usr/sbin/haproxy"; chmod +x "$PREREQS_ROOT/usr/sbin/haproxy" ;;
	chromium) printf '#!/bin/sh\n' >"$FAKE_BIN/chromium"; chmod +x "$FAKE_BIN/chromium" ;;
	fonts-liberation) mkdir -p "$PREREQS_ROOT/usr/share/fonts/truetype/liberation" ;;
	ca-certificates) mkdir -p "$PREREQS_ROOT/etc/ssl/certs"; : >"$PREREQS_ROOT/etc/ssl/certs/ca-certificates.crt" ;;
	esac
done`,
	"sudo": `[ "$FAKE_SUDO" = yes ] || { echo "sudo: a password is required" >&2; exit 1; }
[ "$1" = -n ] && shift
FAKE_VIA=sudo exec "$@"`,
}

// realTools are the host's commands prereqs.sh and the fakes use, linked into the fake
// bin directory, which is the whole PATH: nothing else of the host (its
// redis-server, haproxy or chromium) can be found.
var realTools = []string{"dirname", "awk", "grep", "head", "timeout", "env", "mktemp", "cat", "rm", "mkdir", "chmod", "true"}

type machine struct {
	bin, root, log string
	env            map[string]string
}

// newMachine is a machine with Go 1.26.8 and a Docker engine, running as
// root, with none of the packages; without lists the fake commands to
// leave out.
func newMachine(t *testing.T, without ...string) *machine {
	t.Helper()
	dir := t.TempDir()
	m := &machine{bin: filepath.Join(dir, "bin"), root: filepath.Join(dir, "root"), log: filepath.Join(dir, "apt.log")}
	for _, d := range []string{m.bin, m.root} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	skip := map[string]bool{}
	for _, w := range without {
		skip[w] = true
	}
	for name, body := range fakeTools {
		if skip[name] {
			continue
		}
		m.write(t, name, body)
	}
	for _, name := range realTools {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatalf("%s is needed by prereqs.sh: %v", name, err)
		}
		if err := os.Symlink(p, filepath.Join(m.bin, name)); err != nil {
			t.Fatal(err)
		}
	}
	m.env = map[string]string{
		"PATH":         m.bin,
		"PREREQS_ROOT": m.root,
		"FAKE_BIN":     m.bin,
		"FAKE_LOG":     m.log,
		"FAKE_UID":     "0",
	}
	return m
}

func (m *machine) write(t *testing.T, name, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(m.bin, name), []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

// install gives the machine packages without apt-get, as if they were
// there before.
func (m *machine) install(t *testing.T, pkgs ...string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(m.bin, "apt-get"), append([]string{"install"}, pkgs...)...)
	cmd.Env = m.environ()
	cmd.Env = append(cmd.Env, "FAKE_LOG="+os.DevNull)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("installing %v: %v\n%s", pkgs, err, out)
	}
}

func (m *machine) environ() []string {
	var env []string
	for k, v := range m.env {
		env = append(env, k+"="+v)
	}
	return env
}

type result struct {
	code           int
	stdout, stderr string
	apt            []string // apt-get calls
}

func (m *machine) run(t *testing.T, args ...string) result {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal(err)
	}
	script, err := filepath.Abs("prereqs.sh")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sh, append([]string{script}, args...)...)
	cmd.Env = m.environ()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("running prereqs.sh: %v", err)
		}
		r.code = ee.ExitCode()
	}
	if b, err := os.ReadFile(m.log); err == nil {
		r.apt = strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	}
	return r
}

func (r result) String() string {
	return "exit " + strconv.Itoa(r.code) + "\nstdout:\n" + r.stdout + "stderr:\n" + r.stderr + "apt-get calls: " + strings.Join(r.apt, " | ")
}

func wantApt(t *testing.T, r result, want ...string) {
	t.Helper()
	if strings.Join(r.apt, "\n") != strings.Join(want, "\n") {
		t.Fatalf("apt-get calls = %q, want %q\n%s", r.apt, want, r)
	}
}

func TestPrereqsAsRootInstallsWhatIsMissing(t *testing.T) {
	m := newMachine(t)
	r := m.run(t, allNeeds...)
	if r.code != 0 {
		t.Fatalf("want success after installing\n%s", r)
	}
	wantApt(t, r, "update -qq", "install -y -qq "+allPackages)
	if !strings.Contains(r.stdout, "prereqs: installing "+allPackages+" (apt-get as root)") ||
		!strings.Contains(r.stdout, "prereqs: all present:") {
		t.Fatalf("stdout does not say what it installed and that all is present\n%s", r)
	}
	// A second run finds everything and installs nothing.
	os.Remove(m.log)
	r = m.run(t, append([]string{"-q"}, allNeeds...)...)
	if r.code != 0 || r.stdout != "" || r.stderr != "" || r.apt != nil {
		t.Fatalf("second run: want silence and no apt-get\n%s", r)
	}
}

// Only redis-server is missing, the case of a machine that has the rest:
// exactly that package is installed.
func TestPrereqsInstallsOnlyRedisServer(t *testing.T) {
	m := newMachine(t)
	m.install(t, "gcc", "libc6-dev", "haproxy", "chromium", "fonts-liberation", "ca-certificates")
	r := m.run(t, allNeeds...)
	if r.code != 0 {
		t.Fatalf("want success\n%s", r)
	}
	wantApt(t, r, "update -qq", "install -y -qq redis-server")
}

func TestPrereqsWithoutRootPrintsTheCommand(t *testing.T) {
	m := newMachine(t)
	m.env["FAKE_UID"] = "1000"
	m.install(t, "gcc", "libc6-dev", "ca-certificates")
	r := m.run(t, allNeeds...)
	if r.code == 0 {
		t.Fatalf("want failure\n%s", r)
	}
	wantApt(t, r)
	want := "prereqs: missing Debian packages; install them with: sudo apt-get update && sudo apt-get install -y redis-server haproxy chromium fonts-liberation\n"
	if r.stderr != want {
		t.Fatalf("stderr = %q, want the one line %q\n%s", r.stderr, want, r)
	}
}

func TestPrereqsWithPasswordlessSudoInstalls(t *testing.T) {
	m := newMachine(t)
	m.env["FAKE_UID"] = "1000"
	m.env["FAKE_SUDO"] = "yes"
	r := m.run(t, allNeeds...)
	if r.code != 0 {
		t.Fatalf("want success\n%s", r)
	}
	wantApt(t, r, "sudo update -qq", "sudo install -y -qq "+allPackages)
}

func TestPrereqsInstallNoPrintsTheCommandAsRoot(t *testing.T) {
	m := newMachine(t)
	m.env["PREREQS_INSTALL"] = "no"
	r := m.run(t, allNeeds...)
	wantApt(t, r)
	want := "prereqs: missing Debian packages; install them with: apt-get update && apt-get install -y " + allPackages + "\n"
	if r.code == 0 || r.stderr != want {
		t.Fatalf("want failure and stderr %q\n%s", want, r)
	}
}

func TestPrereqsWithoutAptGet(t *testing.T) {
	m := newMachine(t, "apt-get")
	r := m.run(t, "redis")
	wantApt(t, r)
	want := "prereqs: missing redis-server (Debian package names): install them with the system's package manager\n"
	if r.code == 0 || r.stderr != want {
		t.Fatalf("want failure and stderr %q\n%s", want, r)
	}
}

// REDIS_IMAGE and HAPROXY_IMAGE naming a registry's images free the image
// build from the host's binaries, but not the Redis tests, which run
// redis-server on loopback.
func TestPrereqsImageOverrides(t *testing.T) {
	m := newMachine(t)
	m.install(t, "ca-certificates")
	m.env["REDIS_IMAGE"] = "redis:7"
	m.env["HAPROXY_IMAGE"] = "haproxy:2.8"
	r := m.run(t, "go", "docker", "certs", "redis-image", "haproxy-image")
	if r.code != 0 {
		t.Fatalf("images with registry overrides: want success\n%s", r)
	}
	wantApt(t, r)
	r = m.run(t, "redis", "redis-image", "haproxy-image")
	if r.code != 0 {
		t.Fatalf("want success\n%s", r)
	}
	wantApt(t, r, "update -qq", "install -y -qq redis-server")
}

func TestPrereqsDockerDownInstallsNothing(t *testing.T) {
	m := newMachine(t)
	m.env["FAKE_DOCKER"] = "down"
	r := m.run(t, allNeeds...)
	if r.code == 0 {
		t.Fatalf("want failure\n%s", r)
	}
	wantApt(t, r)
	lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
	if len(lines) != 2 ||
		lines[0] != "prereqs: cannot reach the Docker engine (docker version: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?): start it, set DOCKER_HOST, or give this user its socket (the docker group)" ||
		!strings.HasPrefix(lines[1], "prereqs: missing Debian packages; install them with: apt-get update && apt-get install -y "+allPackages) {
		t.Fatalf("want the Docker line and the packages line\n%s", r)
	}
}

func TestPrereqsDockerMissing(t *testing.T) {
	m := newMachine(t, "docker")
	r := m.run(t, "docker")
	want := "prereqs: the docker command is not installed: the integration tests need a running Docker engine (install and start one, e.g. Debian's docker.io; make test cannot)\n"
	if r.code == 0 || r.stderr != want {
		t.Fatalf("want failure and stderr %q\n%s", want, r)
	}
}

func TestPrereqsGoTooOld(t *testing.T) {
	m := newMachine(t)
	m.env["FAKE_GOVERSION"] = "go1.25.3"
	r := m.run(t, "go")
	if r.code == 0 || !strings.HasPrefix(r.stderr, "prereqs: go.mod needs Go ") || !strings.Contains(r.stderr, "and go is go1.25.3") {
		t.Fatalf("want failure naming both versions\n%s", r)
	}
	m.env["FAKE_GOVERSION"] = "go1.27rc1"
	if r := m.run(t, "go"); r.code != 0 {
		t.Fatalf("a newer Go: want success\n%s", r)
	}
}

// make test checks the whole machine, with the needs the tests above
// exercise, before it runs anything else; test-cluster checks Chromium
// before it builds images. `make -n` prints the commands without running
// them.
func TestMakeChecksPrereqsFirst(t *testing.T) {
	first := func(target string) string {
		t.Helper()
		cmd := exec.Command("make", "-n", "--no-print-directory", target)
		cmd.Dir = "../.."
		// Under make test this runs inside make: the outer make's flags
		// (-n, -k, a jobserver) are not this one's.
		for _, kv := range os.Environ() {
			if k, _, _ := strings.Cut(kv, "="); k != "MAKEFLAGS" && k != "MAKELEVEL" && k != "MFLAGS" {
				cmd.Env = append(cmd.Env, kv)
			}
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("make -n %s: %v", target, err)
		}
		line, _, _ := strings.Cut(string(out), "\n")
		return line
	}
	if got, want := first("test"), "test/images/prereqs.sh "+strings.Join(allNeeds, " "); !strings.HasSuffix(got, want) {
		t.Errorf("make test's first command = %q, want it to end in %q", got, want)
	}
	if got := first("test-cluster"); !strings.Contains(got, "test/images/prereqs.sh") || !strings.Contains(got, " chromium") {
		t.Errorf("make test-cluster's first command = %q, want the check of chromium", got)
	}
	if got := first("run"); strings.Contains(got, "prereqs") {
		t.Errorf("make run checks prerequisites (%q); it needs only Go", got)
	}
}
