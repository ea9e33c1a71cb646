package virtio

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/pci"
)

// Feature bits every transport knows (virtio 1.2, 6).
const (
	FeatureIndirectDesc = 1 << 28 // VIRTIO_F_INDIRECT_DESC
	FeatureEventIdx     = 1 << 29 // VIRTIO_F_EVENT_IDX
	FeatureVersion1     = 1 << 32 // VIRTIO_F_VERSION_1
)

// Device status bits (virtio 1.2, 2.1).
const (
	StatusAcknowledge      = 1
	StatusDriver           = 2
	StatusDriverOK         = 4
	StatusFeaturesOK       = 8
	StatusDeviceNeedsReset = 0x40
	StatusFailed           = 0x80
)

// NoVector is VIRTIO_MSI_NO_VECTOR: no MSI-X vector for a queue or config.
const NoVector = 0xffff

// Layout of BAR0, the transport's only BAR: a 64-bit memory BAR holding
// every virtio structure and the MSI-X table and PBA, each structure at a
// 4 KiB boundary of its own.
const (
	BARIndex = 0
	BARSize  = 0x8000

	commonOff  = 0x0000
	commonLen  = 0x40 // up to queue_reset (virtio 1.2)
	isrOff     = 0x1000
	isrLen     = 4
	deviceOff  = 0x2000
	deviceMax  = 0x1000
	notifyOff  = 0x3000
	notifyMax  = 0x1000
	tableOff   = 0x4000
	pbaOff     = 0x5000
	maxVectors = 0x1000 / pci.MSIXEntrySize
	// NotifyMultiplier is notify_off_multiplier: queue i's notify register
	// is at NotifyMultiplier*i into the notify structure, so every queue
	// has an address of its own for an ioeventfd without datamatch.
	NotifyMultiplier = 4
)

// Device is a virtio device model behind the PCI transport.
type Device interface {
	// DeviceID is the virtio device type (1: network card).
	DeviceID() uint16
	// Class is the PCI class code (class<<16 | subclass<<8 | prog-if).
	Class() uint32
	// Features is what the device offers, transport bits it supports
	// (FeatureEventIdx, FeatureIndirectDesc) included; the transport adds
	// FeatureVersion1.
	Features() uint64
	// QueueMax is the largest size of each queue (powers of two); its
	// length is the number of queues.
	QueueMax() []uint16
	// ConfigLen is the size of the device-specific configuration.
	ConfigLen() int
	// ReadConfig and WriteConfig access the device-specific configuration
	// at off (within ConfigLen); they run on vCPU threads.
	ReadConfig(off int, data []byte)
	WriteConfig(off int, data []byte)
	// Activate starts the device when the driver sets DRIVER_OK, with the
	// negotiated features and the queues (nil where the driver did not
	// enable one). An error marks the device as needing a reset.
	Activate(h Host, features uint64, queues []*Queue) error
	// Notify is a queue notification (a kick); it must not block: it
	// runs on a vCPU thread or the VMM's ioeventfd goroutine, and may come
	// at any time, before activation or after a reset included.
	Notify(queue int)
	// Reset stops the device: when it returns, the device no longer
	// touches guest memory, the queues or the Host. It may be called on a
	// device that is not active. It must not call into the transport.
	Reset()
}

// Host is what an active device calls to reach the driver. Its methods
// are safe from any goroutine and never block on the vCPUs.
type Host interface {
	// Interrupt signals used buffers on queue: its MSI-X vector, or the
	// ISR's queue bit and INTx when MSI-X is off.
	Interrupt(queue int)
	// ConfigChanged signals a change of the device configuration.
	ConfigChanged()
	// Fail marks the device broken (DEVICE_NEEDS_RESET, a configuration
	// interrupt) and logs err; the device must stop using its queues
	// until the driver resets it.
	Fail(err error)
}

// BARMover is the VMM's side of a guest moving BAR0: it re-maps the
// transport (bus.Device, BARSize bytes) from old to new on the MMIO bus and
// moves the queue-notify ioeventfds with it (NotifyAddr gives the new
// addresses once MoveBAR returned nil). old is where the BAR was mapped.
// A move it cannot apply (new overlaps another device) returns an error
// and leaves everything where it was; it never touches another device's
// mapping. Called on a vCPU thread in a configuration-space write, with
// the PCI bus's lock held, never the transport's.
type BARMover interface {
	MoveBAR(old, new uint64) error
}

// PCIConfig is what NewPCI needs besides the device.
type PCIConfig struct {
	Mem *guestmem.Memory
	// BARAddr is BAR0's address, naturally aligned to BARSize, e.g. from
	// pci.Allocator.Alloc(BARSize, true).
	BARAddr uint64
	// Router delivers the MSI-X vectors (one per queue plus one for
	// configuration changes).
	Router pci.MSIRouter
	// IRQ is the INTx line (INTA#) for a driver that does not enable
	// MSI-X; nil gives the function no INTx pin.
	IRQ bus.IRQ
	// Mover is told when the guest moves BAR0; nil: moves are logged and
	// the transport stays where it was mapped.
	Mover BARMover
	Log   *slog.Logger
}

