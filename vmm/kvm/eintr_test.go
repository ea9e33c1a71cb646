package kvm

import (
	"errors"
	"runtime"
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

// TestSignalsBlocked: f runs with every signal blocked on its thread (the
// mask read back in f), and the thread's mask is restored afterwards.
func TestSignalsBlocked(t *testing.T) {
	var inside, after unix.Sigset_t
	err := signalsBlocked(func() error {
		return unix.PthreadSigmask(unix.SIG_BLOCK, nil, &inside)
	})
	if err != nil {
		t.Fatal(err)
	}
	// SIGURG (23), the Go runtime's preemption signal, is bit 22.
	if inside.Val[0]&(1<<22) == 0 {
		t.Errorf("SIGURG not blocked inside: mask %#x", inside.Val[0])
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, nil, &after); err != nil {
		t.Fatal(err)
	}
	if after.Val[0]&(1<<22) != 0 {
		t.Errorf("SIGURG still blocked after: mask %#x", after.Val[0])
	}
}
