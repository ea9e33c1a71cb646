package virtio

import (
	"errors"
	"fmt"
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
