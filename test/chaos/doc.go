// Package chaos is the chaos suite: one fault at a time injected into a
// real cluster (three channelsd containers and Redis, started by
// test/harness, some behind HAProxy) while a bounded background load runs:
// reconnecting clients (wsclient.Reconnecting) joined to rooms, and a
// publisher of numbered broadcasts through the HTTP API of a node that
// stays up.
//
// The faults: a node killed with SIGKILL, Redis paused for 10 s (docker
// pause), a node cut off from the network and healed, a client that stops
// reading (slow consumer), clients sending hostile frames (garbage,
// oversize, invalid UTF-8), and 1,000 clients connecting at once.
//
// Each scenario asserts its behaviour, and computes from what the clients
// recorded which broadcasts the README's guarantees say must not be lost
// (published while the client was joined to a node that was healthy, on a
// cluster whose Redis was up; at-most-once across a Redis outage or a
// partition) and checks that none of those was lost and that none at all
// arrived twice. Nodes' memory is read from their /metrics
// (go_memstats_heap_inuse_bytes, process_resident_memory_bytes) before the
// fault and after it, and bounded. At the end of the run TestMain prints
// one table with a row per scenario (with -v, or when the package fails;
// CHAOS_TABLE=<file> also writes it to a file).
//
// Like test/cluster, it needs a Docker engine and the images built by
// `make images`; without them it fails, saying so. See test/README.md.
package chaos
