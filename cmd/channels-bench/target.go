package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// target is the node under test: one this process started (and stops), or
// one already running whose pid is known for memory readings.
type target struct {
	addr string // host:port on loopback
	pid  int
	cmd  *exec.Cmd
}

type targetFlags struct {
	addr      string
	pid       int
	spawn     bool
	nodeBin   string
	nodeFlags string
}

// defaultNodeFlags are the flags of a node -spawn-node starts.
const defaultNodeFlags = "--idle-timeout=10m --log-level=warn --max-messages-per-second=0 --longpoll-max-sessions-per-address=-1"

func (f *targetFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.addr, "addr", "127.0.0.1:4000", "node address (loopback only)")
	fs.IntVar(&f.pid, "pid", 0, "pid of the node, for its memory and CPU readings")
	fs.BoolVar(&f.spawn, "spawn-node", false, "start a node (bin/channelsd) on a free loopback port and stop it at the end")
	fs.StringVar(&f.nodeBin, "node-bin", "bin/channelsd", "node binary for -spawn-node")
	fs.StringVar(&f.nodeFlags, "node-flags", defaultNodeFlags, "extra flags for the spawned node (the per-socket rate limit is off: publishers send faster than a client should; so is the per-address long-poll session limit: one load generator opens thousands)")
}

func (f *targetFlags) open(ctx context.Context) (*target, error) {
	if !f.spawn {
		if err := checkLoopback(f.addr); err != nil {
			return nil, err
		}
		return &target{addr: f.addr, pid: f.pid}, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	args := append([]string{"--addr=" + addr}, strings.Fields(f.nodeFlags)...)
	cmd := exec.Command(f.nodeBin, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}
	t := &target{addr: addr, pid: cmd.Process.Pid, cmd: cmd}
	if err := t.awaitReady(ctx, 10*time.Second); err != nil {
		t.close()
		return nil, err
	}
	return t, nil
}

// awaitReady polls /readyz: a freshly exec'd process offers no event to
// wait on but its listening socket.
func (t *target) awaitReady(ctx context.Context, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + t.addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node at %s not ready after %s", t.addr, limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (t *target) close() {
	if t.cmd == nil {
		return
	}
	_ = t.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = t.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		_ = t.cmd.Process.Kill()
		<-done
	}
}

// rssBytes reads the resident set size of pid from /proc.
func rssBytes(pid int) (int64, error) {
	if pid == 0 {
		return 0, errors.New("no pid")
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, errors.New("VmRSS not found")
}

// cpuSeconds reads user+system CPU time of pid (0 for this process).
func cpuSeconds(pid int) (float64, error) {
	path := "/proc/self/stat"
	if pid != 0 {
		path = fmt.Sprintf("/proc/%d/stat", pid)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := string(b)
	// Fields after the command name, which is in parentheses and may hold spaces.
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(fields) < 13 {
		return 0, errors.New("short stat line")
	}
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100, nil // USER_HZ is 100 on Linux
}

// checkLoopback refuses any target outside 127.0.0.0/8 and ::1: load from
// this tool goes nowhere else.
func checkLoopback(hostport string) error {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return err
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("refusing non-loopback target %q", hostport)
	}
	return nil
}
