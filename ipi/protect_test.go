package ipi_test

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/msg"
)

// TestWindowSlots: for every window size, peer count and peer, the slots
// cover the window exactly, in order, page-aligned, without overlap or two
// adjacent slots of one kind, and the writable bytes are exactly the
// common page and the peer's own section.
func TestWindowSlots(t *testing.T) {
	for _, size := range []uint64{1 << 20, 4 << 20, 16 << 20, 256 << 20} {
		for _, peers := range []int{2, 3, 10, 56} {
			g, err := msg.GeometryFor(int(size), peers)
			if err != nil {
				continue // too small for so many peers: WindowSlots must say so
			}
			for p := range peers {
				slots, err := ipi.WindowSlots(size, peers, p, true)
				if err != nil {
					t.Fatalf("WindowSlots(%#x, %d, %d) = %v", size, peers, p, err)
				}
				checkSlots(t, fmt.Sprintf("size %#x peers %d peer %d", size, peers, p), slots, size, g, p)
			}
			if _, err := ipi.WindowSlots(size, peers, peers, true); err == nil {
				t.Errorf("WindowSlots for peer %d of %d: no error", peers, peers)
			}
		}
		slots, err := ipi.WindowSlots(size, 2, 0, false)
		if err != nil || len(slots) != 1 || slots[0] != (ipi.Slot{Offset: 0, Size: size}) {
			t.Errorf("unprotected: %+v, %v; want one writable slot", slots, err)
		}
	}
	if _, err := ipi.WindowSlots(1<<20, 56, 0, true); err == nil {
		t.Error("1 MiB for 56 peers: no error")
	}
	if _, err := ipi.WindowSlots(4097, 2, 0, false); err == nil {
		t.Error("a window that is not whole pages: no error")
	}
}

func checkSlots(t *testing.T, what string, slots []ipi.Slot, size uint64, g msg.Geometry, p int) {
	t.Helper()
	var at uint64
	for i, s := range slots {
		switch {
		case s.Offset != at:
			t.Errorf("%s: slot %d at %#x, want %#x (gap or overlap)", what, i, s.Offset, at)
		case s.Size == 0 || s.Offset%msg.PageSize != 0 || s.Size%msg.PageSize != 0:
			t.Errorf("%s: slot %d %+v not whole pages", what, i, s)
		case i > 0 && slots[i-1].ReadOnly == s.ReadOnly:
			t.Errorf("%s: slots %d and %d of one kind not merged", what, i-1, i)
		}
		at = s.Offset + s.Size
	}
	if at != size {
		t.Errorf("%s: slots end at %#x, want %#x", what, at, size)
	}
	writable := func(off uint64) bool {
		for _, s := range slots {
			if off >= s.Offset && off < s.Offset+s.Size {
				return !s.ReadOnly
			}
		}
		t.Fatalf("%s: %#x in no slot", what, off)
		return false
	}
	own := uint64(g.Section(p))
	for off := uint64(0); off < size; off += msg.PageSize {
		want := (off >= uint64(g.Common) && off < uint64(g.Common+g.CommonSize)) || (off >= own && off < own+uint64(g.SectionSize))
		if writable(off) != want {
			t.Errorf("%s: page %#x writable %v, want %v", what, off, !want, want)
		}
	}
}

// TestPlanWindow: the cluster's slots, each VM's at its own BAR2.
func TestPlanWindow(t *testing.T) {
	vms := []ipi.VMWindow{{VM: 1, Window: 0x2_0000_0000}, {VM: 0, Window: 0x1_0000_0000}}
	plan, err := ipi.PlanWindow(vms, 4<<20, 4, true)
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range vms {
		slots, _ := ipi.WindowSlots(4<<20, 4, vm.VM, true)
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
	slots, err := ipi.WindowSlots(uint64(win.Size()), maxPeers, peer, true)
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
	g, _ := msg.GeometryFor(int(win.Size()), maxPeers)
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