// PCI is the virtio 1.x modern PCI transport (virtio 1.2, 4.1) around one
// Device: a PCI function (vendor 0x1af4, device 0x1040+type) with the
// common, notify, ISR, device and PCI-config capabilities and MSI-X, all in
// BAR0. It is a pci.Function for the PCI bus and a bus.Device for BAR0 on
// the MMIO bus.
type PCI struct {
	pci.CapList
	dev   Device
	mem   *guestmem.Memory
	msix  *pci.MSIX
	intx  *pci.INTx
	mover BARMover
	log   *ratelog.Logger // the guest causes what is logged: rate-limited

	offered uint64
	nq      int
	cfgLen  int
	pciCfg  *pciCfgCap

	mu        sync.Mutex // registers; lock order: pci.Bus, PCI, MSIX
	bar       uint64
	devSel    uint32
	drvSel    uint32
	driver    uint64 // driver features
	queueSel  uint16
	queues    []queueState
	active    bool
	status    atomic.Uint32
	isr       atomic.Uint32
	cfgVector atomic.Uint32
	cfgGen    atomic.Uint32
}

type queueState struct {
	max, size            uint16
	enabled              bool
	desc, driver, device uint64
	vector               atomic.Uint32
}

var (
	_ pci.Function     = (*PCI)(nil)
	_ pci.INTxFunction = (*PCI)(nil)
	_ pci.MSIXFunction = (*PCI)(nil)
	_ pci.Resetter     = (*PCI)(nil)
	_ bus.Device       = (*PCI)(nil)
	_ Host             = (*PCI)(nil)
)

// NewPCI makes the transport for dev.
func NewPCI(dev Device, cfg PCIConfig) (*PCI, error) {
	maxes := dev.QueueMax()
	switch {
	case cfg.Mem == nil:
		return nil, errors.New("virtio: no guest memory")
	case len(maxes) == 0 || len(maxes) >= maxVectors || len(maxes)*NotifyMultiplier > notifyMax:
		return nil, fmt.Errorf("virtio: %d queues, want 1 to %d", len(maxes), maxVectors-1)
	case dev.ConfigLen() < 0 || dev.ConfigLen() > deviceMax:
		return nil, fmt.Errorf("virtio: device configuration of %d bytes, want at most %d", dev.ConfigLen(), deviceMax)
	case cfg.BARAddr%BARSize != 0:
		return nil, fmt.Errorf("virtio: BAR0 at %#x is not aligned to its size %#x", cfg.BARAddr, BARSize)
	}
	for i, m := range maxes {
		if m == 0 || m > MaxQueueSize || m&(m-1) != 0 {
			return nil, fmt.Errorf("virtio: queue %d: maximum size %d is not a power of two up to %d", i, m, MaxQueueSize)
		}
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	p := &PCI{dev: dev, mem: cfg.Mem, mover: cfg.Mover, log: ratelog.Default(log), bar: cfg.BARAddr,
		offered: dev.Features() | FeatureVersion1, nq: len(maxes), cfgLen: dev.ConfigLen(),
		queues: make([]queueState, len(maxes)),
	}
	for i, m := range maxes {
		p.queues[i].max, p.queues[i].size = m, m
		p.queues[i].vector.Store(NoVector)
	}
	p.cfgVector.Store(NoVector)
	if cfg.IRQ != nil {
		p.intx = pci.NewINTx(cfg.IRQ)
	}
	var err error
	p.msix, err = pci.NewMSIX(pci.MSIXConfig{Vectors: len(maxes) + 1, BAR: BARIndex, TableOffset: tableOff, PBAOffset: pbaOff},
		cfg.Router, func(err error) { p.log.Warn("virtio: MSI-X", "err", err) })
	if err != nil {
		return nil, fmt.Errorf("virtio: %w", err)
	}
	p.pciCfg = &pciCfgCap{p: p}
	for _, c := range []pci.Capability{
		p.msix,
		&virtioCap{typ: capCommon, off: commonOff, length: commonLen},
		&virtioCap{typ: capNotify, off: notifyOff, length: uint32(p.nq * NotifyMultiplier), multiplier: NotifyMultiplier},
		&virtioCap{typ: capISR, off: isrOff, length: isrLen},
		&virtioCap{typ: capDevice, off: deviceOff, length: uint32(max(p.cfgLen, 1))},
		p.pciCfg,
	} {
		if _, err := p.Add(c); err != nil {
			return nil, fmt.Errorf("virtio: %w", err)
		}
	}
	return p, nil
}

// Header implements pci.Function.
func (p *PCI) Header() pci.Header {
	h := pci.Header{Vendor: 0x1af4, Device: 0x1040 + p.dev.DeviceID(), Class: p.dev.Class(), Revision: 1,
		SubVendor: 0x1af4, Subsystem: 0x1100, CapPtr: p.First()}
	if p.intx != nil {
		h.IntPin = 1
	}
	return h
}

// BARs implements pci.Function: BAR0, 64-bit, not prefetchable.
func (p *PCI) BARs() [pci.NumBARs]pci.BAR {
	p.mu.Lock()
	defer p.mu.Unlock()
	return [pci.NumBARs]pci.BAR{BARIndex: {Size: BARSize, Is64: true, Addr: p.bar}}
}

// INTx implements pci.INTxFunction.
func (p *PCI) INTx() *pci.INTx { return p.intx }

// MSIX is the transport's MSI-X state (vector 0: configuration changes as
// Linux assigns it, then one per queue; the driver chooses).
func (p *PCI) MSIX() *pci.MSIX { return p.msix }

// NumQueues is the device's number of queues.
func (p *PCI) NumQueues() int { return p.nq }

// BARAddr is where BAR0 is now.
func (p *PCI) BARAddr() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bar
}

