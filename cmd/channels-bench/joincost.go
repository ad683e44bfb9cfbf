package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// joinCostRun is one idle storm of runJoinCost: a fresh node (and for
// "redis" a fresh redis-server), N sockets joined, the node's CPU.
type joinCostRun struct {
	Mode       string     `json:"mode"`
	NodeBin    string     `json:"node_bin"`
	Idle       idleResult `json:"idle"`
	RedisCPU   float64    `json:"redis_cpu_seconds,omitempty"`
	CPUPerJoin float64    `json:"server_cpu_ms_per_join"`
	Err        string     `json:"error,omitempty"`
}

type joinCostResult struct {
	Scenario string        `json:"scenario"`
	Conns    int           `json:"conns"`
	Rooms    int           `json:"rooms"`
	Runs     []joinCostRun `json:"runs"`
}

// runJoinCost answers "what does presence add to a join": the idle
// storm (N sockets into R rooms, one node) once per mode, in the same
// run: "plain" joins conformance topics that track nobody, "memory" the
// default app's rooms (presence_state to the joiner, a presence_diff to
// the room) on a node with the in-memory tracker, "redis" the same rooms
// on a node with a redis-server of its own. Each storm is a child
// process (`idle -spawn-node`), so one storm's sockets do not weigh on
// the next, and the modes alternate round by round so that the machine's
// other load falls on all of them alike. The node's CPU is read from
// /proc over the storm and the settle after it, so a coalesced diff sent
// after the last join is counted too.
func runJoinCost(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("joincost", flag.ContinueOnError)
	nodeBins := fs.String("node-bin", "bin/channelsd", "node binary; a comma-separated list compares binaries run after run")
	modes := fs.String("modes", "plain,memory,redis", "storms to run, in this order every round: plain, memory, redis")
	conns := fs.Int("conns", 10000, "sockets per storm (at most 19,000: one client process)")
	rooms := fs.Int("rooms", 100, "rooms the sockets spread over")
	rounds := fs.Int("rounds", 1, "rounds of every mode and binary")
	parallel := fs.Int("parallel", 64, "concurrent connects")
	settle := fs.Duration("settle", 3*time.Second, "wait after the last join before the CPU and memory readings")
	redisBin := fs.String("redis-server", "redis-server", "redis-server binary, for the redis mode")
	nodeFlags := fs.String("node-flags", defaultNodeFlags, "flags of every spawned node")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *conns <= 0 || *conns > 19000 {
		return fmt.Errorf("-conns must be 1..19000")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bins := strings.Split(*nodeBins, ",")
	res := joinCostResult{Scenario: "joincost", Conns: *conns, Rooms: *rooms}
	for r := 0; r < *rounds && ctx.Err() == nil; r++ {
		for _, bin := range bins {
			for _, mode := range strings.Split(*modes, ",") {
				run := joinCostRun{Mode: mode, NodeBin: bin}
				argv := []string{"idle", "-spawn-node", "-node-bin", bin, "-conns", strconv.Itoa(*conns), "-rooms", strconv.Itoa(*rooms),
					"-parallel", strconv.Itoa(*parallel), "-settle", settle.String()}
				flags := *nodeFlags
				var stopRedis func() float64
				switch mode {
				case "plain":
					argv = append(argv, "-plain")
				case "memory":
				case "redis":
					addr, stop, err := startRedis(ctx, *redisBin)
					if err != nil {
						return err
					}
					stopRedis = stop
					flags += " --redis=redis://" + addr + " --node-id=joincost"
				default:
					return fmt.Errorf("unknown mode %q", mode)
				}
				argv = append(argv, "-node-flags", flags)
				fmt.Fprintf(os.Stderr, "joincost: round %d, %s, %s\n", r+1, bin, mode)
				c := exec.CommandContext(ctx, self, argv...)
				var out bytes.Buffer
				c.Stdout, c.Stderr = &out, nil // the child's progress lines are noise here
				err := c.Run()
				if stopRedis != nil {
					run.RedisCPU = stopRedis()
				}
				lines := strings.Split(strings.TrimSpace(out.String()), "\n")
				if jerr := json.Unmarshal([]byte(lines[len(lines)-1]), &run.Idle); jerr != nil || err != nil {
					run.Err = fmt.Sprintf("%v %v", err, jerr)
				}
				if run.Idle.Joined > 0 {
					run.CPUPerJoin = 1000 * run.Idle.ServerCPU / float64(run.Idle.Joined)
				}
				res.Runs = append(res.Runs, run)
				printJoinCostRun(run)
			}
		}
	}

	// Medians per binary and mode, and the presence modes over plain.
	fmt.Printf("\n%d sockets into %d rooms, one node; medians over %d round(s)\n", *conns, *rooms, *rounds)
	fmt.Printf("%-28s %-7s %14s %10s %12s %12s %12s\n", "binary", "mode", "node ms/join", "× plain", "frames/join", "redis ms/j", "KiB/socket")
	for _, bin := range bins {
		plain := 0.0
		for _, mode := range strings.Split(*modes, ",") {
			var cpu, frames, redis, kib []float64
			for _, r := range res.Runs {
				if r.NodeBin == bin && r.Mode == mode && r.Err == "" && r.Idle.Joined > 0 {
					n := float64(r.Idle.Joined)
					cpu = append(cpu, r.CPUPerJoin)
					frames = append(frames, r.Idle.FramesOut/n)
					redis = append(redis, 1000*r.RedisCPU/n)
					kib = append(kib, r.Idle.BytesPerSocket/1024)
				}
			}
			if len(cpu) == 0 {
				continue
			}
			m := median(cpu)
			if mode == "plain" {
				plain = m
			}
			ratio := "-"
			if plain > 0 {
				ratio = fmt.Sprintf("%.2f", m/plain)
			}
			rd := "-"
			if mode == "redis" {
				rd = fmt.Sprintf("%.3f", median(redis))
			}
			fmt.Printf("%-28s %-7s %14.3f %10s %12.1f %12s %12.2f\n", bin, mode, m, ratio, median(frames), rd, median(kib))
		}
	}
	line, _ := json.Marshal(res)
	fmt.Println(string(line))
	return nil
}

func printJoinCostRun(r joinCostRun) {
	if r.Err != "" {
		fmt.Printf("%-7s %s: failed: %s\n", r.Mode, r.NodeBin, r.Err)
		return
	}
	i := r.Idle
	fmt.Printf("%-7s %s: %d joined (%d failed) in %.1f s; node %.2f s CPU, %.3f ms per join; %.1f frames out per join; %.2f KiB per idle socket; client %.2f s",
		r.Mode, r.NodeBin, i.Joined, i.Failed, i.ConnectSeconds, i.ServerCPU, r.CPUPerJoin, i.FramesOut/float64(max(i.Joined, 1)), i.BytesPerSocket/1024, i.ClientCPU)
	if r.Mode == "redis" {
		fmt.Printf("; redis %.2f s CPU", r.RedisCPU)
	}
	fmt.Println()
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// startRedis starts a redis-server on a free loopback port, without
// persistence, and returns its address and a stop that returns the CPU
// seconds it used.
func startRedis(ctx context.Context, bin string) (string, func() float64, error) {
	addr, err := freeLoopback()
	if err != nil {
		return "", nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	c := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
	if err := c.Start(); err != nil {
		return "", nil, fmt.Errorf("redis-server: %w", err)
	}
	stop := func() float64 {
		cpu, _ := cpuSeconds(c.Process.Pid)
		_ = c.Process.Kill()
		_ = c.Wait()
		return cpu
	}
	for i := 0; !redisUp(addr); i++ {
		if i == 50 || ctx.Err() != nil {
			stop()
			return "", nil, fmt.Errorf("redis-server on %s did not answer", addr)
		}
		time.Sleep(100 * time.Millisecond) // a freshly exec'd redis-server offers no event but its port
	}
	return addr, stop, nil
}
