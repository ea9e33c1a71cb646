package vmm

import (
	"fmt"
	"maps"
	"slices"

	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/kvm"
)

// IRQLine is a GSI of a VM's in-kernel irqchip as a bus.IRQ: Set drives
// the line with KVM_IRQ_LINE. GSIs 0-15 reach the PICs and IOAPIC pins
// 0-15 (the ISA IRQs as the MP table routes them: COM1 is 4), 16-23 the
// IOAPIC's other pins. It may be called from any goroutine; once the VM
// is closed it does nothing.
type IRQLine struct {
	v   *VM
	gsi uint32
}

var _ bus.IRQ = (*IRQLine)(nil)

// IRQLine returns the interrupt line for gsi.
func (v *VM) IRQLine(gsi uint32) *IRQLine { return &IRQLine{v: v, gsi: gsi} }

// Set implements bus.IRQ.
func (l *IRQLine) Set(level bool) {
	l.v.kmu.RLock()
	defer l.v.kmu.RUnlock()
	if l.v.kvm == nil {
		return
	}
	if err := l.v.kvm.IRQLine(l.gsi, level); err != nil {
		l.v.log.Error("irq line", "gsi", l.gsi, "err", err)
	}
}

// ioapicPins is how many pins KVM's in-kernel IOAPIC has.
const ioapicPins = 24

// defaultRoutes is KVM's default GSI routing (what KVM_CREATE_IRQCHIP
// installs): GSI n to IOAPIC pin n for n < 24, and GSIs 0-15 also to the
// PIC pair. Setting any route replaces the table, so it is rebuilt from
// these plus the MSI routes.
func defaultRoutes() []kvm.Route {
	var rs []kvm.Route
	for gsi := range uint32(ioapicPins) {
		rs = append(rs, kvm.Route{GSI: gsi, Chip: kvm.IRQChipIOAPIC, Pin: gsi})
		if gsi < 16 {
			chip := uint32(kvm.IRQChipPICMaster)
			if gsi >= 8 {
				chip = kvm.IRQChipPICSlave
			}
			rs = append(rs, kvm.Route{GSI: gsi, Chip: chip, Pin: gsi % 8})
		}
	}
	return rs
}

// routes is the full table: the defaults plus MSI routes by GSI.
func (v *VM) routes() []kvm.Route {
	rs := defaultRoutes()
	for _, g := range slices.Sorted(maps.Keys(v.msiRoutes)) {
		rs = append(rs, v.msiRoutes[g])
	}
	return rs
}

// SetMSIRoute routes gsi (24 or above) to an MSI with address addr and
// data, for an irqfd on that GSI to raise (a PCI device's MSI doorbell).
func (v *VM) SetMSIRoute(gsi uint32, addr uint64, data uint32) error {
	if gsi < ioapicPins {
		return fmt.Errorf("vm %q: MSI route on GSI %d, which belongs to the IOAPIC", v.cfg.Name, gsi)
	}
	return v.withKVM(func(kv *kvm.VM) error {
		v.msiRoutes[gsi] = kvm.Route{GSI: gsi, MSI: true, Addr: addr, Data: data}
		if err := kv.SetGSIRouting(v.routes()); err != nil {
			delete(v.msiRoutes, gsi)
			return err
		}
		return nil
	})
}

// IRQFD makes a write to eventfd fd raise gsi inside KVM, with no popvmm
// thread on the path. It survives reboots.
func (v *VM) IRQFD(fd int, gsi uint32) error {
	return v.withKVM(func(kv *kvm.VM) error {
		if err := kv.IRQFD(fd, gsi); err != nil {
			return err
		}
		v.irqfds[[2]int{fd, int(gsi)}] = true
		return nil
	})
}

// RemoveIRQFD undoes IRQFD.
func (v *VM) RemoveIRQFD(fd int, gsi uint32) error {
	return v.withKVM(func(kv *kvm.VM) error {
		delete(v.irqfds, [2]int{fd, int(gsi)})
		return kv.RemoveIRQFD(fd, gsi)
	})
}

// IOEventFD makes guest writes described by e signal its eventfd inside
// KVM, without an exit. It survives reboots.
func (v *VM) IOEventFD(e kvm.IOEvent) error {
	return v.withKVM(func(kv *kvm.VM) error {
		if err := kv.IOEventFD(e); err != nil {
			return err
		}
		v.ioevents = append(v.ioevents, e)
		return nil
	})
}

// RemoveIOEventFD undoes IOEventFD for e as registered.
func (v *VM) RemoveIOEventFD(e kvm.IOEvent) error {
	return v.withKVM(func(kv *kvm.VM) error {
		v.ioevents = slices.DeleteFunc(v.ioevents, func(x kvm.IOEvent) bool { return x == e })
		return kv.RemoveIOEventFD(e)
	})
}

// withKVM runs f with the current KVM VM, holding the VM's lock so that
// a reboot sees what f recorded.
func (v *VM) withKVM(f func(*kvm.VM) error) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.kmu.RLock()
	defer v.kmu.RUnlock()
	if v.kvm == nil || v.closed {
		return fmt.Errorf("vm %q is closed", v.cfg.Name)
	}
	if err := f(v.kvm); err != nil {
		return fmt.Errorf("vm %q: %w", v.cfg.Name, err)
	}
	return nil
}
