package virtio

// ISR bits (virtio 1.2, 4.1.4.5).
const (
	isrQueue  = 1
	isrConfig = 2
)

// NotifyAddr is the guest-physical address and length of queue's notify
// register: register a KVM ioeventfd there (length 2, the driver writes
// the 16-bit queue index, or 0 to match any length; no datamatch) whose
// goroutine calls Kick(queue).
func (p *PCI) NotifyAddr(queue int) (addr uint64, length int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bar + notifyOff + uint64(queue)*NotifyMultiplier, 2
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
