package ipi_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/vmm/pci"
)

func read(d *ipi.Device, off uint64, n int) []byte {
	b := make([]byte, n)
	d.Read(off, b)
	return b
}

func le(v uint64, n int) []byte {
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, v)
	return b[:n]
}

// TestRegisters: BAR0 behaves as QEMU's ivshmem-doorbell registers do for
// every access a driver makes, and takes nothing else.
func TestRegisters(t *testing.T) {
	type op struct {
		write bool
		off   uint64
		n     int
		v     uint64 // written, or wanted back
	}
	tests := []struct {
		name string
		ops  []op
	}{
		{"IVPosition is the peer id", []op{{false, ipi.RegIVPosition, 4, 2}}},
		{"IVPosition is read-only", []op{{true, ipi.RegIVPosition, 4, 7}, {false, ipi.RegIVPosition, 4, 2}}},
		{"IntrMask reads back", []op{{true, ipi.RegIntrMask, 4, 0xdeadbeef}, {false, ipi.RegIntrMask, 4, 0xdeadbeef}}},
		{"IntrStatus is cleared by a read", []op{{true, ipi.RegIntrStatus, 4, 5}, {false, ipi.RegIntrStatus, 4, 5}, {false, ipi.RegIntrStatus, 4, 0}}},
		{"one byte of IntrStatus clears it all", []op{{true, ipi.RegIntrStatus, 4, 0x0102}, {false, ipi.RegIntrStatus + 1, 1, 1}, {false, ipi.RegIntrStatus, 4, 0}}},
		{"Doorbell reads zero", []op{{true, ipi.RegDoorbell, 4, uint64(ipi.DoorbellValue(1, 0))}, {false, ipi.RegDoorbell, 4, 0}}},
		{"reserved reads zero", []op{{true, 0x40, 4, 0xffffffff}, {false, 0x40, 4, 0}, {false, 0xfc, 4, 0}}},
		{"sub-dword reads", []op{{true, ipi.RegIntrMask, 4, 0x11223344}, {false, 0, 1, 0x44}, {false, 1, 1, 0x33}, {false, 2, 2, 0x1122}}},
		{"8-byte read of mask and status", []op{{true, ipi.RegIntrMask, 4, 0xa}, {true, ipi.RegIntrStatus, 4, 0xb}, {false, 0, 8, 0xb_0000_000a}, {false, ipi.RegIntrStatus, 4, 0}}},
		{"8-byte read of IVPosition and Doorbell", []op{{false, 8, 8, 2}}},
		{"8-byte write sets mask and status", []op{{true, 0, 8, 0x3_0000_0001}, {false, ipi.RegIntrMask, 4, 1}, {false, ipi.RegIntrStatus, 4, 3}}},
		{"1- and 2-byte writes are dropped", []op{{true, 0, 1, 0xff}, {true, 0, 2, 0xffff}, {false, ipi.RegIntrMask, 4, 0}}},
		{"misaligned read is all ones", []op{{false, 1, 4, 0xffffffff}, {false, 6, 4, 0xffffffff}, {false, 4, 8, 1<<64 - 1}}},
		{"misaligned write is dropped", []op{{true, 2, 4, 0xffffffff}, {false, 0, 4, 0}}},
		{"past the BAR", []op{{false, 0xfe, 4, 0xffffffff}, {false, 0x100, 4, 0xffffffff}, {true, 0x100, 4, 1}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bells := newBells(t, 3, 0, 2)
			v := newVM(t, bells, 2, 1<<20, nil)
			for i, o := range tc.ops {
				if o.write {
					v.dev.Write(o.off, le(o.v, o.n))
					continue
				}
				got := read(v.dev, o.off, o.n)
				if want := le(o.v, o.n); !slices.Equal(got, want) {
					t.Errorf("op %d: read %d bytes at %#x = % x, want % x", i, o.n, o.off, got, want)
				}
			}
		})
	}
}