// BARMoved implements pci.Function: the mover re-maps BAR0 and its
// notifiers (synchronously, without the transport's lock: an MMIO access
// to BAR0 in flight on another vCPU holds the MMIO bus and waits for that
// lock). A move the mover refuses (onto another device's range) leaves
// the transport where it was, and the error makes the BAR register read
// back the old address.
func (p *PCI) BARMoved(i int, addr uint64) error {
	p.mu.Lock()
	old := p.bar
	p.mu.Unlock()
	if i != BARIndex || addr == old {
		return nil
	}
	if _, ok := memmap.End(addr, BARSize); !ok {
		return fmt.Errorf("virtio: BAR0 at %#x runs past 2^64", addr)
	}
	if p.mover == nil {
		p.log.Warn("virtio: guest moved BAR0; not moved", "from", fmt.Sprintf("%#x", old), "to", fmt.Sprintf("%#x", addr))
		return fmt.Errorf("virtio: BAR0 cannot move")
	}
	if err := p.mover.MoveBAR(old, addr); err != nil {
		p.log.Warn("virtio: guest moved BAR0; refused", "from", fmt.Sprintf("%#x", old), "to", fmt.Sprintf("%#x", addr), "err", err)
		return err
	}
	p.mu.Lock()
	p.bar = addr
	p.mu.Unlock()
	return nil
}

// Read implements bus.Device for BAR0.
func (p *PCI) Read(off uint64, data []byte) {
	switch {
	case off >= tableOff && off < tableOff+0x2000:
		p.msix.Read(off, data)
	case off >= commonOff && off < commonOff+commonLen:
		p.mu.Lock()
		v := p.readCommon(int(off-commonOff), len(data))
		p.mu.Unlock()
		putLE(data, v)
	case off >= isrOff && off < isrOff+isrLen:
		clear(data)
		if off == isrOff {
			data[0] = byte(p.isr.Swap(0))
			if p.intx != nil {
				p.intx.Set(false)
			}
		}
	case off >= deviceOff && off+uint64(len(data)) <= deviceOff+uint64(p.cfgLen):
		p.dev.ReadConfig(int(off-deviceOff), data)
	default:
		clear(data)
	}
}

// Write implements bus.Device for BAR0.
func (p *PCI) Write(off uint64, data []byte) {
	switch {
	case off >= tableOff && off < tableOff+0x2000:
		p.msix.Write(off, data)
	case off >= notifyOff && off < notifyOff+uint64(p.nq*NotifyMultiplier):
		p.Kick(int(off-notifyOff) / NotifyMultiplier)
	case off >= commonOff && off < commonOff+commonLen:
		p.mu.Lock()
		p.writeCommon(int(off-commonOff), data)
		p.mu.Unlock()
	case off >= deviceOff && off+uint64(len(data)) <= deviceOff+uint64(p.cfgLen):
		p.dev.WriteConfig(int(off-deviceOff), data)
	}
}

// Status is the device status register.
func (p *PCI) Status() uint8 { return uint8(p.status.Load()) }

// Reset implements pci.Resetter, for a platform reset (pci.Bus.Reset):
// the device stops as when the driver resets it, and every register, the
// PCI-config window's included, returns to its initial value. The bus
// resets MSI-X before and moves BAR0 back after.
func (p *PCI) Reset() {
	c := p.pciCfg
	c.mu.Lock()
	c.bar, c.off, c.length, c.data = 0, 0, 0, [4]byte{}
	c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.reset()
}
