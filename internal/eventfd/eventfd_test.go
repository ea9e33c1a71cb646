package eventfd_test

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/eventfd"
)

// TestSignalDrain: counts add up, a drain resets them, an empty eventfd
// drains to 0 without blocking, and a full counter still counts as
// signalled.
func TestSignalDrain(t *testing.T) {
	fd, err := eventfd.New()
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if n, err := eventfd.Drain(fd); err != nil || n != 0 {
		t.Fatalf("fresh eventfd drains %d, %v; want 0, nil", n, err)
	}
	for range 3 {
		if err := eventfd.Signal(fd); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := eventfd.Drain(fd); err != nil || n != 3 {
		t.Fatalf("after 3 signals: drained %d, %v; want 3, nil", n, err)
	}
	// The largest count an eventfd holds is 2^64-2: a signal on top
	// fails with EAGAIN, which Signal takes as done.
	var max [8]byte
	for i := range 8 {
		max[i] = 0xff
	}
	max[0] = 0xfe // little-endian 0xffff_ffff_ffff_fffe
	if _, err := unix.Write(fd, max[:]); err != nil {
		t.Fatal(err)
	}
	if err := eventfd.Signal(fd); err != nil {
		t.Fatalf("signal on a full counter: %v, want nil", err)
	}
	if err := eventfd.Signal(-1); err == nil {
		t.Fatal("signal on fd -1 succeeded")
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || flags&unix.FD_CLOEXEC == 0 {
		t.Fatalf("FD_CLOEXEC not set: flags %#x, %v", flags, err)
	}
}