// TestGarbageAccesses: every offset, every size, garbage values, in and
// beyond the BAR: nothing panics, IVPosition stays, every bad doorbell is
// counted and rings nothing, and the INTx line is always
// IntrStatus & IntrMask != 0.
func TestGarbageAccesses(t *testing.T) {
	bells := newBells(t, 2, 0, 1)
	v := newVM(t, bells, 1, 1<<20, nil)
	values := []uint64{0, 1, 0xffffffff, 0xffff_ffff_ffff_ffff, 0x1_0000, 0x2_0000, 0xffff_0000, 0x0001_0001, 0xdead_beef_cafe_f00d}
	for off := uint64(0); off < 0x104; off++ {
		for _, n := range []int{1, 2, 3, 4, 5, 8, 16} {
			for _, val := range values {
				b := make([]byte, n)
				for i := range b {
					b[i] = byte(val >> (8 * (i % 8)))
				}
				v.dev.Write(off, b)
				v.dev.Read(off, make([]byte, n))
			}
		}
	}
	if got := binary.LittleEndian.Uint32(read(v.dev, ipi.RegIVPosition, 4)); got != 1 {
		t.Errorf("IVPosition = %d after garbage, want 1", got)
	}
	mask := binary.LittleEndian.Uint32(read(v.dev, ipi.RegIntrMask, 4))
	status := binary.LittleEndian.Uint32(read(v.dev, ipi.RegIntrStatus, 4))
	if v.irq.Level() {
		t.Errorf("INTx asserted after reading IntrStatus (mask %#x status %#x)", mask, status)
	}
	st := v.dev.Stats()
	if st.BadAccesses == 0 || st.BadDoorbells == 0 {
		t.Errorf("stats %+v: garbage not counted", st)
	}
	// Of the values written to Doorbell, 0 and 0x1_0000 name bells that
	// exist (peer 0 and 1, vector 0): exactly those rang.
	if got := eventfdCount(bells.KernelFd(0, 0)); got == 0 {
		t.Error("a valid doorbell to peer 0 among the garbage did not ring")
	}
	if st.SoftDoorbells == 0 {
		t.Errorf("stats %+v: no software doorbell", st)
	}
}

// TestPCIHeader: the function as a guest's PCI code sees it through
// configuration mechanism #1: ids, class, BARs and their sizes, MSI-X
// capability, INTx pin and the status bit.
func TestPCIHeader(t *testing.T) {
	bells := newBells(t, 2, 0, 4)
	v := newVM(t, bells, 0, 16<<20, nil)
	_, cfg, setCfg := onBus(t, v.dev)
	for _, c := range []struct {
		reg  int
		want uint32
		what string
	}{
		{pci.OffVendor, 0x1110_1af4, "vendor/device"},
		{pci.OffRevision, 0x0500_0001, "class/revision"},
		{pci.OffSubVendor, 0x1100_1af4, "subsystem"},
		{pci.OffBAR0, testRegs, "BAR0"},
		{pci.OffBAR0 + 4, testRegs + 0x1000, "BAR1"},
		{pci.OffBAR0 + 8, testWindow&0xffff_ffff | 0xc, "BAR2 (64-bit prefetchable)"},
		{pci.OffBAR0 + 12, testWindow >> 32, "BAR2 upper half"},
		{pci.OffCapPtr, msixCap, "capability pointer"},
		{msixCap, 3<<16 | pci.CapMSIX, "MSI-X: id, next 0, table size 4"},
		{msixCap + 4, 0 | ipi.MSIXBAR, "MSI-X table offset/BIR"},
		{msixCap + 8, ipi.MSIXPBAOffset | ipi.MSIXBAR, "MSI-X PBA offset/BIR"},
		{pci.OffIntLine, 1<<8 | 11, "interrupt pin A, line 11"},
	} {
		if got := cfg(c.reg); got != c.want {
			t.Errorf("%s (config %#x) = %#x, want %#x", c.what, c.reg, got, c.want)
		}
	}
	for i, want := range []uint32{0xffffff00, 0xfffff000, 0xff00000c, 0xffffffff} {
		reg := pci.OffBAR0 + 4*i
		old := cfg(reg)
		setCfg(reg, 0xffffffff)
		if got := cfg(reg); got != want {
			t.Errorf("BAR register %d sized = %#x, want %#x", i, got, want)
		}
		setCfg(reg, old)
	}
	// INTx: a pending interrupt shows in the status register; the
	// command register's interrupt-disable bit holds the line low.
	v.dev.Write(ipi.RegIntrMask, le(1, 4))
	v.dev.Write(ipi.RegIntrStatus, le(1, 4))
	if !v.irq.Level() || cfg(pci.OffCommand)&(pci.StatusInterrupt<<16) == 0 {
		t.Errorf("pending INTx: line %v, status %#x", v.irq.Level(), cfg(pci.OffCommand)>>16)
	}
	setCfg(pci.OffCommand, pci.CommandMemory|pci.CommandIntxOff)
	if v.irq.Level() || cfg(pci.OffCommand)&(pci.StatusInterrupt<<16) == 0 {
		t.Errorf("INTx disabled: line %v (want low), status %#x (want pending)", v.irq.Level(), cfg(pci.OffCommand)>>16)
	}
	setCfg(pci.OffCommand, pci.CommandMemory)
	read(v.dev, ipi.RegIntrStatus, 4)
	if v.irq.Level() || cfg(pci.OffCommand)&(pci.StatusInterrupt<<16) != 0 {
		t.Errorf("after reading IntrStatus: line %v, status %#x", v.irq.Level(), cfg(pci.OffCommand)>>16)
	}
}

