package kvm

import (
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// TestEINTR: an ioctl interrupted by a signal is issued again until it
// completes; any other error ends it at once.
func TestEINTR(t *testing.T) {
	calls := 0
	v, err := eintr(func() (int, error) {
		if calls++; calls < 3 {
			return 0, unix.EINTR
		}
		return 7, nil
	})
	if v != 7 || err != nil || calls != 3 {
		t.Errorf("eintr = %d, %v after %d calls; want 7, nil after 3", v, err, calls)
	}
	calls = 0
	err = eintr0(func() error { calls++; return unix.EBADF })
	if !errors.Is(err, unix.EBADF) || calls != 1 {
		t.Errorf("eintr0 = %v after %d calls; want EBADF after 1", err, calls)
	}
	// A bad fd is refused, not retried forever.
	if err := ioctlPtr(-1, "KVM_TEST", 0, nil); !errors.Is(err, unix.EBADF) {
		t.Errorf("ioctlPtr(-1) = %v, want EBADF", err)
	}
}
