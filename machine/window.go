package machine

import (
	"context"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/internal/windowgeom"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/kvm"
	"github.com/popvmm/popvmm/vmm/pci"
)

// windowDev is one VM's window device: the PCI function (1af4:1110) with
// its BARs, doorbells through KVM and INTx on the GSI the MP table routes
// its device number's INTA# to. The window network's device is one too
// (winnetDev).
type windowDev struct {
	dev    *ipi.Device
	wiring *vmWiring
	peer   int
	slot   int
	gsi    uint32
	regs   uint64
	window uint64
}

// attachWindow gives b's VM kernel k's window device when the cluster
// has a window: BAR0 (registers) and BAR1 (MSI-X) from the PCI host's
// allocator, BAR2 the window at the layout's Window, mapped as k's slots
// (read-only ones where window.protect says), ioeventfds for every bell,
// and the INTx watcher. Nothing runs in the guest yet; the PCI host's
// Close undoes it all (also on error).
func attachWindow(b *builder) (device, error) {
	wa, k := b.cfg.Window, b.cfg.Kernel
	if wa == nil {
		return nil, nil
	}
	size := uint64(len(wa.Mem))
	if k.Layout.Window.Size != size {
		return nil, fmt.Errorf("window device: the layout's window is %#x bytes, the window %#x", k.Layout.Window.Size, size)
	}
	slots, err := windowgeom.Slots(size, wa.MaxPeers, k.Index, wa.Protect)
	if err != nil {
		return nil, fmt.Errorf("window device: %w", err)
	}
	return addIvshmem(b, ivshmemSpec{what: "window device", bus: "window", mem: wa.Mem, bells: wa.Bells,
		slots: slots, bar2: k.Layout.Window.Start, protect: wa.Protect})
}

// ivshmemSpec is what tells a VM's ivshmem-doorbell functions apart: the
// messaging window's (attachWindow) and the window network's
// (attachWinnet).
type ivshmemSpec struct {
	what  string // in errors and logs: "window device"
	bus   string // the BARs' names on the MMIO bus: "window-bar0"
	mem   []byte // the supervisor's mapping of the window's memfd
	bells *ipi.Doorbells
	slots []ipi.Slot
	// bar2 is BAR2's address; 0: one from the allocator's 64-bit window.
	bar2    uint64
	protect bool
	// class and subsystem: 0 is ivshmem's (ipi.DeviceConfig).
	class     uint32
	subsystem uint16
}

// addIvshmem adds one ivshmem-doorbell function to b's VM: BAR0 and BAR1
// from the PCI host's allocator, BAR2 the window mapped as sp.slots,
// ioeventfds for every bell, INTx on the GSI its device number's INTA#
// goes to, and the INTx watcher. The PCI host's Close undoes it all (also
// on error).
func addIvshmem(b *builder, sp ivshmemSpec) (*windowDev, error) {
	k, h, v, log := b.cfg.Kernel, b.pci, b.vm, b.log
	size := uint64(len(sp.mem))
	regs, err := h.alloc.Alloc(ipi.RegsSize, false)
	if err != nil {
		return nil, fmt.Errorf("%s: BAR0: %w", sp.what, err)
	}
	msix, err := h.alloc.Alloc(ipi.MSIXBARSize, false)
	if err != nil {
		return nil, fmt.Errorf("%s: BAR1: %w", sp.what, err)
	}
	if sp.bar2 == 0 {
		if sp.bar2, err = h.alloc.Alloc(size, true); err != nil {
			return nil, fmt.Errorf("%s: BAR2: %w", sp.what, err)
		}
	}
	slot := h.bus.NextDevice()
	gsi, ok := boot.PCIINTxGSI(slot)
	if !ok {
		return nil, fmt.Errorf("%s: PCI device %d has no INTx route in the MP table (1-%d have)", sp.what, slot, boot.PCIINTxDevices)
	}
	w := &vmWiring{vm: v, mem: sp.mem, bus: sp.bus, windows: map[uint64][]uint64{}, routes: h.newMSIRoutes(sp.what)}
	h.onClose(w.close)
	dev, err := ipi.NewDevice(ipi.DeviceConfig{
		Peer: k.Index, Bells: sp.bells, WindowSize: size, Slots: sp.slots,
		Regs: regs, MSIX: msix, Window: sp.bar2,
		IRQ: v.IRQLine(gsi), IntLine: uint8(gsi), Wiring: w, Log: log,
		Class: sp.class, Subsystem: sp.subsystem,
	})
	if err != nil {
		return nil, err
	}
	h.onClose(func() { dev.Close() }) // runs before w.close
	got, err := h.AddFunction(sp.bus, dev, nil)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", sp.what, err)
	}
	if got != slot {
		return nil, fmt.Errorf("%s: PCI device %d, expected %d", sp.what, got, slot)
	}
	if err := dev.Wire(); err != nil {
		return nil, err
	}
	go dev.Run(context.Background()) // returns at dev.Close
	wd := &windowDev{dev: dev, wiring: w, peer: k.Index, slot: slot, gsi: gsi, regs: regs, window: sp.bar2}
	log.Info(sp.what+" attached", "peer", k.Index, "pci", fmt.Sprintf("00:%02x.0", slot), "gsi", gsi,
		"bar0", fmt.Sprintf("%#x", regs), "bar2", fmt.Sprintf("%#x", wd.window), "slots", len(sp.slots), "protect", sp.protect)
	return wd, nil
}