// TestINTx: with MSI-X off, a doorbell on any vector of the kernel's bells
// sets IntrStatus to 1 and asserts the line if the mask lets it; reading
// IntrStatus drops it. With MSI-X on the doorbell goes to the vector's
// irqfd and INTx stays low.
func TestINTx(t *testing.T) {
	bells := newBells(t, 2, 0, 2)
	v := newVM(t, bells, 1, 1<<20, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.dev.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	// Masked: status set, line low.
	bells.Ring(ipi.BellID{Peer: 1, Vector: 1})
	waitStats(t, v.dev, func(s ipi.DeviceStats) bool { return s.Interrupts == 1 })
	if v.irq.Level() {
		t.Error("INTx asserted with IntrMask 0")
	}
	// Unmasking the pending status asserts the line (level).
	v.dev.Write(ipi.RegIntrMask, le(0xffffffff, 4))
	v.irq.waitLevel(t, true)
	if got := binary.LittleEndian.Uint32(read(v.dev, ipi.RegIntrStatus, 4)); got != 1 {
		t.Errorf("IntrStatus = %#x, want 1", got)
	}
	v.irq.waitLevel(t, false)
	// Another doorbell, from kernel 0's register through its ioeventfd.
	other := newVM(t, bells, 0, 1<<20, nil)
	other.kvm.guestWrite(other.regs()+ipi.RegDoorbell, ipi.DoorbellValue(1, 0))
	v.irq.waitLevel(t, true)
	if n := other.kvm.exitCount(); n != 0 {
		t.Errorf("%d exits for a doorbell through an ioeventfd", n)
	}
	read(v.dev, ipi.RegIntrStatus, 4)
	v.irq.waitLevel(t, false)

	// MSI-X on: the vector's irqfd takes the doorbell, not INTx.
	v.enableMSIX(t, 2)
	fd, ok := v.kvm.irqfd(1)
	if !ok || fd != bells.KernelFd(1, 1) {
		t.Fatalf("irqfd of vector 1 = %d (assigned %v), want the bell's eventfd %d", fd, ok, bells.KernelFd(1, 1))
	}
	other.kvm.guestWrite(other.regs()+ipi.RegDoorbell, ipi.DoorbellValue(1, 1))
	if got := waitEventfd(t, fd); got != 1 {
		t.Errorf("irqfd saw %d doorbells, want 1", got)
	}
	if v.irq.Level() || v.dev.Stats().Interrupts != 2 {
		t.Errorf("MSI-X on: INTx %v, interrupts %d (want low, 2)", v.irq.Level(), v.dev.Stats().Interrupts)
	}
	// And off again: INTx once more.
	v.disableMSIX()
	if _, ok := v.kvm.irqfd(1); ok {
		t.Error("irqfd still assigned with MSI-X off")
	}
	bells.Ring(ipi.BellID{Peer: 1, Vector: 0})
	v.irq.waitLevel(t, true)
}

func waitStats(t *testing.T, d *ipi.Device, ok func(ipi.DeviceStats) bool) {
	t.Helper()
	waitFor(t, "device stats", func() bool { return ok(d.Stats()) })
}

// TestDoorbellPlan: 3 kernels × 2 vectors: every VM has an ioeventfd per
// bell on its own Doorbell register, and an irqfd per vector of its own.
func TestDoorbellPlan(t *testing.T) {
	vms := []ipi.VMRegs{{VM: 0, Regs: 0xe000_0000}, {VM: 1, Regs: 0xe100_0000}, {VM: 2, Regs: 0xe200_0000}}
	p := ipi.PlanDoorbells(vms, []int{2, 0, 1}, 2)
	if len(p.Ioeventfds) != 18 || len(p.Irqfds) != 6 {
		t.Fatalf("%d ioeventfds and %d irqfds, want 18 and 6", len(p.Ioeventfds), len(p.Irqfds))
	}
	seen := map[string]bool{}
	for _, e := range p.Ioeventfds {
		regs := vms[e.VM].Regs
		want := ipi.Ioeventfd{VM: e.VM, GPA: regs + 12, Len: 4, Data: uint64(e.Bell.Peer<<16 | e.Bell.Vector), Bell: e.Bell}
		if e != want {
			t.Errorf("ioeventfd %+v, want %+v", e, want)
		}
		k := fmt.Sprintf("%d/%d/%d", e.VM, e.Bell.Peer, e.Bell.Vector)
		if seen[k] {
			t.Errorf("ioeventfd %s twice", k)
		}
		seen[k] = true
	}
	for vm := range 3 {
		for peer := range 3 {
			for vec := range 2 {
				if !seen[fmt.Sprintf("%d/%d/%d", vm, peer, vec)] {
					t.Errorf("VM %d has no ioeventfd for peer %d vector %d", vm, peer, vec)
				}
			}
		}
	}
	for _, f := range p.Irqfds {
		if f.Bell != (ipi.BellID{Peer: f.VM, Vector: f.Vector}) {
			t.Errorf("irqfd %+v: a VM's irqfds are its own bells", f)
		}
	}

	// The devices register exactly their part of the plan, and every
	// doorbell between them goes ioeventfd → irqfd without an exit.
	bells := newBells(t, 3, 0, 2)
	var devs []*vm
	for k := range 3 {
		v := newVM(t, bells, k, 1<<20, nil)
		v.enableMSIX(t, 2)
		devs = append(devs, v)
	}
	for k, v := range devs {
		want := ipi.PlanIoeventfds(k, v.regs(), []int{0, 1, 2}, 2)
		got := v.dev.Ioeventfds()
		sortIoeventfds(got)
		sortIoeventfds(want)
		if !slices.Equal(got, want) {
			t.Errorf("VM %d registered %+v, want %+v", k, got, want)
		}
	}
	for from, v := range devs {
		for to := range 3 {
			for vec := range 2 {
				v.kvm.guestWrite(v.regs()+ipi.RegDoorbell, ipi.DoorbellValue(to, vec))
				fd, ok := devs[to].kvm.irqfd(vec)
				if !ok {
					t.Fatalf("VM %d: no irqfd for vector %d", to, vec)
				}
				if got := waitEventfd(t, fd); got != 1 {
					t.Errorf("%d → %d vector %d: irqfd saw %d", from, to, vec, got)
				}
			}
		}
		if n := v.kvm.exitCount(); n != 0 {
			t.Errorf("VM %d: %d exits for 6 doorbells", from, n)
		}
	}
}

func sortIoeventfds(s []ipi.Ioeventfd) {
	slices.SortFunc(s, func(a, b ipi.Ioeventfd) int {
		if a.GPA != b.GPA {
			return int(int64(a.GPA>>1) - int64(b.GPA>>1))
		}
		return int(int64(a.Data) - int64(b.Data))
	})
}

// TestPlanFollowsBARMove: the guest moves BAR0 (ioeventfds and registers
// follow; none stays at the old address), then BAR2 in two halves as a
// 64-bit BAR is written (the window follows).
func TestPlanFollowsBARMove(t *testing.T) {
	bells := newBells(t, 2, 0, 2)
	v := newVM(t, bells, 0, 1<<20, nil)
	_, _, setCfg := onBus(t, v.dev)
	old := v.regs()
	const moved = 0xd000_0000
	setCfg(pci.OffBAR0, moved)
	if got := v.regs(); got != moved {
		t.Fatalf("BAR0 on the MMIO bus at %#x, want %#x", got, moved)
	}
	got := v.dev.Ioeventfds()
	sortIoeventfds(got)
	want := ipi.PlanIoeventfds(0, moved, []int{0, 1}, 2)
	if !slices.Equal(got, want) {
		t.Errorf("after the move: %+v, want %+v", got, want)
	}
	for key := range v.kvm.ioeventfds() {
		if key.gpa != moved+ipi.RegDoorbell {
			t.Errorf("ioeventfd left at %#x", key.gpa)
		}
	}
	// The old address no longer decodes; the new one does.
	if got := v.kvm.guestRead(old + ipi.RegIVPosition); got != 0xffffffff {
		t.Errorf("read at the old BAR0 = %#x, want all ones", got)
	}
	v.kvm.guestWrite(moved+ipi.RegDoorbell, ipi.DoorbellValue(1, 1))
	if got := waitEventfd(t, bells.KernelFd(1, 1)); got != 1 {
		t.Errorf("doorbell at the moved BAR0 rang %d times", got)
	}

	// BAR2: low half, then high half.
	setCfg(pci.OffBAR0+8, 0x4000_0000|0xc)
	setCfg(pci.OffBAR0+12, 0x2)
	v.kvm.mu.Lock()
	_, atNew := v.kvm.window[0x2_4000_0000]
	n := len(v.kvm.window)
	v.kvm.mu.Unlock()
	if !atNew || n != 1 {
		t.Errorf("window mapped at %v, want only 0x240000000", v.kvm.window)
	}
	if st := v.dev.Stats(); st.WiringErrors != 0 {
		t.Errorf("wiring errors: %+v", st)
	}
}

// TestBARMoveOntoAnother: a guest that moves BAR0 onto BAR1, or where it
// would end past 2^64, is refused (an error for pci to roll the register
// back, counted): BAR0 stays mapped where it was, with its doorbell
// ioeventfds; a later move to free space works; nothing panics.
func TestBARMoveOntoAnother(t *testing.T) {
	bells := newBells(t, 1, 0, 1)
	v := newVM(t, bells, 0, 1<<20, nil)
	stayed := func(what string) {
		t.Helper()
		if got := v.kvm.guestRead(testRegs + ipi.RegIVPosition); got != 0 {
			t.Errorf("after %s: IVPosition at the old BAR0 reads %#x, want 0 (peer 0)", what, got)
		}
		for _, e := range v.dev.Ioeventfds() {
			if e.GPA != testRegs+ipi.RegDoorbell {
				t.Errorf("after %s: ioeventfd at %#x, want the old BAR0's doorbell", what, e.GPA)
			}
		}
	}
	if err := v.dev.BARMoved(ipi.RegsBAR, testRegs+0x1000); err == nil || v.dev.Stats().WiringErrors == 0 {
		t.Errorf("BAR0 over BAR1 was not refused and counted: %v", err)
	}
	stayed("a move onto BAR1")
	if err := v.dev.BARMoved(ipi.RegsBAR, 0xffff_ffff_ffff_ff00); err == nil { // 2^64 - 256: ends exactly at 2^64
		t.Error("BAR0 ending at 2^64 was not refused")
	}
	stayed("a move to the top of the address space")
	if err := v.dev.BARMoved(ipi.RegsBAR, testRegs+0x2000); err != nil {
		t.Fatalf("a move to free space: %v", err)
	}
	if got := v.kvm.guestRead(testRegs + 0x2000 + ipi.RegIVPosition); got != 0 {
		t.Errorf("IVPosition at the final BAR0 = %#x", got)
	}
}

// TestRunStopsOnClose: Run returns when the device is closed (not only
// when its context ends), a second Run is refused while one runs, and
// Close twice is harmless.
func TestRunStopsOnClose(t *testing.T) {
	bells := newBells(t, 1, 0, 1)
	v := newVM(t, bells, 0, 1<<20, nil)
	done := make(chan error, 1)
	start := func() { go func() { done <- v.dev.Run(context.Background()) }() }
	start()
	stopped, cancel := context.WithCancel(context.Background())
	cancel()
	waitFor(t, "Run running", func() bool {
		// Refused while the first one runs; before it does, this one
		// runs itself and returns at once, and a first Run that starts
		// meanwhile is refused: it is started again.
		if v.dev.Run(stopped) != nil {
			return true
		}
		select {
		case err := <-done:
			if err == nil {
				t.Fatal("Run returned nil before Close")
			}
			start()
		default:
		}
		return false
	})
	v.dev.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after Close")
	}
	v.dev.Close()
	if err := v.dev.Run(context.Background()); err != nil {
		t.Errorf("Run after Close = %v, want nil at once", err)
	}
	if n := len(v.kvm.ioeventfds()); n != 0 {
		t.Errorf("%d ioeventfds left after Close", n)
	}
}

