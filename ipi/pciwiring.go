package ipi

import (
	"errors"
	"fmt"

	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/pci"
)

// Wiring is how a window device reaches KVM in its VM; the VMM implements
// it. Every method may run on a vCPU thread (a guest moving a BAR, or
// programming MSI-X) and must not block for long; an error is counted and
// logged by the device, which keeps what was wired before and tries again
// at the next change.
type Wiring interface {
	// MapMMIO puts d on the VM's MMIO bus at [gpa, gpa+size) for BAR bar
	// (RegsBAR, MSIXBAR, or WindowBAR for the guard that takes guest
	// writes to read-only window slots); UnmapMMIO takes it off again.
	MapMMIO(bar int, gpa, size uint64, d bus.Device) error
	UnmapMMIO(bar int, gpa uint64)
	// MapWindow maps the window at gpa as slots: KVM memory slots over
	// the host's mapping of the window memfd, slot s at gpa+s.Offset,
	// read-only ones with KVM_MEM_READONLY. UnmapWindow deletes them.
	MapWindow(gpa uint64, slots []Slot) error
	UnmapWindow(gpa uint64)
	// AddIoeventfd registers e (KVM_IOEVENTFD, MMIO, datamatch) on
	// eventfd fd; RemoveIoeventfd deassigns it, given the same fd.
	AddIoeventfd(e Ioeventfd, fd int) error
	RemoveIoeventfd(e Ioeventfd, fd int) error
	// SetIrqfd installs irqfd f on eventfd fd as pci.MSIRouter.SetRoute
	// describes: unmasked, route a GSI of the VMM's to r's message and
	// assign fd as its irqfd; masked, deassign it (the eventfd counts on,
	// and KVM injects the count when it is assigned again).
	SetIrqfd(f Irqfd, fd int, r pci.MSIRoute) error
}

// Wire maps the BARs at their current addresses, registers the ioeventfds
// for every bell and follows the set of peers from now on. The VMM calls it
// once, after adding the device to the PCI bus and before the vCPUs run;
// an error means the window is not (fully) wired, and what was wired stays
// (Close removes it).
func (d *Device) Wire() error {
	d.wireMu.Lock()
	if d.wired || d.closed {
		d.wireMu.Unlock()
		return errors.New("window device: wired twice or closed")
	}
	d.wired = true
	before := d.stats.wiringErrors.Load()
	for i := range d.bars {
		if err := d.mapBARLocked(i); err != nil {
			d.wiringError(fmt.Sprintf("BAR%d at %#x", i, d.bars[i]), err)
		}
	}
	d.syncLocked()
	failed := d.stats.wiringErrors.Load() != before
	d.wireMu.Unlock()
	d.unsub = d.cfg.Bells.subscribe(d.sync)
	// A change between the first sync and the subscription.
	d.sync()
	if failed {
		return fmt.Errorf("window device of kernel %d: wiring failed (see the log)", d.cfg.Peer)
	}
	return nil
}

// BARMoved implements pci.Function: the guest moved BAR i; its mapping and
// (for BAR0) the ioeventfds follow. A move that cannot be mapped (onto
// another device's range, past 2^64) is refused: the BAR stays mapped
// where it was, and pci makes its register read that address again.
func (d *Device) BARMoved(i int, addr uint64) error {
	if i < 0 || i >= len(d.bars) {
		return fmt.Errorf("window device: no BAR%d", i)
	}
	d.wireMu.Lock()
	defer d.wireMu.Unlock()
	prev := d.bars[i]
	d.bars[i] = addr
	if !d.wired || d.closed {
		return nil
	}
	err := d.mapBARLocked(i)
	if err != nil {
		// Refused (onto another device's range, or past 2^64): back
		// where it was, and the register reads that address again.
		d.wiringError(fmt.Sprintf("guest moved BAR%d to %#x: refused", i, addr), err)
		d.bars[i] = prev
		d.mapBARLocked(i)
	}
	if i == RegsBAR {
		d.syncLocked()
	}
	return err
}

func (d *Device) barSize(i int) uint64 {
	switch i {
	case RegsBAR:
		return RegsSize
	case MSIXBAR:
		return MSIXBARSize
	}
	return d.cfg.WindowSize
}

