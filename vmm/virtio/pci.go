package virtio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

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

// ISR bits (virtio 1.2, 4.1.4.5).
const (
	isrQueue  = 1
	isrConfig = 2
)

// The modern transport's capability types (virtio 1.2, 4.1.4).
const (
	capCommon = 1
	capNotify = 2
	capISR    = 3
	capDevice = 4
	capPCI    = 5
)

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

// Common configuration offsets (struct virtio_pci_common_cfg).
const (
	ccDeviceFeatureSelect = 0x00
	ccDeviceFeature       = 0x04
	ccDriverFeatureSelect = 0x08
	ccDriverFeature       = 0x0c
	ccConfigMSIXVector    = 0x10
	ccNumQueues           = 0x12
	ccDeviceStatus        = 0x14
	ccConfigGeneration    = 0x15
	ccQueueSelect         = 0x16
	ccQueueSize           = 0x18
	ccQueueMSIXVector     = 0x1a
	ccQueueEnable         = 0x1c
	ccQueueNotifyOff      = 0x1e
	ccQueueDesc           = 0x20
	ccQueueDriver         = 0x28
	ccQueueDevice         = 0x30
	ccQueueNotifData      = 0x38
	ccQueueReset          = 0x3a
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
// addresses once MoveBAR is called). old is where the BAR was mapped.
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
	log   *slog.Logger

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
	p := &PCI{dev: dev, mem: cfg.Mem, mover: cfg.Mover, log: log, bar: cfg.BARAddr,
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
		cfg.Router, func(err error) { log.Warn("virtio: MSI-X", "err", err) })
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

// NotifyAddr is the guest-physical address and length of queue's notify
// register: register a KVM ioeventfd there (length 2, the driver writes
// the 16-bit queue index, or 0 to match any length; no datamatch) whose
// goroutine calls Kick(queue).
func (p *PCI) NotifyAddr(queue int) (addr uint64, length int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bar + notifyOff + uint64(queue)*NotifyMultiplier, 2
}

// BARMoved implements pci.Function.
func (p *PCI) BARMoved(i int, addr uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if i != BARIndex || addr == p.bar {
		return
	}
	old := p.bar
	if _, ok := memmap.End(addr, BARSize); !ok {
		p.log.Warn("virtio: guest moved BAR0 where it cannot be mapped; not moved", "addr", fmt.Sprintf("%#x", addr))
		return
	}
	if p.mover == nil {
		p.log.Warn("virtio: guest moved BAR0; not moved", "from", fmt.Sprintf("%#x", old), "to", fmt.Sprintf("%#x", addr))
		return
	}
	p.bar = addr
	if err := p.mover.MoveBAR(old, addr); err != nil {
		p.log.Warn("virtio: move BAR0", "from", fmt.Sprintf("%#x", old), "to", fmt.Sprintf("%#x", addr), "err", err)
	}
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

// Kick delivers a notification for queue: what a write to its notify
// register does, for the VMM's ioeventfd goroutine. Before DRIVER_OK and
// while the device needs a reset it does nothing.
func (p *PCI) Kick(queue int) {
	if queue < 0 || queue >= p.nq || p.status.Load()&(StatusDriverOK|StatusDeviceNeedsReset) != StatusDriverOK {
		return
	}
	p.dev.Notify(queue)
}

// Interrupt implements Host.
func (p *PCI) Interrupt(queue int) {
	if queue < 0 || queue >= p.nq {
		return
	}
	p.signal(p.queues[queue].vector.Load(), isrQueue)
}

// ConfigChanged implements Host.
func (p *PCI) ConfigChanged() {
	p.cfgGen.Add(1)
	p.signal(p.cfgVector.Load(), isrConfig)
}

// Fail implements Host.
func (p *PCI) Fail(err error) {
	for {
		s := p.status.Load()
		if s&StatusDeviceNeedsReset != 0 {
			return
		}
		if p.status.CompareAndSwap(s, s|StatusDeviceNeedsReset) {
			break
		}
	}
	p.log.Error("virtio: device broken; it needs a reset by the driver", "device", p.dev.DeviceID(), "err", err)
	p.ConfigChanged()
}

func (p *PCI) signal(vector uint32, isr uint32) {
	if p.msix.Enabled() {
		if vector != NoVector {
			p.msix.Trigger(int(vector))
		}
		return
	}
	p.isr.Or(isr)
	if p.intx != nil {
		p.intx.Set(true)
	}
}

// Status is the device status register.
func (p *PCI) Status() uint8 { return uint8(p.status.Load()) }

func putLE(data []byte, v uint64) {
	for i := range data {
		data[i] = byte(v >> (8 * i))
	}
}

func getLE(data []byte) uint64 {
	var v uint64
	for i := range min(len(data), 8) {
		v |= uint64(data[i]) << (8 * i)
	}
	return v
}

// field returns the common-configuration field at off of n bytes: its
// offset and width. Each field is accessed at its own width, and 64-bit
// fields also as two 32-bit halves (as Linux writes them).
func field(off, n int) (base, width int, ok bool) {
	switch off {
	case ccDeviceFeatureSelect, ccDeviceFeature, ccDriverFeatureSelect, ccDriverFeature:
		return off, 4, n == 4
	case ccConfigMSIXVector, ccNumQueues, ccQueueSelect, ccQueueSize, ccQueueMSIXVector, ccQueueEnable, ccQueueNotifyOff, ccQueueNotifData, ccQueueReset:
		return off, 2, n == 2
	case ccDeviceStatus, ccConfigGeneration:
		return off, 1, n == 1
	case ccQueueDesc, ccQueueDriver, ccQueueDevice:
		return off, 8, n == 8 || n == 4
	case ccQueueDesc + 4, ccQueueDriver + 4, ccQueueDevice + 4:
		return off - 4, 8, n == 4
	}
	return 0, 0, false
}

func (p *PCI) selected() *queueState {
	if int(p.queueSel) < p.nq {
		return &p.queues[p.queueSel]
	}
	return nil
}

func (p *PCI) readCommon(off, n int) uint64 {
	base, _, ok := field(off, n)
	if !ok {
		return 0
	}
	q := p.selected()
	var v uint64
	switch base {
	case ccDeviceFeatureSelect:
		v = uint64(p.devSel)
	case ccDeviceFeature:
		if p.devSel < 2 {
			v = p.offered >> (32 * p.devSel) & 0xffffffff
		}
	case ccDriverFeatureSelect:
		v = uint64(p.drvSel)
	case ccDriverFeature:
		if p.drvSel < 2 {
			v = p.driver >> (32 * p.drvSel) & 0xffffffff
		}
	case ccConfigMSIXVector:
		v = uint64(p.cfgVector.Load())
	case ccNumQueues:
		v = uint64(p.nq)
	case ccDeviceStatus:
		v = uint64(p.status.Load() & 0xff)
	case ccConfigGeneration:
		v = uint64(p.cfgGen.Load() & 0xff)
	case ccQueueSelect:
		v = uint64(p.queueSel)
	case ccQueueNotifyOff:
		if q != nil {
			v = uint64(p.queueSel)
		}
	case ccQueueNotifData, ccQueueReset:
	default:
		if q == nil {
			return 0 // queue_size 0: no such queue
		}
		switch base {
		case ccQueueSize:
			v = uint64(q.size)
		case ccQueueMSIXVector:
			v = uint64(q.vector.Load())
		case ccQueueEnable:
			if q.enabled {
				v = 1
			}
		case ccQueueDesc:
			v = q.desc
		case ccQueueDriver:
			v = q.driver
		case ccQueueDevice:
			v = q.device
		}
	}
	if base != off { // upper half of a 64-bit field
		v >>= 32
	}
	return v
}

func (p *PCI) writeCommon(off int, data []byte) {
	base, width, ok := field(off, len(data))
	if !ok {
		return
	}
	v := getLE(data)
	q := p.selected()
	status := p.status.Load()
	// Features may change until FEATURES_OK, queue setup until DRIVER_OK
	// (and an enabled queue stays as it was enabled).
	queueLocked := q == nil || q.enabled || status&StatusDriverOK != 0
	switch base {
	case ccDeviceFeatureSelect:
		p.devSel = uint32(v)
	case ccDriverFeatureSelect:
		p.drvSel = uint32(v)
	case ccDriverFeature:
		if p.drvSel < 2 && status&StatusFeaturesOK == 0 {
			shift := 32 * p.drvSel
			p.driver = p.driver&^(0xffffffff<<shift) | v<<shift
		}
	case ccConfigMSIXVector:
		p.cfgVector.Store(uint32(p.vector(v)))
	case ccDeviceStatus:
		p.writeStatus(uint8(v))
	case ccQueueSelect:
		p.queueSel = uint16(v)
	case ccQueueSize:
		if !queueLocked && v != 0 && v <= uint64(q.max) && v&(v-1) == 0 {
			q.size = uint16(v)
		}
	case ccQueueMSIXVector:
		if q != nil {
			q.vector.Store(uint32(p.vector(v)))
		}
	case ccQueueEnable:
		if !queueLocked && v == 1 {
			p.enableQueue(q)
		}
	case ccQueueDesc, ccQueueDriver, ccQueueDevice:
		if queueLocked {
			return
		}
		reg := &q.desc
		switch base {
		case ccQueueDriver:
			reg = &q.driver
		case ccQueueDevice:
			reg = &q.device
		}
		switch {
		case width == 8 && len(data) == 8:
			*reg = v
		case base == off:
			*reg = *reg&^0xffffffff | v
		default:
			*reg = *reg&0xffffffff | v<<32
		}
	}
}

// vector is what a vector register takes: the vector, or NoVector for one
// the MSI-X table does not have (the driver reads it back to find out).
func (p *PCI) vector(v uint64) uint16 {
	if v >= uint64(p.msix.Config().Vectors) {
		return NoVector
	}
	return uint16(v)
}

// enableQueue checks the rings the driver placed before the queue counts
// as enabled: a queue outside guest memory marks the device broken.
func (p *PCI) enableQueue(q *queueState) {
	probe := Queue{Mem: p.mem, Size: q.size, Desc: q.desc, Avail: q.driver, Used: q.device}
	if err := probe.Validate(); err != nil {
		p.Fail(fmt.Errorf("queue %d: %w", p.queueSel, err))
		return
	}
	q.enabled = true
}

func (p *PCI) writeStatus(v uint8) {
	old := p.status.Load()
	if v == 0 {
		p.reset()
		return
	}
	if v&StatusFeaturesOK != 0 && old&StatusFeaturesOK == 0 {
		if err := p.checkFeatures(); err != nil {
			p.log.Warn("virtio: driver features refused", "device", p.dev.DeviceID(), "err", err)
			v &^= StatusFeaturesOK // the driver reads it back and gives up
		}
	}
	if v&StatusDriverOK != 0 && v&StatusFeaturesOK == 0 {
		v &^= StatusDriverOK
	}
	// Bits are only ever set (the driver must not clear one); NEEDS_RESET
	// is the device's.
	s := uint32(v) | old&StatusDeviceNeedsReset
	for !p.status.CompareAndSwap(old, s|old) {
		old = p.status.Load()
	}
	if s&StatusDriverOK != 0 && old&StatusDriverOK == 0 && s&StatusDeviceNeedsReset == 0 {
		p.activate()
	}
}

func (p *PCI) checkFeatures() error {
	switch {
	case p.driver&^p.offered != 0:
		return fmt.Errorf("features %#x were not offered (offered %#x)", p.driver&^p.offered, p.offered)
	case p.driver&FeatureVersion1 == 0:
		return errors.New("VIRTIO_F_VERSION_1 not accepted: popvmm has no legacy interface")
	}
	return nil
}

func (p *PCI) activate() {
	queues := make([]*Queue, p.nq)
	for i := range p.queues {
		q := &p.queues[i]
		if q.enabled {
			queues[i] = &Queue{Mem: p.mem, Size: q.size, Desc: q.desc, Avail: q.driver, Used: q.device,
				EventIdx: p.driver&FeatureEventIdx != 0}
		}
	}
	if err := p.dev.Activate(p, p.driver, queues); err != nil {
		p.Fail(fmt.Errorf("activate: %w", err))
		return
	}
	p.active = true
}

// reset is a driver's write of 0 to device status: the device stops, and
// every register returns to its initial value (MSI-X, a PCI function
// matter, stays as the guest set it).
func (p *PCI) reset() {
	p.dev.Reset()
	p.active = false
	p.devSel, p.drvSel, p.driver, p.queueSel = 0, 0, 0, 0
	for i := range p.queues {
		q := &p.queues[i]
		q.size, q.enabled, q.desc, q.driver, q.device = q.max, false, 0, 0, 0
		q.vector.Store(NoVector)
	}
	p.cfgVector.Store(NoVector)
	p.isr.Store(0)
	if p.intx != nil {
		p.intx.Set(false)
	}
	p.status.Store(0)
}

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

// virtioCap is a virtio_pci_cap (and virtio_pci_notify_cap) in BAR0.
type virtioCap struct {
	typ         uint8
	off, length uint32
	multiplier  uint32 // notify only
}

func (c *virtioCap) CapID() uint8 { return pci.CapVendor }
func (c *virtioCap) CapLen() int {
	if c.typ == capNotify {
		return 20
	}
	return 16
}

func (c *virtioCap) ReadCap(off int, data []byte) {
	var b [20]byte
	b[2] = byte(c.CapLen())
	b[3] = c.typ
	b[4] = BARIndex
	binary.LittleEndian.PutUint32(b[8:], c.off)
	binary.LittleEndian.PutUint32(b[12:], c.length)
	binary.LittleEndian.PutUint32(b[16:], c.multiplier)
	copyCap(b[:c.CapLen()], off, data)
}

func (c *virtioCap) WriteCap(int, []byte) {}

func copyCap(b []byte, off int, data []byte) {
	for i := range data {
		data[i] = 0
		if off+i < len(b) {
			data[i] = b[off+i]
		}
	}
}

// pciCfgCap is VIRTIO_PCI_CAP_PCI_CFG: a window through configuration
// space onto BAR0, for drivers that cannot map it. The driver writes bar,
// offset and length, then reads or writes pci_cfg_data.
type pciCfgCap struct {
	p      *PCI
	mu     sync.Mutex
	bar    uint8
	off    uint32
	length uint32
	data   [4]byte
}

func (c *pciCfgCap) CapID() uint8 { return pci.CapVendor }
func (c *pciCfgCap) CapLen() int  { return 20 }

func (c *pciCfgCap) ReadCap(off int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if off >= 16 {
		c.access(false)
	}
	var b [20]byte
	b[2], b[3], b[4] = 20, capPCI, c.bar
	binary.LittleEndian.PutUint32(b[8:], c.off)
	binary.LittleEndian.PutUint32(b[12:], c.length)
	copy(b[16:], c.data[:])
	copyCap(b[:], off, data)
}

func (c *pciCfgCap) WriteCap(off int, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b [20]byte
	b[4] = c.bar
	binary.LittleEndian.PutUint32(b[8:], c.off)
	binary.LittleEndian.PutUint32(b[12:], c.length)
	copy(b[16:], c.data[:])
	for i, v := range data {
		if off+i < len(b) {
			b[off+i] = v
		}
	}
	c.bar = b[4]
	c.off = binary.LittleEndian.Uint32(b[8:])
	c.length = binary.LittleEndian.Uint32(b[12:])
	copy(c.data[:], b[16:])
	if off+len(data) > 16 {
		c.access(true)
	}
}

// access moves pci_cfg_data to or from BAR0 at the window's offset: the
// length 1, 2 or 4 and the offset aligned to it, else nothing.
func (c *pciCfgCap) access(write bool) {
	n := c.length
	if c.bar != BARIndex || (n != 1 && n != 2 && n != 4) || c.off%n != 0 || uint64(c.off)+uint64(n) > BARSize {
		return
	}
	if write {
		c.p.Write(uint64(c.off), c.data[:n])
	} else {
		c.p.Read(uint64(c.off), c.data[:n])
	}
}
