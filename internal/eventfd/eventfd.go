// Package eventfd is the Linux eventfd(2) as popvmm's devices use it: a
// non-blocking, close-on-exec counter that one side signals and the other
// drains, shared with KVM as an ioeventfd or irqfd. Counts are 8-byte
// host-endian integers (eventfd(2)); a counter at its maximum makes a
// signal fail with EAGAIN, which still leaves the reader woken, so Signal
// treats it as done.
package eventfd

import (
	"encoding/binary"
	"errors"
	"os"

	"golang.org/x/sys/unix"
)

// New returns a new eventfd with a zero count, EFD_NONBLOCK|EFD_CLOEXEC.
// The caller owns the descriptor and closes it with unix.Close (or wraps
// it with os.NewFile to read it through the runtime poller).
func New() (int, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, os.NewSyscallError("eventfd", err)
	}
	return fd, nil
}

// Signal adds one to fd's count. A full counter (EAGAIN) still wakes the
// reader and counts as signalled; EINTR is retried.
func Signal(fd int) error {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	for {
		_, err := unix.Write(fd, one[:])
		switch {
		case err == nil, errors.Is(err, unix.EAGAIN):
			return nil
		case errors.Is(err, unix.EINTR):
			continue
		}
		return os.NewSyscallError("write eventfd", err)
	}
}

// Drain reads and resets fd's count without blocking: 0 when it was
// already zero (EAGAIN). EINTR is retried.
func Drain(fd int) (uint64, error) {
	var b [8]byte
	for {
		n, err := unix.Read(fd, b[:])
		switch {
		case err == nil && n == len(b):
			return binary.NativeEndian.Uint64(b[:]), nil
		case err == nil:
			return 0, os.NewSyscallError("read eventfd", unix.EIO)
		case errors.Is(err, unix.EAGAIN):
			return 0, nil
		case errors.Is(err, unix.EINTR):
			continue
		}
		return 0, os.NewSyscallError("read eventfd", err)
	}
}
