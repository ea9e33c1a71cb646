package machine

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/popvmm/popvmm/internal/eventfd"
	"github.com/popvmm/popvmm/internal/retry"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/kvm"
	"github.com/popvmm/popvmm/vmm/pci"
)

// pciConfigPort is configuration mechanism #1's address register; the
// data window follows it (0xCF8-0xCFF).
const pciConfigPort = 0xcf8

// firstMSIGSI is the first GSI handed to MSI vectors: 0-23 are the
// in-kernel IOAPIC's pins (vmm.VM.SetMSIRoute refuses them).
const firstMSIGSI = 24

// pciHost is one VM's PCI side, shared by every PCI device popvmm puts in
// it (virtio-net, the window device): the bus with its host bridge on the
// VM's port-I/O bus at 0xCF8, the BAR allocator over the kernel's PCI
// windows, GSIs for MSI vectors, and what the devices registered with KVM
// (eventfds, ioeventfd goroutines), released by Close. Devices reach it
// only through the small pieces it hands out: AddFunction, newMSIRouter,
// notify, and barMover. When the guest reboots inside the VM, reset
// returns every function to power-on.
type pciHost struct {
	vm    *vmm.VM
	bus   *pci.Bus
	alloc *pci.Allocator
	log   *slog.Logger

	mu      sync.Mutex
	nextGSI uint32
	closers []func() // in the order they were added; run backwards
	closed  bool
}

// newPCIHost puts a PCI bus on v, its BARs in l's PCI windows.
func newPCIHost(v *vmm.VM, l *memmap.Layout, log *slog.Logger) (*pciHost, error) {
	h := &pciHost{vm: v, bus: pci.NewBus(), alloc: pci.NewAllocator(l), log: log, nextGSI: firstMSIGSI}
	if err := v.PIO().Insert(h.bus.ConfigPorts(), "pci-config", pciConfigPort, 8); err != nil {
		return nil, fmt.Errorf("pci: %w", err)
	}
	h.onClose(func() { v.PIO().Remove(pciConfigPort) })
	v.OnReset(h.reset)
	return h, nil
}

// reset is the VM's platform reset (vmm.VM.OnReset): every function stops
// and returns to power-on (pci.Bus.Reset), its BARs moved back to where
// they were placed (synchronously, so the next boot finds the eventfds at
// their first addresses).
func (h *pciHost) reset() {
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return
	}
	h.bus.Reset()
	h.log.Debug("pci: platform reset")
}

// onClose adds f to what Close undoes.
func (h *pciHost) onClose(f func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closers = append(h.closers, f)
}

// Close undoes everything the host and its devices registered, newest
// first. Call it once the devices are stopped (no more interrupts), before
// or after the VM is closed. Calling it again is harmless.
func (h *pciHost) Close() {
	h.mu.Lock()
	cs := h.closers
	h.closers, h.closed = nil, true
	h.mu.Unlock()
	for i := len(cs) - 1; i >= 0; i-- {
		cs[i]()
	}
}

// allocGSI returns a GSI of the VM's for one MSI vector.
func (h *pciHost) allocGSI() uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.nextGSI
	h.nextGSI++
	return g
}

// AddFunction puts fn on the bus and maps its memory BARs on the VM's MMIO
// bus: bars[i] is the bus.Device for BAR slot i at the address fn.BARs()
// gives (placed beforehand with h.alloc). It returns the device number.
func (h *pciHost) AddFunction(name string, fn pci.Function, bars map[int]bus.Device) (int, error) {
	have := fn.BARs()
	var mapped []uint64
	undo := func() {
		for _, a := range mapped {
			h.vm.MMIO().Remove(a)
		}
	}
	for i, d := range bars {
		b := have[i]
		if i < 0 || i >= pci.NumBARs || b.Size == 0 {
			undo()
			return 0, fmt.Errorf("pci %s: BAR%d has no size", name, i)
		}
		if err := h.vm.MMIO().Insert(d, fmt.Sprintf("%s-bar%d", name, i), b.Addr, b.Size); err != nil {
			undo()
			return 0, fmt.Errorf("pci %s: %w", name, err)
		}
		mapped = append(mapped, b.Addr)
	}
	dev, err := h.bus.Add(fn)
	if err != nil {
		undo()
		return 0, err
	}
	h.log.Debug("pci function added", "device", name, "slot", dev, "bars", fmt.Sprintf("%#x", have[0].Addr))
	return dev, nil
}

