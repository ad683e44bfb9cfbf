package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// runAll is `make bench`: a short run of every scenario against nodes it
// starts itself (and a Redis, from the host's redis-server, for the
// cluster scenarios), then the results section of BENCHMARKS.md rewritten
// between its markers with the figures, the commands, the machine and the
// date. Each scenario runs as a child process of this binary, so one
// scenario's sockets and goroutines do not weigh on the next.
func runAll(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("all", flag.ContinueOnError)
	nodeBin := fs.String("node-bin", "bin/channelsd", "node binary")
	out := fs.String("out", "BENCHMARKS.md", "file whose results section is rewritten (between the markers)")
	redisBin := fs.String("redis-server", "redis-server", "redis-server binary, for the cluster scenarios")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	var rows []benchRow
	run := func(name string, argv ...string) {
		cmd := "channels-bench " + strings.Join(argv, " ")
		fmt.Fprintf(os.Stderr, "bench: %s\n", cmd)
		c := exec.CommandContext(ctx, self, argv...)
		var stdout bytes.Buffer
		c.Stdout, c.Stderr = &stdout, os.Stderr
		runErr := c.Run()
		row := benchRow{Name: name, Command: cmd}
		lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
		if last := lines[len(lines)-1]; strings.HasPrefix(last, "{") {
			row.Result = json.RawMessage(last)
		}
		if runErr != nil {
			row.Err = runErr.Error()
		}
		rows = append(rows, row)
	}
	node := func(extra ...string) (addr string, pid int, stop func(), err error) {
		addr, err = freeLoopback()
		if err != nil {
			return "", 0, nil, err
		}
		c := exec.Command(*nodeBin, append([]string{"--addr", addr, "--conformance", "--log-level", "warn", "--idle-timeout", "10m", "--max-messages-per-second", "0", "--longpoll-max-sessions-per-address", "-1"}, extra...)...)
		c.Stderr = os.Stderr
		if err := c.Start(); err != nil {
			return "", 0, nil, err
		}
		t := &target{addr: addr, pid: c.Process.Pid, cmd: c}
		if err := t.awaitReady(ctx, 10*time.Second); err != nil {
			t.close()
			return "", 0, nil, err
		}
		return addr, c.Process.Pid, t.close, nil
	}
	cluster := func(n int) (addrs, pids string, stop func(), err error) {
		raddr, err := freeLoopback()
		if err != nil {
			return "", "", nil, err
		}
		_, port, _ := net.SplitHostPort(raddr)
		rc := exec.Command(*redisBin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
		if err := rc.Start(); err != nil {
			return "", "", nil, fmt.Errorf("redis-server: %w", err)
		}
		var stops []func()
		stop = func() {
			for _, s := range stops {
				s()
			}
			_ = rc.Process.Kill()
			_ = rc.Wait()
		}
		for i := 0; i < 50 && !redisUp(raddr); i++ {
			time.Sleep(100 * time.Millisecond) // a freshly exec'd redis-server offers no event but its port
		}
		var as, ps []string
		for i := range n {
			a, p, s, err := node("--redis", "redis://"+raddr, "--node-id", "bench"+strconv.Itoa(i+1))
			if err != nil {
				stop()
				return "", "", nil, err
			}
			stops = append(stops, s)
			as, ps = append(as, a), append(ps, strconv.Itoa(p))
		}
		return strings.Join(as, ","), strings.Join(ps, ","), stop, nil
	}

	run("idle WebSockets", "idle", "-spawn-node", "-node-bin", *nodeBin, "-conns", "5000", "-settle", "3s")
	if a, p, stop, err := node(); err == nil {
		run("fan-out, one node", "fanout", "-addrs", a, "-pids", strconv.Itoa(p), "-subs", "5000", "-rate", "0", "-count", "200")
		stop()
	} else {
		rows = append(rows, benchRow{Name: "fan-out, one node", Err: err.Error()})
	}
	if as, ps, stop, err := cluster(2); err == nil {
		run("latency, two nodes", "cluster", "-addrs", as, "-pids", ps, "-subs", "1000", "-rate", "10", "-count", "100")
		stop()
	} else {
		rows = append(rows, benchRow{Name: "latency, two nodes", Err: err.Error()})
	}
	run("long-poll", "longpoll", "-spawn-node", "-node-bin", *nodeBin, "-messages", "5000", "-sessions", "1000", "-settle", "3s")
	if as, ps, stop, err := cluster(3); err == nil {
		run("presence join storm, three nodes", "presence", "-addrs", as, "-pids", ps, "-users", "1000")
		stop()
	} else {
		rows = append(rows, benchRow{Name: "presence join storm, three nodes", Err: err.Error()})
	}
	run("churn", "churn", "-spawn-node", "-node-bin", *nodeBin, "-rate", "100", "-duration", "10s")
	return writeResults(*out, rows)
}

type benchRow struct {
	Name    string
	Command string
	Result  json.RawMessage
	Err     string
}

const (
	resultsBegin = "<!-- make bench: results begin -->"
	resultsEnd   = "<!-- make bench: results end -->"
)

// writeResults replaces the text between the markers in path (appending
// the markers at the end the first time).
func writeResults(path string, rows []benchRow) error {
	old, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var b strings.Builder
	b.WriteString(resultsBegin + "\n")
	fmt.Fprintf(&b, "## Latest `make bench` (%s)\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Machine: %s. Written by `make bench` (`bin/channels-bench all`): short runs, nodes, Redis and client on the same cores, so compare runs on one machine, not absolute figures.\n\n", machine())
	b.WriteString("| scenario | figures | command |\n|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| %s | %s | `%s` |\n", r.Name, figures(r), r.Command)
	}
	b.WriteString(resultsEnd + "\n")
	s := string(old)
	i, j := strings.Index(s, resultsBegin), strings.Index(s, resultsEnd)
	if i >= 0 && j > i {
		s = s[:i] + b.String() + strings.TrimPrefix(s[j+len(resultsEnd):], "\n")
	} else {
		s = strings.TrimRight(s, "\n") + "\n\n" + b.String()
	}
	return os.WriteFile(path, []byte(s), 0o644)
}

