// Command channelsd runs one channelsd node: a Phoenix Channels server
// serving the default application (rooms with presence, the demo page and,
// with --conformance, the conformance channel), or the channels a
// configuration file declares (--config): topic patterns with presence,
// history, events clients may broadcast, and calls to the application's
// HTTP backend for connects, joins, pushes and leaves. `channelsd
// --check-config FILE` checks such a file and names the line of a mistake.
//
// Every flag has a CHANNELS_* environment variable; `channelsd --help`
// lists both with their defaults. Without --redis the node runs alone with
// in-memory fan-out and presence; with --redis any number of nodes sharing
// that Redis behave as one server. SIGTERM (or Ctrl-C) drains the node:
// not ready, new sockets refused, open ones closed with 1012 in batches
// over --drain-window so clients reconnect elsewhere, then exits within
// --shutdown-timeout more. `channelsd drain`, the Kubernetes preStop hook,
// asks the node on this host to drain (POST /api/drain) and waits for it.
package main
