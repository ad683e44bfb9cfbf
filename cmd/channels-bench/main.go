package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "idle":
		err = runIdle(ctx, os.Args[2:])
	case "fanout", "cluster":
		err = runFanout(ctx, os.Args[2:], os.Args[1])
	case "longpoll":
		err = runLongPoll(ctx, os.Args[2:])
	case "presence":
		err = runPresence(ctx, os.Args[2:])
	case "joincost":
		err = runJoinCost(ctx, os.Args[2:])
	case "churn":
		err = runChurn(ctx, os.Args[2:])
	case "all":
		err = runAll(ctx, os.Args[2:])
	case "-h", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "channels-bench: unknown scenario %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "channels-bench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `Usage: channels-bench SCENARIO [flags]

Scenarios:
  idle    N sockets each joined to a room; server RSS before and after,
          bytes per socket, connect-and-join rate
  fanout  N subscribers of K topics, a publisher at a rate; deliveries/s,
          latency percentiles, losses, duplicates, reordering, server CPU
          (needs nodes started with --conformance)
  cluster the same over several nodes (-addrs a,b,c): the publisher uses
          the first node; cross-node latency reported separately
  longpoll one long-poll session's throughput each way, then N idle
          sessions joined to rooms: server bytes per session
  presence join storm on one topic across nodes (-addrs): time until
          every node's observer lists every user
  joincost
          what presence adds to a join: the idle storm on one node
          without presence, with the in-memory tracker and with Redis,
          in the same run; node CPU per join, frames out, memory
  all     a short run of every scenario against nodes (and a Redis) it
          starts itself; rewrites the results section of BENCHMARKS.md
          (make bench)
  churn   sockets connecting, joining, leaving and disconnecting at a
          rate for a duration: the node's heap and goroutines before and
          after (from /metrics), for leaks

Run 'channels-bench SCENARIO -h' for the scenario's flags. Traffic goes
only to loopback addresses.
`)
}
