package vmm_test

import (
	"encoding/binary"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/vmm/kvm"
	"golang.org/x/sys/unix"
)

func eventfd(t *testing.T) int {
	t.Helper()
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// waitEventfd waits for fd to be signalled and returns its counter.
func waitEventfd(t *testing.T, fd int) uint64 {
	t.Helper()
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(pfd, int(guestTimeout/time.Millisecond))
	if err != nil || n != 1 {
		t.Fatalf("eventfd not signalled within %v (%v)", guestTimeout, err)
	}
	var b [8]byte
	if _, err := unix.Read(fd, b[:]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// TestKVMDoorbell checks the doorbell path with no popvmm thread on it:
// a guest MMIO write signals an ioeventfd inside KVM (no MMIO exit), and
// an irqfd on a GSI routed to an MSI interrupts the guest.
func TestKVMDoorbell(t *testing.T) {
	testenv.RequireKVM(t)
	ring, irq := eventfd(t), eventfd(t)
	g := startGuest(t, "doorbell", 1, nil)
	if err := g.IOEventFD(kvm.IOEvent{FD: ring, Addr: 0xd0000000, Len: 4, Match: true, Data: 0x1234}); err != nil {
		t.Fatal(err)
	}
	g.start(t)
	if n := waitEventfd(t, ring); n != 1 {
		t.Errorf("doorbell eventfd counter %d, want 1", n)
	}
	g.con.waitText(t, "popvmm-guest: rang")
	if st := g.Status(); st.Exits["mmio"] != 0 {
		t.Errorf("exits %v: the doorbell write left KVM", st.Exits)
	}

	const gsi = 24
	if err := g.SetMSIRoute(gsi, 0xfee00000, 0x40); err != nil { // APIC id 0, vector 0x40, fixed, edge
		t.Fatal(err)
	}
	if err := g.IRQFD(irq, gsi); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"rang\nmsi!\n", "rang\nmsi!\nmsi!\n"} {
		if _, err := unix.Write(irq, binary.LittleEndian.AppendUint64(nil, 1)); err != nil {
			t.Fatal(err)
		}
		g.con.waitText(t, want)
	}
	// A GSI of the IOAPIC cannot become an MSI route.
	if err := g.SetMSIRoute(4, 0xfee00000, 0x41); err == nil {
		t.Error("MSI route on GSI 4 accepted")
	}
	// The ISA interrupt lines still work after the routing table was
	// replaced: COM1's IRQ 4 is covered by TestKVMUARTInterruptInput; here
	// the table must still hold the defaults.
	if err := g.RemoveIRQFD(irq, gsi); err != nil {
		t.Fatal(err)
	}
}
