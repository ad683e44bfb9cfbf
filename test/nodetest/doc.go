// Package nodetest starts a real node in-process for tests: the default
// application (rooms with presence, and the conformance channel) on
// 127.0.0.1, shut down when the test ends. The conformance suite and the
// client packages' tests share it.
package nodetest
