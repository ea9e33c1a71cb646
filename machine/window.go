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
// its device number's INTA# to.
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
	wa, k, h, v, log := b.cfg.Window, b.cfg.Kernel, b.pci, b.vm, b.log
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
	regs, err := h.alloc.Alloc(ipi.RegsSize, false)
	if err != nil {
		return nil, fmt.Errorf("window device: BAR0: %w", err)
	}
	msix, err := h.alloc.Alloc(ipi.MSIXBARSize, false)
	if err != nil {
		return nil, fmt.Errorf("window device: BAR1: %w", err)
	}
	slot := h.bus.NextDevice()
	gsi, ok := boot.PCIINTxGSI(slot)
	if !ok {
		return nil, fmt.Errorf("window device: PCI device %d has no INTx route in the MP table (1-%d have)", slot, boot.PCIINTxDevices)
	}
	w := &vmWiring{vm: v, mem: wa.Mem, windows: map[uint64][]uint64{}, routes: h.newMSIRoutes("window device")}
	h.onClose(w.close)
	dev, err := ipi.NewDevice(ipi.DeviceConfig{
		Peer: k.Index, Bells: wa.Bells, WindowSize: size, Slots: slots,
		Regs: regs, MSIX: msix, Window: k.Layout.Window.Start,
		IRQ: v.IRQLine(gsi), IntLine: uint8(gsi), Wiring: w, Log: log,
	})
	if err != nil {
		return nil, err
	}
	h.onClose(func() { dev.Close() }) // runs before w.close
	got, err := h.AddFunction("window", dev, nil)
	if err != nil {
		return nil, fmt.Errorf("window device: %w", err)
	}
	if got != slot {
		return nil, fmt.Errorf("window device: PCI device %d, expected %d", got, slot)
	}
	if err := dev.Wire(); err != nil {
		return nil, err
	}
	go dev.Run(context.Background()) // returns at dev.Close
	wd := &windowDev{dev: dev, wiring: w, peer: k.Index, slot: slot, gsi: gsi, regs: regs, window: k.Layout.Window.Start}
	log.Info("window device attached", "peer", k.Index, "pci", fmt.Sprintf("00:%02x.0", slot), "gsi", gsi,
		"bar0", fmt.Sprintf("%#x", regs), "bar2", fmt.Sprintf("%#x", wd.window), "slots", len(slots), "protect", wa.Protect)
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

	routes *msiRoutes // the MSI-X vectors' irqfds

	mu      sync.Mutex
	windows map[uint64][]uint64 // BAR2 address → its slots' addresses
}

var _ ipi.Wiring = (*vmWiring)(nil)

// MapMMIO implements ipi.Wiring.
func (w *vmWiring) MapMMIO(bar int, gpa, size uint64, d bus.Device) error {
	return w.vm.MMIO().Insert(d, fmt.Sprintf("window-bar%d", bar), gpa, size)
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