// notifier is a guest-write doorbell: a KVM ioeventfd at an MMIO address
// whose eventfd a goroutine reads, calling kick for each batch of writes.
// The vCPU never leaves the guest for it.
type notifier struct {
	vm   *vmm.VM
	f    *os.File
	mu   sync.Mutex
	ev   kvm.IOEvent
	on   bool
	done chan struct{}
}

// notify registers an ioeventfd for writes of length n (0: any) at addr
// and starts its goroutine; h.Close stops it.
func (h *pciHost) notify(addr uint64, n int, kick func()) (*notifier, error) {
	fd, err := eventfd.New()
	if err != nil {
		return nil, err
	}
	nt := &notifier{vm: h.vm, f: os.NewFile(uintptr(fd), "ioeventfd"), done: make(chan struct{})}
	nt.ev = kvm.IOEvent{FD: fd, Addr: addr, Len: uint32(n)}
	if err := h.vm.IOEventFD(nt.ev); err != nil {
		nt.f.Close()
		return nil, fmt.Errorf("ioeventfd at %#x: %w", addr, err)
	}
	nt.on = true
	go nt.run(kick)
	h.onClose(nt.close)
	return nt, nil
}

func (nt *notifier) run(kick func()) {
	defer close(nt.done)
	var b [8]byte
	var back retry.Backoff
	for {
		// The runtime poller parks the goroutine; Close wakes it (an
		// error that is not transient: os.ErrClosed).
		if _, err := nt.f.Read(b[:]); err != nil {
			if !retry.Transient(err) {
				return
			}
			time.Sleep(back.Next()) // ENOMEM and the like pass; a kick may have come meanwhile
		} else {
			back.Reset()
		}
		kick()
	}
}

// move re-registers the ioeventfd at addr; the goroutine and eventfd stay.
func (nt *notifier) move(addr uint64) error {
	nt.mu.Lock()
	defer nt.mu.Unlock()
	if nt.on {
		if err := nt.vm.RemoveIOEventFD(nt.ev); err != nil {
			return err
		}
		nt.on = false
	}
	nt.ev.Addr = addr
	if err := nt.vm.IOEventFD(nt.ev); err != nil {
		return err
	}
	nt.on = true
	return nil
}

func (nt *notifier) close() {
	nt.mu.Lock()
	if nt.on {
		nt.vm.RemoveIOEventFD(nt.ev) // fails harmlessly once the VM is closed
		nt.on = false
	}
	nt.mu.Unlock()
	nt.f.Close()
	<-nt.done
}

// barMover re-maps a function's BAR when the guest moves it: the MMIO
// mapping (bus.Move: all or nothing, never another device's range) and the
// notifiers inside it (at fixed offsets into the BAR). It runs on the vCPU
// thread of the guest's configuration-space write, which holds the PIO
// bus and the PCI bus's lock but no device's (vmm/bus's lock order: the
// PIO bus before the MMIO bus). A move that cannot be applied is undone
// whole and refused, so the BAR register reads back the old address.
type barMover struct {
	h    *pciHost
	mmio *bus.Bus // the VM's MMIO bus
	name string
	dev  bus.Device
	size uint64
	// notifiers and their offsets into the BAR.
	notifiers []*notifier
	offsets   []uint64

	mu sync.Mutex // one move at a time
}

func (h *pciHost) newBARMover(name string, dev bus.Device, size uint64) *barMover {
	return &barMover{h: h, mmio: h.vm.MMIO(), name: name, dev: dev, size: size}
}

// MoveBAR implements virtio.BARMover.
func (m *barMover) MoveBAR(old, new uint64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := memmap.End(new, m.size); !ok {
		return fmt.Errorf("%s: BAR at %#x+%#x runs past 2^64", m.name, new, m.size)
	}
	mmio := m.mmio
	if err := mmio.Move(m.dev, m.name, old, true, new, m.size); err != nil {
		return fmt.Errorf("%s: %w", m.name, err)
	}
	for i, nt := range m.notifiers {
		if err := nt.move(new + m.offsets[i]); err != nil {
			// Undo: the notifiers moved so far, then the mapping.
			for j := range i {
				m.notifiers[j].move(old + m.offsets[j])
			}
			mmio.Move(m.dev, m.name, new, true, old, m.size)
			return fmt.Errorf("%s: notifier %d at %#x: %w", m.name, i, new+m.offsets[i], err)
		}
	}
	m.h.log.Debug("pci: BAR moved", "device", m.name, "from", fmt.Sprintf("%#x", old), "to", fmt.Sprintf("%#x", new))
	return nil
}
