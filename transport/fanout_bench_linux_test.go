//go:build linux

package transport

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/channelsd/channelsd/channels"
	"github.com/channelsd/channelsd/test/childproc"
)

// fanoutReaderEnv, set in the environment of this test binary, makes it
// the reader process of BenchmarkFanoutCPU instead of running tests: its
// value is "N URL", N connections to open to URL.
const fanoutReaderEnv = "TRANSPORT_FANOUT_READER"

// BenchmarkFanoutCPU measures what the server side of a fan-out costs in
// CPU: an op is one 100-byte frame sent to each of N WebSocket
// connections and written out by the writers, at 10 broadcasts a second
// as in make bench-peer's delivery workload (fanoutSizes, fanoutInterval), and cpu-ns/delivery is this
// process's CPU time (user and system, getrusage) over the ops divided by
// the deliveries. The clients run in a child process (this binary again,
// see fanoutReaderEnv) that reads every connection, so their CPU is not
// counted; the kernel's work for a loopback write, which includes the
// receiving end's TCP processing and waking the reader, is. Set it against
// BenchmarkKernelFloor/fanout-N, the same writes with nothing around them.
func BenchmarkFanoutCPU(b *testing.B) {
	for _, n := range fanoutSizes(b) {
		b.Run(fmt.Sprintf("subs=%d", n), func(b *testing.B) { benchmarkFanoutCPU(b, n) })
	}
}

func benchmarkFanoutCPU(b *testing.B, n int) {
	ep := newFakeEndpoint()
	ep.opened = make(chan *fakeSocket, n)
	// Long runs (-benchtime 100x: ten seconds of broadcasts, after
	// thousands of dials) must not meet the harness's idle timeout: the
	// clients send nothing.
	cfg := WebSocketConfig{IdleTimeout: 10 * time.Minute, NoSendBatches: os.Getenv(fanoutNoBatchesEnv) != ""}
	hs := newHarness(b, eventMode, cfg, ep)
	// Its cleanup runs before the harness's (LIFO): the reader exits when
	// its stdin closes, which closes every connection.
	reader := startFanoutReader(b, n, hs.url+"?vsn=2.0.0")
	socks := make([]*fakeSocket, 0, n)
	for range n {
		socks = append(socks, <-ep.opened)
	}

	frame := channels.Frame{Data: bytes.Repeat([]byte("x"), 100)}
	out := &hs.h.Stats().MessagesOut
	want := out.Load()
	tick := time.NewTicker(fanoutInterval(b))
	defer tick.Stop()
	batches0 := hs.h.Stats().SendBatches.Load()
	cpu0, rcpu0 := processCPU(b), reader.cpu(b)
	var dispatch, worst time.Duration
	for b.Loop() {
		<-tick.C
		t0 := time.Now()
		for _, s := range socks {
			if err := s.conn.Send(frame); err != nil {
				b.Fatal(err)
			}
		}
		d := time.Since(t0)
		dispatch, worst = dispatch+d, max(worst, d)
		want += uint64(n)
	}
	// The last broadcast's writes: a light poll, well within one
	// interval for the whole fan-out.
	for deadline := time.Now().Add(waitLimit); out.Load() < want; {
		if time.Now().After(deadline) {
			b.Fatalf("%d of the frames were not written", want-out.Load())
		}
		time.Sleep(time.Millisecond)
	}
	cpu, rcpu := processCPU(b)-cpu0, reader.cpu(b)-rcpu0
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N*n), "cpu-ns/delivery")
	b.ReportMetric(float64(rcpu.Nanoseconds())/float64(b.N*n), "reader-cpu-ns/delivery")
	// How long a broadcast's Sends took, on average and at worst: the
	// broadcaster needs a P while the writers write, as a node's
	// publish and its reads of Redis do.
	b.ReportMetric(float64(dispatch.Microseconds())/float64(b.N), "dispatch-µs/op")
	b.ReportMetric(float64(worst.Microseconds()), "max-dispatch-µs")
	if batches := hs.h.Stats().SendBatches.Load() - batches0; batches > 0 {
		b.ReportMetric(float64(b.N*n)/float64(batches), "deliveries/batch")
	}
}

// fanoutReader is the reader process of a fan-out benchmark.
type fanoutReader struct{ pid int }