func (wd *windowDev) name() string { return "window" }

// stop is nothing of its own: the device's goroutines end with its Close,
// which the PCI host's Close runs.
func (wd *windowDev) stop() error { return nil }

// info is the device as status shows it.
func (wd *windowDev) info() []string {
	s := wd.dev.Stats()
	return []string{
		"ivshmem-doorbell 1af4:1110", fmt.Sprintf("peer %d", wd.peer), fmt.Sprintf("pci 00:%02x.0", wd.slot),
		fmt.Sprintf("intx gsi %d", wd.gsi), fmt.Sprintf("bar0 %#x", wd.regs), fmt.Sprintf("bar2 %#x", wd.window),
		fmt.Sprintf("ioeventfds %d", len(wd.dev.Ioeventfds())),
		fmt.Sprintf("soft doorbells %d, bad %d, refused writes %d, intx %d, wiring errors %d",
			s.SoftDoorbells, s.BadDoorbells, s.RefusedWrites, s.Interrupts, s.WiringErrors),
	}
}

// vmWiring is ipi.Wiring over one VM: BARs on its MMIO bus, the window as
// memory slots over the supervisor's mapping of the memfd, ioeventfds and
// irqfds with GSI routes for MSI-X. Its methods run on vCPU threads (a
// guest moving a BAR or programming MSI-X) and take only the VM's locks
// and the MMIO bus's: the window device calls them from the PIO bus
// (configuration space) or the MMIO bus's BAR1, never from inside an MMIO
// access that BARMoved would wait for.
type vmWiring struct {
	vm  *vmm.VM
	mem []byte
	bus string // the BARs' names on the MMIO bus: bus-barN

	routes *msiRoutes // the MSI-X vectors' irqfds

	mu      sync.Mutex
	windows map[uint64][]uint64 // BAR2 address → its slots' addresses
}

var _ ipi.Wiring = (*vmWiring)(nil)

// MapMMIO implements ipi.Wiring.
func (w *vmWiring) MapMMIO(bar int, gpa, size uint64, d bus.Device) error {
	return w.vm.MMIO().Insert(d, fmt.Sprintf("%s-bar%d", w.bus, bar), gpa, size)
}

// UnmapMMIO implements ipi.Wiring.
func (w *vmWiring) UnmapMMIO(bar int, gpa uint64) { w.vm.MMIO().Remove(gpa) }

// MapWindow implements ipi.Wiring: one memory slot per window slot.
func (w *vmWiring) MapWindow(gpa uint64, slots []ipi.Slot) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, ok := w.windows[gpa]; ok {
		return fmt.Errorf("window at %#x is mapped already", gpa)
	}
	var added []uint64
	for _, s := range slots {
		end := s.Offset + s.Size
		if end < s.Offset || end > uint64(len(w.mem)) {
			err := fmt.Errorf("window slot %#x+%#x is outside the %#x-byte window", s.Offset, s.Size, len(w.mem))
			w.removeLocked(added)
			return err
		}
		if err := w.vm.AddMemory(gpa+s.Offset, w.mem[s.Offset:end:end], s.ReadOnly); err != nil {
			w.removeLocked(added)
			return fmt.Errorf("map window at %#x: %w", gpa, err)
		}
		added = append(added, gpa+s.Offset)
	}
	w.windows[gpa] = added
	return nil
}

func (w *vmWiring) removeLocked(gpas []uint64) {
	for _, a := range gpas {
		w.vm.RemoveMemory(a) // fails harmlessly once the VM is closed
	}
}

// UnmapWindow implements ipi.Wiring.
func (w *vmWiring) UnmapWindow(gpa uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.removeLocked(w.windows[gpa])
	delete(w.windows, gpa)
}

func ioevent(e ipi.Ioeventfd, fd int) kvm.IOEvent {
	return kvm.IOEvent{FD: fd, Addr: e.GPA, Len: e.Len, Match: true, Data: e.Data}
}

// AddIoeventfd implements ipi.Wiring.
func (w *vmWiring) AddIoeventfd(e ipi.Ioeventfd, fd int) error { return w.vm.IOEventFD(ioevent(e, fd)) }

// RemoveIoeventfd implements ipi.Wiring.
func (w *vmWiring) RemoveIoeventfd(e ipi.Ioeventfd, fd int) error {
	return w.vm.RemoveIOEventFD(ioevent(e, fd))
}

// SetIrqfd implements ipi.Wiring through the PCI host's one MSI-X route
// (msiRoutes): the vector's GSI routed to r's message with fd as its irqfd
// while unmasked; deassigned while masked.
func (w *vmWiring) SetIrqfd(f ipi.Irqfd, fd int, r pci.MSIRoute) error {
	return w.routes.set(f.Vector, fd, r)
}

// close removes the window's slots (after the device is closed; errors
// once the VM is closed are expected). The irqfds go with the PCI host's
// msiRoutes.
func (w *vmWiring) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for gpa, gpas := range w.windows {
		w.removeLocked(gpas)
		delete(w.windows, gpa)
	}
}
