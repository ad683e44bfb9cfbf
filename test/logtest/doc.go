// Package logtest gives tests a log destination they can read while the
// code under test writes to it from its own goroutines: what a node, a
// handler or a socket logged is part of what some tests assert (an error
// kept from a client must still reach the operator's log).
package logtest