// startFanoutReader starts the reader process with n connections to url
// and waits until they are open.
func startFanoutReader(b *testing.B, n int, url string) fanoutReader {
	line := childproc.Start(b, fmt.Sprintf("%s=%d %s", fanoutReaderEnv, n, url), "-test.run=^$")
	pid, err := strconv.Atoi(strings.TrimPrefix(line, "ready "))
	if !strings.HasPrefix(line, "ready ") || err != nil {
		b.Fatalf("reader process: %q", line)
	}
	return fanoutReader{pid: pid}
}

// cpu is the reader's user and system time so far, from /proc, in clock
// ticks of 10 ms: the writer's way of sending may move work to the
// readers' side of the kernel, and a benchmark that timed only the
// writer would not see it. Over a run of seconds a tick is within 1 %.
func (r fanoutReader) cpu(b *testing.B) time.Duration {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command, which is in parentheses and may
	// hold anything: state is the first, utime the 12th, stime the 13th.
	i := bytes.LastIndexByte(stat, ')')
	f := strings.Fields(string(stat[i+1:]))
	if i < 0 || len(f) < 13 {
		b.Fatalf("/proc/%d/stat: %q", r.pid, stat)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", r.pid, stat)
	}
	// USER_HZ is 100 on every Linux the tests run on.
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// fanoutSubsEnv and fanoutRateEnv, set in the environment of go test,
// replace the numbers of subscribers of BenchmarkFanoutCPU and
// BenchmarkKernelFloor/fanout-N (comma-separated) and their broadcasts a
// second, so that make bench-peer measures the floor of the workload it
// runs and no other.
const (
	fanoutSubsEnv = "TRANSPORT_FANOUT_SUBS"
	fanoutRateEnv = "TRANSPORT_FANOUT_RATE"
)

// fanoutNoBatchesEnv, set to anything, runs BenchmarkFanoutCPU with
// NoSendBatches: the two write paths side by side.
const fanoutNoBatchesEnv = "TRANSPORT_FANOUT_NOBATCHES"

// fanoutInterval is the time between two broadcasts: a tenth of a second,
// as in make bench-peer, unless fanoutRateEnv says otherwise.
func fanoutInterval(b *testing.B) time.Duration {
	spec := os.Getenv(fanoutRateEnv)
	if spec == "" {
		return 100 * time.Millisecond
	}
	rate, err := strconv.ParseFloat(spec, 64)
	if err != nil || rate <= 0 || rate > 1e6 {
		b.Fatalf("%s=%q: want broadcasts a second", fanoutRateEnv, spec)
	}
	return time.Duration(float64(time.Second) / rate)
}

func fanoutSizes(b *testing.B) []int {
	spec := os.Getenv(fanoutSubsEnv)
	if spec == "" {
		return []int{1000, 5000}
	}
	var sizes []int
	for f := range strings.SplitSeq(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("%s=%q: want positive numbers separated by commas", fanoutSubsEnv, spec)
		}
		sizes = append(sizes, n)
	}
	return sizes
}

// processCPU is this process's user and system time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func init() {
	otherMain = func() (int, bool) {
		spec := os.Getenv(fanoutReaderEnv)
		if spec == "" {
			return 0, false
		}
		return runFanoutReader(spec), true
	}
}

// runFanoutReader is the reader process: it opens the connections spec
// names, reads and discards everything on them, and exits when its stdin
// closes. It returns the process's exit code.
func runFanoutReader(spec string) int {
	nstr, url, ok := strings.Cut(spec, " ")
	n, err := strconv.Atoi(nstr)
	if !ok || err != nil {
		fmt.Fprintf(os.Stderr, "fanout reader: bad %s %q\n", fanoutReaderEnv, spec)
		return 2
	}
	conns := make([]net.Conn, 0, n)
	var wg sync.WaitGroup
	for range n {
		conn, br, _, err := ws.Dialer{Timeout: waitLimit}.Dial(context.Background(), url)
		if err != nil {
			fmt.Fprintf(os.Stderr, "fanout reader: dial: %v\n", err)
			return 1
		}
		if br != nil {
			ws.PutReader(br)
		}
		conns = append(conns, conn)
		wg.Go(func() { _, _ = io.Copy(io.Discard, conn) })
	}
	fmt.Println("ready", os.Getpid())
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		_ = c.Close()
	}
	wg.Wait()
	return 0
}
