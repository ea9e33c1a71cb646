package ipi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	evfd "github.com/popvmm/popvmm/internal/eventfd"
	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/retry"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/pci"
)

// Header values of the window device: QEMU's ivshmem (1af4:1110 rev 1,
// class 0x0500, QEMU's subsystem ids).
const (
	ClassMemoryRAM = 0x050000
	revision       = 1
	subVendorID    = 0x1af4
	SubsystemID    = 0x1100
)

// DeviceConfig configures one VM's window device.
type DeviceConfig struct {
	// Peer is the kernel's peer id (its index in cluster.toml): what the
	// guest reads in IVPosition, and whose bells are its interrupts.
	Peer  int
	Bells *Doorbells
	// WindowSize is BAR2's size, the window's (a power of two).
	WindowSize uint64
	// Slots is how the window is mapped (windowgeom.Slots); nil: one writable
	// slot.
	Slots []Slot
	// Regs, MSIX and Window are where the BARs start (a pci.Allocator
	// for the first two, memmap.Layout.Window for the window).
	Regs, MSIX, Window uint64
	// IRQ is INTA#'s line, IntLine the number the guest reads for it.
	IRQ     bus.IRQ
	IntLine uint8
	Wiring  Wiring
	Log     *slog.Logger
	// Class and Subsystem replace the header's class code and subsystem
	// id (0: ivshmem's, ClassMemoryRAM and SubsystemID). The window
	// network's device (docs/winnet.md) is told from the messaging
	// window's by them.
	Class     uint32
	Subsystem uint16
}

// Device is a kernel's window device: a PCI function with QEMU's
// ivshmem-doorbell registers in BAR0 (bus.Device), MSI-X in BAR1 and the
// window in BAR2. Doorbells go through KVM: the device has the VMM register
// an ioeventfd per bell on its Doorbell register and an irqfd per vector,
// re-registering them when the guest moves a BAR or the set of peers
// changes. A Doorbell write that still reaches it (no ioeventfd matched:
// before they are registered, another access size, a bell that does not
// exist) is handled here: a valid bell's eventfd is signalled, anything
// else is counted and dropped.
//
// With MSI-X off the device interrupts through INTx as QEMU's ivshmem with
// msi=off does: Run reads the kernel's eventfds, a doorbell on any vector
// sets IntrStatus to 1, and the line is IntrStatus & IntrMask != 0; reading
// IntrStatus clears it.
type Device struct {
	cfg     DeviceConfig
	vectors int
	log     *ratelog.Logger // the guest causes what is logged: rate-limited

	caps pci.CapList
	msix *pci.MSIX
	intx *pci.INTx
	wake int // eventfd: the INTx watcher re-reads the mode

	regsMu       sync.Mutex
	mask, status uint32
	msixOn       atomic.Bool

	wireMu  sync.Mutex
	bars    [3]uint64
	mapped  [3]bool // what is on the bus / mapped now, at mappedAt
	at      [3]uint64
	wired   bool
	closed  bool
	running bool // Run is running: it closes wake when it returns after Close
	applied map[Ioeventfd]*eventfd
	unsub   func()

	stats deviceCounters
}

type deviceCounters struct {
	softDoorbells, badDoorbells, badAccesses, wiringErrors, interrupts, refusedWrites atomic.Uint64
}

// DeviceStats counts what a device saw.
type DeviceStats struct {
	// SoftDoorbells are valid Doorbell writes that reached popvmm (no
	// ioeventfd took them) and were rung from here.
	SoftDoorbells uint64
	// BadDoorbells name a peer or vector that does not exist.
	BadDoorbells uint64
	// BadAccesses are register accesses of a size or alignment the device
	// does not take (misaligned, or a 1- or 2-byte write).
	BadAccesses uint64
	// WiringErrors are Wiring calls that failed.
	WiringErrors uint64
	// Interrupts are INTx doorbells taken (Run, MSI-X off).
	Interrupts uint64
	// RefusedWrites are guest writes to read-only window slots.
	RefusedWrites uint64
}

var (
	_ pci.Function     = (*Device)(nil)
	_ pci.INTxFunction = (*Device)(nil)
	_ pci.MSIXFunction = (*Device)(nil)
	_ pci.Resetter     = (*Device)(nil)
	_ pci.MSIRouter    = (*Device)(nil)
	_ bus.Device       = (*Device)(nil)
)