// TestPlatformReset: a bus reset after a kernel moved the BARs, enabled
// MSI-X and left INTx asserted puts the device back as it was attached:
// BARs and ioeventfds at their first addresses, no irqfd assigned,
// registers zero, INTx low, doorbells back on INTx.
func TestPlatformReset(t *testing.T) {
	bells := newBells(t, 2, 0, 2)
	v := newVM(t, bells, 0, 1<<20, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.dev.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	b, _, setCfg := onBus(t, v.dev)
	first := v.regs()
	// The old kernel: INTx asserted, then BARs moved and MSI-X on.
	v.dev.Write(ipi.RegIntrMask, le(0xffffffff, 4))
	bells.Ring(ipi.BellID{Peer: 0, Vector: 1})
	v.irq.waitLevel(t, true)
	const moved = 0xd000_0000
	setCfg(pci.OffBAR0, moved)
	setCfg(pci.OffBAR0+12, 0x2) // BAR2 to 0x2_0000_0000
	v.enableMSIX(t, 2)
	if _, ok := v.kvm.irqfd(1); !ok {
		t.Fatal("no irqfd with MSI-X on")
	}

	b.Reset()

	if got := v.regs(); got != first {
		t.Errorf("BAR0 on the MMIO bus at %#x after reset, want %#x", got, first)
	}
	v.kvm.mu.Lock()
	_, atFirst := v.kvm.window[testWindow]
	n := len(v.kvm.window)
	v.kvm.mu.Unlock()
	if !atFirst || n != 1 {
		t.Errorf("window mapped at %v after reset, want only %#x", v.kvm.window, testWindow)
	}
	for key := range v.kvm.ioeventfds() {
		if key.gpa != first+ipi.RegDoorbell {
			t.Errorf("ioeventfd left at %#x after reset", key.gpa)
		}
	}
	for vec := range 2 {
		if _, ok := v.kvm.irqfd(vec); ok {
			t.Errorf("irqfd of vector %d still assigned after reset", vec)
		}
	}
	v.irq.waitLevel(t, false)
	for _, reg := range []uint64{ipi.RegIntrMask, ipi.RegIntrStatus} {
		if got := binary.LittleEndian.Uint32(read(v.dev, reg, 4)); got != 0 {
			t.Errorf("register %#x = %#x after reset, want 0", reg, got)
		}
	}
	// The next kernel, MSI-X off: a doorbell is an INTx again.
	v.dev.Write(ipi.RegIntrMask, le(0xffffffff, 4))
	v.kvm.guestWrite(first+ipi.RegDoorbell, ipi.DoorbellValue(0, 0))
	v.irq.waitLevel(t, true)
	if st := v.dev.Stats(); st.WiringErrors != 0 {
		t.Errorf("wiring errors: %+v", st)
	}
}

// onBus adds dev to a new PCI bus and returns the bus with a reader and a
// writer of dev's configuration space through ports 0xCF8/0xCFC (32-bit
// accesses at reg).
func onBus(t *testing.T, dev pci.Function) (b *pci.Bus, get func(reg int) uint32, set func(reg int, val uint32)) {
	t.Helper()
	b = pci.NewBus()
	slot, err := b.Add(dev)
	if err != nil {
		t.Fatal(err)
	}
	ports := b.ConfigPorts()
	get = func(reg int) uint32 {
		ports.Write(0, le(uint64(1<<31|slot<<11|reg), 4))
		d := make([]byte, 4)
		ports.Read(4, d)
		return binary.LittleEndian.Uint32(d)
	}
	set = func(reg int, val uint32) {
		ports.Write(0, le(uint64(1<<31|slot<<11|reg), 4))
		ports.Write(4, le(uint64(val), 4))
	}
	return b, get, set
}