// figures picks the headline numbers of a scenario's JSON line.
func figures(r benchRow) string {
	if len(r.Result) == 0 {
		return "failed: " + r.Err
	}
	var m map[string]any
	if json.Unmarshal(r.Result, &m) != nil {
		return "unreadable result"
	}
	f := func(k, format string) string {
		v, ok := m[k].(float64)
		if !ok {
			return "?"
		}
		return fmt.Sprintf(format, v)
	}
	var s string
	switch m["scenario"] {
	case "idle":
		s = f("joined", "%.0f sockets joined; ") + f("server_bytes_per_socket", "%.0f bytes of node RSS per idle socket; ") + f("joins_per_second", "%.0f connect+join/s")
	case "fanout":
		per := "?"
		if d, c := m["delivered"].(float64), m["server_cpu_seconds"].(float64); c > 0 {
			per = fmt.Sprintf("%.0f", d/c)
		}
		s = f("deliveries_per_second", "%.0f deliveries/s; ") + per + " deliveries per server CPU-second; " + f("lost", "%.0f lost")
	case "cluster":
		s = f("latency_p50_ms", "p50 %.2f ms, ") + f("latency_p99_ms", "p99 %.2f ms; ") + f("cross_node_p99_ms", "cross-node p99 %.2f ms; ") + f("lost", "%.0f lost")
	case "longpoll":
		s = f("down_per_second", "%.0f msg/s down, ") + f("up_per_second", "%.0f up through one session; ") + f("server_bytes_per_session", "%.0f bytes per idle session")
	case "presence":
		s = f("tracked", "%.0f users; ") + f("storm_seconds", "storm %.2f s, ") + f("converge_seconds", "converged %.3f s after the last join")
	case "churn":
		s = f("cycles", "%.0f cycles; ") + f("heap_inuse_before", "heap %.0f → ") + f("heap_inuse_after", "%.0f bytes; ") + f("goroutines_before", "goroutines %.0f → ") + f("goroutines_after", "%.0f")
	default:
		s = string(r.Result)
	}
	if r.Err != "" {
		s += " (exit: " + r.Err + ")"
	}
	return s
}

// machine names the CPU, core count and memory, from /proc.
func machine() string {
	model := runtime.GOARCH
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if _, rest, ok := strings.Cut(string(b), "MemTotal:"); ok {
			if kb, err := strconv.Atoi(strings.Fields(rest)[0]); err == nil {
				mem = fmt.Sprintf(", %.0f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return fmt.Sprintf("%s, %d CPUs%s, %s", model, runtime.NumCPU(), mem, runtime.Version())
}

func freeLoopback() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func redisUp(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && strings.HasPrefix(line, "+PONG")
}
