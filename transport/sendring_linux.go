//go:build linux

package transport

import (
	"errors"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sendRing is the least of an io_uring (io_uring_setup(2),
// io_uring_enter(2)) that a writer needs to hand the kernel a batch of
// sends in one system call: it submits up to sendRingEntries sends and
// waits for all their completions before it returns. Every send carries
// MSG_DONTWAIT, so the kernel completes each at once, with what the
// socket took or -EAGAIN, and never keeps one for later: when sendAll
// returns, the kernel holds no pointer to the buffer and no reference to
// any descriptor, as after a write(2).
//
// One ring serves one goroutine at a time (the writer that took it from
// its pool). A ring that fails in any way it should not is closed, and
// its writer goes back to write(2) (sendRingBroken).
type sendRing struct {
	fd      int
	mem     [3][]byte // the SQ ring, the CQ ring, the SQE array
	sqTail  *uint32
	sqMask  uint32
	sqArray unsafe.Pointer // uint32 indices into sqes
	sqes    unsafe.Pointer // ioUringSQE
	cqHead  *uint32
	cqTail  *uint32
	cqMask  uint32
	cqes    unsafe.Pointer // ioUringCQE
	tail    uint32         // our copy of *sqTail
}

// sendRingEntries is the most sends one batch submits.
const sendRingEntries = 64

// errSendRing: a ring answered in a way it should not have, after the
// kernel took some of the batch; errSendRingUnsent: before it took any.
// Either way the ring is not used again.
var (
	errSendRing       = errors.New("transport: io_uring send ring failed")
	errSendRingUnsent = errors.New("transport: io_uring send ring refused a batch")
)

// ioUringParams is struct io_uring_params (linux/io_uring.h).
type ioUringParams struct {
	sqEntries, cqEntries, flags, sqThreadCPU, sqThreadIdle, features, wqFD uint32
	resv                                                                   [3]uint32
	sqOff                                                                  struct {
		head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
		userAddr                                                        uint64
	}
	cqOff struct {
		head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
		userAddr                                                        uint64
	}
}

// ioUringSQE is struct io_uring_sqe, as a send uses it.
type ioUringSQE struct {
	opcode, flags uint8
	ioprio        uint16
	fd            int32
	off, addr     uint64
	len, msgFlags uint32
	userData      uint64
	bufIndex      uint16
	personality   uint16
	spliceFDIn    int32
	addr3, pad2   uint64
}

// ioUringCQE is struct io_uring_cqe.
type ioUringCQE struct {
	userData uint64
	res      int32
	flags    uint32
}

// The kernel's layouts; a mismatch fails the build.
var (
	_ = [1]struct{}{}[unsafe.Sizeof(ioUringParams{})-120]
	_ = [1]struct{}{}[unsafe.Sizeof(ioUringSQE{})-64]
	_ = [1]struct{}{}[unsafe.Sizeof(ioUringCQE{})-16]
)

const (
	ioringSetupSubmitAll = 1 << 7
	ioringOpSend         = 26
	ioringEnterGetEvents = 1
	ioringOffSQRing      = 0
	ioringOffCQRing      = 0x8000000
	ioringOffSQEs        = 0x10000000
)

// newSendRing sets up a ring, or fails where io_uring is not to be had
// (a kernel older than 5.18, kernel.io_uring_disabled, a seccomp profile
// such as Docker's default one).
func newSendRing() (*sendRing, error) {
	var p ioUringParams
	// SUBMIT_ALL: a send that fails at submission (a descriptor closed
	// since) must not stop the rest of its batch.
	p.flags = ioringSetupSubmitAll
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, sendRingEntries, uintptr(unsafe.Pointer(&p)), 0)
	if errno != 0 {
		return nil, fmt.Errorf("transport: io_uring_setup: %w", errno)
	}
	r := &sendRing{fd: int(fd)}
	if p.sqEntries < sendRingEntries || p.cqEntries < sendRingEntries {
		r.close()
		return nil, fmt.Errorf("transport: io_uring_setup gave %d/%d entries", p.sqEntries, p.cqEntries)
	}
	sizes := [3]int{
		int(p.sqOff.array + p.sqEntries*4),
		int(p.cqOff.cqes + p.cqEntries*uint32(unsafe.Sizeof(ioUringCQE{}))),
		int(p.sqEntries * uint32(unsafe.Sizeof(ioUringSQE{}))),
	}
	for i, off := range [3]int64{ioringOffSQRing, ioringOffCQRing, ioringOffSQEs} {
		b, err := unix.Mmap(r.fd, off, sizes[i], unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			r.close()
			return nil, fmt.Errorf("transport: io_uring mmap: %w", err)
		}
		r.mem[i] = b
	}
	sq, cq := r.mem[0], r.mem[1]
	r.sqTail = (*uint32)(unsafe.Pointer(&sq[p.sqOff.tail]))
	r.sqMask = *(*uint32)(unsafe.Pointer(&sq[p.sqOff.ringMask]))
	r.sqArray = unsafe.Pointer(&sq[p.sqOff.array])
	r.sqes = unsafe.Pointer(&r.mem[2][0])
	r.cqHead = (*uint32)(unsafe.Pointer(&cq[p.cqOff.head]))
	r.cqTail = (*uint32)(unsafe.Pointer(&cq[p.cqOff.tail]))
	r.cqMask = *(*uint32)(unsafe.Pointer(&cq[p.cqOff.ringMask]))
	r.cqes = unsafe.Pointer(&cq[p.cqOff.cqes])
	r.tail = atomic.LoadUint32(r.sqTail)
	return r, nil
}

func (r *sendRing) close() {
	for i, b := range r.mem {
		if b != nil {
			_ = unix.Munmap(b)
			r.mem[i] = nil
		}
	}
	_ = unix.Close(r.fd)
}

// sendAll sends each bufs[i] on fds[i] and sets res[i] to what the send
// returned: the bytes the socket took, or minus an errno (-EAGAIN: none
// now). The caller keeps every descriptor open meanwhile. On
// errSendRingUnsent nothing was sent; on errSendRing some sends may have
// been made and others not, and res does not tell which, so that the
// caller can only treat each connection of the batch as one whose write
// failed part way. Either way the caller closes the ring.
func (r *sendRing) sendAll(fds []int32, bufs [][]byte, res []int32) error {
	k := uint32(len(fds))
	if k == 0 {
		return nil
	}
	if k > sendRingEntries {
		return errSendRing
	}
	for i := range k {
		idx := r.tail & r.sqMask
		*(*ioUringSQE)(unsafe.Add(r.sqes, uintptr(idx)*unsafe.Sizeof(ioUringSQE{}))) = ioUringSQE{
			opcode:   ioringOpSend,
			fd:       fds[i],
			addr:     uint64(uintptr(unsafe.Pointer(unsafe.SliceData(bufs[i])))),
			len:      uint32(len(bufs[i])),
			msgFlags: unix.MSG_DONTWAIT,
			userData: uint64(i),
		}
		*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
		r.tail++
	}
	// The store publishes the entries to the kernel (release).
	atomic.StoreUint32(r.sqTail, r.tail)
	submitted := uint32(0)
	for submitted < k {
		// A raw system call, as rawWrite's small writes: the runtime's
		// monitor would otherwise find the thread in the kernel for the
		// whole batch, hand its P to another thread and poll every
		// 20 µs meanwhile (sysmon at 5.0 % of a node's CPU in the
		// delivery phase, 2.3 % raw). The P stays taken for the batch,
		// at most sendRingEntries sends of a few µs each.
		n, _, errno := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(k-submitted), uintptr(k), ioringEnterGetEvents, 0, 0)
		switch {
		case errno == unix.EINTR:
			continue
		case (errno != 0 || n == 0) && submitted == 0:
			return errSendRingUnsent
		case errno != 0 || n == 0:
			return errSendRing
		}
		submitted += uint32(n)
	}
	head := atomic.LoadUint32(r.cqHead)
	for atomic.LoadUint32(r.cqTail)-head < k {
		// Sends that do not wait complete within the submission; a
		// signal may still have cut the wait short.
		_, _, errno := unix.RawSyscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(k), ioringEnterGetEvents, 0, 0)
		if errno != 0 && errno != unix.EINTR {
			return errSendRing
		}
	}
	for range k {
		cqe := (*ioUringCQE)(unsafe.Add(r.cqes, uintptr(head&r.cqMask)*unsafe.Sizeof(ioUringCQE{})))
		if cqe.userData >= uint64(k) {
			return errSendRing
		}
		res[cqe.userData] = cqe.res
		head++
	}
	atomic.StoreUint32(r.cqHead, head)
	return nil
}