// NewDevice makes the window device of kernel cfg.Peer. Nothing is wired
// until Wire.
func NewDevice(cfg DeviceConfig) (*Device, error) {
	switch {
	case cfg.Bells == nil || cfg.Wiring == nil:
		return nil, errors.New("window device: doorbells and wiring are required")
	case cfg.Peer < 0 || cfg.Peer >= cfg.Bells.Kernels():
		return nil, fmt.Errorf("window device: peer %d is not a kernel (0-%d)", cfg.Peer, cfg.Bells.Kernels()-1)
	case cfg.WindowSize < 4096 || cfg.WindowSize&(cfg.WindowSize-1) != 0:
		return nil, fmt.Errorf("window device: window of %#x bytes is not a power of two of at least 4 KiB", cfg.WindowSize)
	}
	if cfg.Slots == nil {
		cfg.Slots = []Slot{{Offset: 0, Size: cfg.WindowSize}}
	}
	if err := checkSlots(cfg.Slots, cfg.WindowSize); err != nil {
		return nil, fmt.Errorf("window device: %w", err)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Class == 0 {
		cfg.Class = ClassMemoryRAM
	}
	if cfg.Subsystem == 0 {
		cfg.Subsystem = SubsystemID
	}
	d := &Device{cfg: cfg, vectors: cfg.Bells.Vectors(), log: ratelog.Default(cfg.Log.With("kernel", cfg.Peer, "device", "window")),
		bars: [3]uint64{cfg.Regs, cfg.MSIX, cfg.Window}, applied: map[Ioeventfd]*eventfd{}}
	m, err := pci.NewMSIX(pci.MSIXConfig{Vectors: d.vectors, BAR: MSIXBAR, TableOffset: 0, PBAOffset: MSIXPBAOffset}, d,
		func(err error) { d.wiringError("MSI-X", err) })
	if err != nil {
		return nil, fmt.Errorf("window device: %w", err)
	}
	d.msix = m
	if _, err := d.caps.Add(m); err != nil {
		return nil, fmt.Errorf("window device: %w", err)
	}
	d.intx = pci.NewINTx(cfg.IRQ)
	fd, err := evfd.New()
	if err != nil {
		return nil, fmt.Errorf("window device: %w", err)
	}
	d.wake = fd
	return d, nil
}

// checkSlots checks that slots cover [0, size) in order, page-aligned.
func checkSlots(slots []Slot, size uint64) error {
	var at uint64
	for _, s := range slots {
		if s.Offset != at || s.Size == 0 || s.Offset%4096 != 0 || s.Size%4096 != 0 || s.Offset+s.Size < s.Offset {
			return fmt.Errorf("window slots %+v do not cover the window in page-aligned order", slots)
		}
		at += s.Size
	}
	if at != size {
		return fmt.Errorf("window slots cover %#x of %#x bytes", at, size)
	}
	return nil
}

// Header implements pci.Function.
func (d *Device) Header() pci.Header {
	return pci.Header{Vendor: VendorID, Device: DeviceID, Class: d.cfg.Class, Revision: revision,
		SubVendor: subVendorID, Subsystem: d.cfg.Subsystem, CapPtr: d.caps.First(), IntPin: 1, IntLine: d.cfg.IntLine}
}

// BARs implements pci.Function: BAR0 registers and BAR1 MSI-X (32-bit
// memory), BAR2 the window (64-bit prefetchable), at the configured
// addresses.
func (d *Device) BARs() [pci.NumBARs]pci.BAR {
	var b [pci.NumBARs]pci.BAR
	b[RegsBAR] = pci.BAR{Size: RegsSize, Addr: d.cfg.Regs}
	b[MSIXBAR] = pci.BAR{Size: MSIXBARSize, Addr: d.cfg.MSIX}
	b[WindowBAR] = pci.BAR{Size: d.cfg.WindowSize, Is64: true, Prefetchable: true, Addr: d.cfg.Window}
	return b
}

// INTx implements pci.INTxFunction.
func (d *Device) INTx() *pci.INTx { return d.intx }

// MSIX is the device's MSI-X state (BAR1's bus.Device is this).
func (d *Device) MSIX() *pci.MSIX { return d.msix }

// ConfigRead implements pci.Function: the capability list (MSI-X).
func (d *Device) ConfigRead(off int, data []byte) { d.caps.ConfigRead(off, data) }

// ConfigWrite implements pci.Function. Turning MSI-X on or off switches
// the interrupt between MSI-X and INTx.
func (d *Device) ConfigWrite(off int, data []byte) {
	d.caps.ConfigWrite(off, data)
	on := d.msix.Enabled()
	if d.msixOn.Swap(on) == on {
		return
	}
	d.regsMu.Lock()
	d.updateLocked()
	d.regsMu.Unlock()
	d.kick() // the INTx watcher reads the kernel's eventfds or leaves them to KVM
}

// Reset implements pci.Resetter, for a platform reset (pci.Bus.Reset,
// which resets MSI-X before and moves the BARs back after, re-mapping them
// through BARMoved): IntrMask and IntrStatus return to zero, INTx goes
// low, and Run takes the doorbells again as with MSI-X off.
func (d *Device) Reset() {
	d.msixOn.Store(d.msix.Enabled())
	d.regsMu.Lock()
	d.mask, d.status = 0, 0
	d.updateLocked()
	d.regsMu.Unlock()
	d.kick()
}

// kick wakes Run to re-read the mode (or see the device closed).
func (d *Device) kick() {
	d.wireMu.Lock()
	defer d.wireMu.Unlock()
	if d.wake >= 0 {
		signal(d.wake)
	}
}

// SetRoute implements pci.MSIRouter: vector's irqfd is the kernel's bell
// for that vector.
func (d *Device) SetRoute(vector int, r pci.MSIRoute) error {
	p := d.cfg.Peer
	return d.cfg.Wiring.SetIrqfd(Irqfd{VM: p, Bell: BellID{p, vector}, Vector: vector}, d.cfg.Bells.KernelFd(p, vector), r)
}

// Signal implements pci.MSIRouter: a write to the vector's bell, which its
// irqfd injects.
func (d *Device) Signal(vector int) error {
	if !d.cfg.Bells.Ring(BellID{d.cfg.Peer, vector}) {
		return fmt.Errorf("no bell for vector %d", vector)
	}
	return nil
}

// Read implements bus.Device for BAR0. Naturally aligned reads of 1, 2, 4
// or 8 bytes return the registers' bytes (Doorbell and the reserved rest
// read as zero); reading any byte of IntrStatus clears it. A misaligned
// read returns all ones and is counted.
func (d *Device) Read(off uint64, data []byte) {
	n := uint64(len(data))
	if (n != 1 && n != 2 && n != 4 && n != 8) || off%n != 0 || off >= RegsSize || off+n > RegsSize {
		d.stats.badAccesses.Add(1)
		for i := range data {
			data[i] = 0xff
		}
		return
	}
	var words [2]uint32
	base := off &^ 3
	d.regsMu.Lock()
	for i := range words {
		reg := base + 4*uint64(i)
		if reg >= off+n {
			break
		}
		switch reg {
		case RegIntrMask:
			words[i] = d.mask
		case RegIntrStatus:
			words[i] = d.status
			d.status = 0 // QEMU: reading ISR clears all interrupts
			d.updateLocked()
		case RegIVPosition:
			words[i] = uint32(d.cfg.Peer)
		}
	}
	d.regsMu.Unlock()
	v := uint64(words[0]) | uint64(words[1])<<32
	v >>= 8 * (off - base)
	for i := range data {
		data[i] = byte(v >> (8 * i))
	}
}

// Write implements bus.Device for BAR0: aligned 4-byte writes (an aligned
// 8-byte write is two of them) to IntrMask, IntrStatus and Doorbell; the
// rest is read-only or reserved. 1- and 2-byte writes and misaligned ones
// are counted and dropped.
func (d *Device) Write(off uint64, data []byte) {
	n := uint64(len(data))
	if (n != 4 && n != 8) || off%n != 0 || off >= RegsSize || off+n > RegsSize {
		d.stats.badAccesses.Add(1)
		return
	}
	for i := uint64(0); i < n; i += 4 {
		d.writeReg(off+i, binary.LittleEndian.Uint32(data[i:]))
	}
}

func (d *Device) writeReg(reg uint64, v uint32) {
	switch reg {
	case RegIntrMask:
		d.regsMu.Lock()
		d.mask = v
		d.updateLocked()
		d.regsMu.Unlock()
	case RegIntrStatus:
		d.regsMu.Lock()
		d.status = v
		d.updateLocked()
		d.regsMu.Unlock()
	case RegDoorbell:
		d.doorbell(v)
	}
}

// doorbell rings the bell a Doorbell write names, the way its ioeventfd
// would have.
func (d *Device) doorbell(v uint32) {
	b := BellID{Peer: int(v >> 16), Vector: int(v & 0xffff)}
	if d.cfg.Bells.Ring(b) {
		d.stats.softDoorbells.Add(1)
		return
	}
	n := d.stats.badDoorbells.Add(1)
	d.log.Warn("window device: doorbell for no bell; dropped", "peer", b.Peer, "vector", b.Vector, "bad_doorbells", n)
}

// updateLocked drives INTx: asserted while IntrStatus & IntrMask is not
// zero and MSI-X is off. regsMu held.
func (d *Device) updateLocked() {
	d.intx.Set(d.status&d.mask != 0 && !d.msixOn.Load())
}

// raise is an INTx doorbell: IntrStatus = 1 (QEMU's msi=off device writes
// 1, whatever the vector).
func (d *Device) raise() {
	d.stats.interrupts.Add(1)
	d.regsMu.Lock()
	d.status = 1
	d.updateLocked()
	d.regsMu.Unlock()
}

// Run is the INTx watcher: while MSI-X is off it reads the kernel's
// eventfds (no irqfd is assigned then) and raises INTx for every doorbell;
// while MSI-X is on it leaves them to KVM. It returns when ctx ends or the
// device is closed. The VMM runs it for the VM's lifetime.
func (d *Device) Run(ctx context.Context) error {
	d.wireMu.Lock()
	switch {
	case d.closed:
		d.wireMu.Unlock()
		return nil
	case d.running:
		d.wireMu.Unlock()
		return errors.New("window device: Run is running already")
	}
	d.running = true
	d.wireMu.Unlock()
	defer func() {
		d.wireMu.Lock()
		defer d.wireMu.Unlock()
		d.running = false
		if d.closed && d.wake >= 0 {
			unix.Close(d.wake)
			d.wake = -1
		}
	}()
	stop := context.AfterFunc(ctx, d.kick)
	defer stop()
	fds := make([]unix.PollFd, 0, 1+d.vectors)
	for {
		d.wireMu.Lock()
		closed := d.closed
		d.wireMu.Unlock()
		if closed || ctx.Err() != nil {
			return nil
		}
		fds = append(fds[:0], unix.PollFd{Fd: int32(d.wake), Events: unix.POLLIN})
		if !d.msixOn.Load() {
			for v := range d.vectors {
				fds = append(fds, unix.PollFd{Fd: int32(d.cfg.Bells.KernelFd(d.cfg.Peer, v)), Events: unix.POLLIN})
			}
		}
		if _, err := unix.Poll(fds, -1); err != nil && !errors.Is(err, unix.EINTR) {
			if retry.Transient(err) { // out of memory for a moment: the watcher lasts the VM's life
				d.log.Warn("window device: INTx watcher: poll failed; retrying", "err", err)
				retry.Sleep(ctx, retry.MaxDelay/10)
				continue
			}
			return fmt.Errorf("window device: INTx watcher: %w", os.NewSyscallError("poll", err))
		}
		evfd.Drain(d.wake)
		for v, f := range fds[1:] {
			if f.Revents&unix.POLLIN == 0 {
				continue
			}
			if n, _ := evfd.Drain(int(f.Fd)); n == 0 {
				continue // KVM or a drain took it
			}
			if d.msixOn.Load() {
				// MSI-X came on meanwhile: deliver there (pending if
				// the vector is masked).
				d.msix.Trigger(v)
				continue
			}
			d.raise()
		}
	}
}

// Stats returns the device's counters.
func (d *Device) Stats() DeviceStats {
	s := &d.stats
	return DeviceStats{SoftDoorbells: s.softDoorbells.Load(), BadDoorbells: s.badDoorbells.Load(),
		BadAccesses: s.badAccesses.Load(), WiringErrors: s.wiringErrors.Load(), Interrupts: s.interrupts.Load(),
		RefusedWrites: s.refusedWrites.Load()}
}

// Close unwires the device (through Wiring; errors are ignored, as the VM
// may be gone already), stops following the peers and stops Run. Safe to
// call twice.
func (d *Device) Close() error {
	d.wireMu.Lock()
	if d.closed {
		d.wireMu.Unlock()
		return nil
	}
	d.closed = true
	d.unwireLocked()
	if d.running {
		signal(d.wake) // Run sees closed and closes wake
	} else {
		unix.Close(d.wake)
		d.wake = -1
	}
	unsub := d.unsub
	d.wireMu.Unlock()
	if unsub != nil {
		unsub()
	}
	d.log.Flush() // the counts of lines held back
	return nil
}