// mapBARLocked moves BAR i's mapping to its address. A BAR whose range
// would pass 2^64 stays unmapped until the guest moves it again.
func (d *Device) mapBARLocked(i int) error {
	w := d.cfg.Wiring
	if d.mapped[i] {
		if d.at[i] == d.bars[i] {
			return nil
		}
		d.unmapBARLocked(i)
	}
	addr, size := d.bars[i], d.barSize(i)
	if addr+size < addr {
		return fmt.Errorf("window device: BAR%d at %#x+%#x runs past 2^64", i, addr, size)
	}
	var dev bus.Device = d
	switch i {
	case MSIXBAR:
		dev = d.msix
	case WindowBAR:
		dev = refusedWrites{d}
	}
	if err := w.MapMMIO(i, addr, size, dev); err != nil {
		return fmt.Errorf("window device: BAR%d at %#x: %w", i, addr, err)
	}
	if i == WindowBAR {
		if err := w.MapWindow(addr, d.cfg.Slots); err != nil {
			w.UnmapMMIO(i, addr)
			return fmt.Errorf("window device: window at %#x: %w", addr, err)
		}
	}
	d.mapped[i], d.at[i] = true, addr
	return nil
}

// sync brings the ioeventfds in line with the peers (a subscriber of the
// doorbells).
func (d *Device) sync() {
	d.wireMu.Lock()
	defer d.wireMu.Unlock()
	if d.wired && !d.closed {
		d.syncLocked()
	}
}

// syncLocked registers the ioeventfds the plan has and the VM lacks, after
// removing the ones it no longer has (a host peer gone, BAR0 moved, an id
// now held by a new peer with new eventfds): removals first, so a datamatch
// taken over by a new eventfd never collides with the old one.
func (d *Device) syncLocked() {
	var want []Ioeventfd
	if regs := d.bars[RegsBAR]; regs+RegsSize > regs {
		want = PlanIoeventfds(d.cfg.Peer, regs, d.cfg.Bells.Peers(), d.vectors)
	}
	snap := d.cfg.Bells.snap.Load()
	keep := make(map[Ioeventfd]bool, len(want))
	for _, e := range want {
		keep[e] = true
	}
	for e, fd := range d.applied {
		if keep[e] && snap.get(e.Bell) == fd {
			continue
		}
		if err := d.cfg.Wiring.RemoveIoeventfd(e, fd.fd); err != nil {
			d.wiringError(fmt.Sprintf("remove ioeventfd %#x=%#x", e.GPA, e.Data), err)
		}
		fd.release()
		delete(d.applied, e)
	}
	for _, e := range want {
		if _, ok := d.applied[e]; ok {
			continue
		}
		fd := d.cfg.Bells.hold(e.Bell)
		if fd == nil {
			continue // gone since Peers: the next sync removes it from want
		}
		if err := d.cfg.Wiring.AddIoeventfd(e, fd.fd); err != nil {
			d.wiringError(fmt.Sprintf("ioeventfd %#x=%#x", e.GPA, e.Data), err)
			fd.release()
			continue
		}
		d.applied[e] = fd
	}
}

func (d *Device) wiringError(what string, err error) {
	d.stats.wiringErrors.Add(1)
	d.log.Warn("window device wiring", "what", what, "err", err)
}

// Ioeventfds lists the ioeventfds registered now.
func (d *Device) Ioeventfds() []Ioeventfd {
	d.wireMu.Lock()
	defer d.wireMu.Unlock()
	out := make([]Ioeventfd, 0, len(d.applied))
	for e := range d.applied {
		out = append(out, e)
	}
	return out
}

// unwireLocked removes every ioeventfd and BAR mapping (through Wiring;
// errors are ignored, as the VM may be gone already).
func (d *Device) unwireLocked() {
	w := d.cfg.Wiring
	for e, fd := range d.applied {
		w.RemoveIoeventfd(e, fd.fd)
		fd.release()
		delete(d.applied, e)
	}
	for i := range d.mapped {
		if d.mapped[i] {
			d.unmapBARLocked(i)
		}
	}
}

// unmapBARLocked takes mapped BAR i off the bus (and the window's slots
// out of the VM) where it is mapped now.
func (d *Device) unmapBARLocked(i int) {
	d.cfg.Wiring.UnmapMMIO(i, d.at[i])
	if i == WindowBAR {
		d.cfg.Wiring.UnmapWindow(d.at[i])
	}
	d.mapped[i] = false
}

// refusedWrites takes the guest writes that exit on the window BAR: writes
// to read-only slots (KVM_MEM_READONLY makes them MMIO exits), counted and
// dropped. Reads only come here when the window is not mapped: all ones.
type refusedWrites struct{ d *Device }

func (r refusedWrites) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
}

func (r refusedWrites) Write(off uint64, data []byte) {
	n := r.d.stats.refusedWrites.Add(1)
	r.d.log.Warn("window device: write to a read-only part of the window; refused", "offset", fmt.Sprintf("%#x", off),
		"len", len(data), "refused_writes", n)
}
