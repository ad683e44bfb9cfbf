//go:build !linux

package transport

import "testing"

// kernelFloorFanout: BenchmarkFanoutCPU's child process and raw writes are
// Linux's only.
func kernelFloorFanout(*testing.B) {}
