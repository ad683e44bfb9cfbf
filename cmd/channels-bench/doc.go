// Command channels-bench is channelsd's load generator. It speaks the
// Phoenix V2 protocol over WebSocket to a node on loopback (or one it
// starts itself), bounded in connections and time, and prints a human
// table followed by one JSON line.
//
//	channels-bench idle -spawn-node -conns 10000
//
// Scenarios: idle (memory per idle joined socket, connect-and-join rate),
// fanout and cluster (delivery rate, latency, losses). More scenarios
// (presence, churn) arrive with the performance work.
package main
