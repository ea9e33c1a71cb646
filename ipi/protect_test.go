package ipi_test

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/windowgeom"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/msg"
)

// TestPlanWindow: the cluster's slots, each VM's at its own BAR2.
func TestPlanWindow(t *testing.T) {
	vms := []ipi.VMWindow{{VM: 1, Window: 0x2_0000_0000}, {VM: 0, Window: 0x1_0000_0000}}
	plan, err := ipi.PlanWindow(vms, 4<<20, 4, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		slots, _ := windowgeom.Slots(4<<20, 4, vm.VM, true)
		var got []ipi.Slot
		for _, s := range plan {
			if s.VM == vm.VM {
				if s.GPA != vm.Window+s.Offset {
					t.Errorf("%+v: not at BAR2 %#x + offset", s, vm.Window)
				}
				got = append(got, s.Slot)
			}
		}
		if fmt.Sprint(got) != fmt.Sprint(slots) {
			t.Errorf("VM %d: %v, want %v", vm.VM, got, slots)
		}
	}
}

// protectedMapping maps win for kernel peer as its VM would see it under
// window.protect: the read-only slots mprotect'ed, as KVM_MEM_READONLY
// makes them for the guest.
func protectedMapping(t *testing.T, win *ipi.Window, maxPeers, peer int) []byte {
	t.Helper()
	mem, err := win.Map()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipi.Unmap(mem) })
	slots, err := windowgeom.Slots(uint64(win.Size()), maxPeers, peer, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range slots {
		if s.ReadOnly {
			if err := unix.Mprotect(mem[s.Offset:s.Offset+s.Size], unix.PROT_READ); err != nil {
				t.Fatal(err)
			}
		}
	}
	return mem
}

// kernelBell is a kernel's doorbell as the guest has it, on the shared
// eventfds: the Doorbell register rings a bell, the interrupt is the
// kernel's own eventfd.
type kernelBell struct {
	bells *ipi.Doorbells
	id    int
}

func (b kernelBell) Ring(peer int) error {
	if !b.bells.Ring(ipi.BellID{Peer: peer}) {
		return fmt.Errorf("no bell for %d", peer)
	}
	return nil
}

func (b kernelBell) Wait(ctx context.Context) error {
	fd := b.bells.KernelFd(b.id, 0)
	ms := 10
	if dl, ok := ctx.Deadline(); ok {
		ms = max(0, min(ms, int(time.Until(dl)/time.Millisecond)))
	}
	unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, ms)
	eventfdCount(fd)
	return ctx.Err()
}

// TestProtectedMessaging: three kernels, each on a mapping of the window
// with its read-only slots enforced by the MMU, check in, heartbeat, arm
// and ring, and message every other one; popvmm, a host peer on a full
// mapping, marks one gone. No write of the messaging layer lands outside a
// kernel's writable slots (it would fault and kill the test), and a write
// to another kernel's section does fault.
func TestProtectedMessaging(t *testing.T) {
	const kernels, maxPeers = 3, 4
	win, err := ipi.NewWindow("protect", 4<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { win.Close() })
	full, err := win.Map()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipi.Unmap(full) })
	if _, err := msg.Format(full, maxPeers); err != nil {
		t.Fatal(err)
	}
	bells := newBells(t, kernels, 1, 1)
	opt := msg.Options{Heartbeat: 5 * time.Millisecond}
	host, err := msg.Join(full, kernels, "popvmm", nopBell{}, opt)
	if err != nil {
		t.Fatal(err)
	}

	type delivery struct{ from, to int }
	got := make(chan delivery, 64)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }() // before the cleanups unmap the window
	var nodes []*msg.Node
	for k := range kernels {
		mem := protectedMapping(t, win, maxPeers, k)
		n, err := msg.Join(mem, k, fmt.Sprintf("kernel%d", k), kernelBell{bells, k}, opt)
		if err != nil {
			t.Fatal(err)
		}
		n.Register(7, func(from int, _ []byte) { got <- delivery{from, k} })
		wg.Go(func() {
			if err := n.Run(ctx); err != nil {
				t.Error(err)
			}
		})
		nodes = append(nodes, n)
	}
	want := map[delivery]bool{}
	for from, n := range nodes {
		for to := range kernels {
			if to == from {
				continue
			}
			want[delivery{from, to}] = true
			waitFor(t, "peer online", func() bool { return n.PeerState(to) == msg.StateOnline })
			if err := n.Send(to, 7, []byte("hello")); err != nil {
				t.Fatal(err)
			}
		}
	}
	timeout := time.After(10 * time.Second)
	for len(want) > 0 {
		select {
		case d := <-got:
			delete(want, d)
		case <-timeout:
			t.Fatalf("messages not delivered within 10s: %v", want)
		}
	}
	if !host.MarkGone(2, host.Generation(2), true) || nodes[0].PeerState(2) != msg.StateCrashed {
		t.Errorf("popvmm could not mark kernel 2 crashed: %v", nodes[0].PeerState(2))
	}

	// The protection holds: kernel 0 cannot write kernel 1's section nor
	// the header.
	g, _ := windowgeom.For(int(win.Size()), maxPeers)
	mem0 := protectedMapping(t, win, maxPeers, 0)
	for _, off := range []int{g.Section(1), g.Section(3) + 100, 8} {
		if !faults(func() { mem0[off] = 1 }) {
			t.Errorf("kernel 0 wrote offset %#x", off)
		}
	}
	// Unused bytes of the common page and of the section header page.
	if faults(func() { mem0[g.Common+4000] = 1; mem0[g.Section(0)+4000] = 1 }) {
		t.Error("kernel 0 cannot write the common page or its own section")
	}
}

type nopBell struct{}

func (nopBell) Ring(int) error { return nil }
func (nopBell) Wait(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// faults runs f and reports whether it faulted on memory.
func faults(f func()) (faulted bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if recover() != nil {
			faulted = true
		}
	}()
	f()
	return false
}
