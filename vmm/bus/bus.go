// Package bus dispatches guest port I/O and MMIO accesses to device models.
// Devices see offsets into their own range, never absolute addresses; the
// bus rejects overlapping ranges; an access nobody claims reads as all ones
// (as on real hardware) and writes go nowhere. Device packages (vtty, vnet,
// ipi) depend on this package, never on the VMM that owns the bus.
package bus

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
)

// Device is a port-I/O or MMIO device model. Read fills data (1, 2, 4 or 8
// bytes) from the register at off; Write stores it. Both run on a vCPU
// thread and must not block.
type Device interface {
	Read(off uint64, data []byte)
	Write(off uint64, data []byte)
}

// IRQ is an interrupt line a device raises and lowers (level-triggered) or
// pulses (edge); the VMM backs it with KVM_IRQ_LINE or an irqfd.
type IRQ interface {
	Set(level bool)
}

// ErrOverlap is returned by Insert for a range that overlaps another.
var ErrOverlap = errors.New("overlaps an existing device range")

// Bus is one address space: port I/O or MMIO. Lookups may run on several
// vCPU threads while devices are inserted or removed.
//
// Lock order: an access holds the bus's read lock while the device runs,
// so that Remove (write lock) waits for accesses in flight. A device must
// therefore never Insert into or Remove from the bus it is being accessed
// through (another bus is fine: the PIO bus before the MMIO bus).
type Bus struct {
	name string
	log  *slog.Logger

	mu      sync.RWMutex
	entries []entry // sorted by base, disjoint
}

type entry struct {
	base, size uint64
	name       string
	dev        Device
}

// New makes an empty bus; name ("pio", "mmio") appears in logs.
func New(name string, log *slog.Logger) *Bus {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Bus{name: name, log: log}
}

// Insert maps dev at [base, base+size).
func (b *Bus) Insert(dev Device, name string, base, size uint64) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("%s bus: %s at %#x size %#x: empty or wrapping range", b.name, name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	i, _ := slices.BinarySearchFunc(b.entries, base, func(e entry, t uint64) int { return cmp.Compare(e.base, t) })
	if i > 0 && b.entries[i-1].base+b.entries[i-1].size > base {
		p := b.entries[i-1]
		return fmt.Errorf("%s bus: %s at %#x size %#x %w (%s at %#x size %#x)", b.name, name, base, size, ErrOverlap, p.name, p.base, p.size)
	}
	if i < len(b.entries) && base+size > b.entries[i].base {
		n := b.entries[i]
		return fmt.Errorf("%s bus: %s at %#x size %#x %w (%s at %#x size %#x)", b.name, name, base, size, ErrOverlap, n.name, n.base, n.size)
	}
	b.entries = slices.Insert(b.entries, i, entry{base: base, size: size, name: name, dev: dev})
	return nil
}

// Remove unmaps the device at base; it reports whether there was one. It
// returns only after every access to any device of this bus that was in
// flight has finished, so a removed device is never called again.
func (b *Bus) Remove(base uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i, e := range b.entries {
		if e.base == base {
			b.entries = slices.Delete(b.entries, i, i+1)
			return true
		}
	}
	return false
}

// Move re-maps dev, mapped at from (or nowhere: mapped false), to
// [to, to+size), as one step under the bus's write lock: either dev ends
// at to, or — when the new range is empty, wraps or overlaps another
// device's (ErrOverlap) — nothing changes. It never removes or displaces
// another device's range: the entry at from is taken only when it is
// dev's. This is how a guest's BAR move is applied (PCI BARs can be
// programmed anywhere, onto another device's BAR included).
func (b *Bus) Move(dev Device, name string, from uint64, mapped bool, to, size uint64) error {
	if size == 0 || to+size < to {
		return fmt.Errorf("%s bus: %s to %#x size %#x: empty or wrapping range", b.name, name, to, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	old := -1
	if mapped {
		for i, e := range b.entries {
			if e.base == from && e.dev == dev {
				old = i
				break
			}
		}
	}
	for i, e := range b.entries {
		if i != old && e.base < to+size && to < e.base+e.size {
			return fmt.Errorf("%s bus: %s to %#x size %#x %w (%s at %#x size %#x)", b.name, name, to, size, ErrOverlap, e.name, e.base, e.size)
		}
	}
	if old >= 0 {
		b.entries = slices.Delete(b.entries, old, old+1)
	}
	i, _ := slices.BinarySearchFunc(b.entries, to, func(e entry, t uint64) int { return cmp.Compare(e.base, t) })
	b.entries = slices.Insert(b.entries, i, entry{base: to, size: size, name: name, dev: dev})
	return nil
}

// find returns the device whose range holds the whole access; the caller
// holds b.mu (read).
func (b *Bus) find(addr uint64, n int) (entry, bool) {
	i, found := slices.BinarySearchFunc(b.entries, addr, func(e entry, t uint64) int {
		switch {
		case e.base+e.size <= t:
			return -1
		case e.base > t:
			return 1
		}
		return 0
	})
	if !found {
		return entry{}, false
	}
	e := b.entries[i]
	if addr+uint64(n) > e.base+e.size || addr+uint64(n) < addr {
		return entry{}, false // straddles the end of the device
	}
	return e, true
}

// Read performs a guest read of len(data) bytes at addr. It reports whether
// a device claimed it; unclaimed reads return all ones.
func (b *Bus) Read(addr uint64, data []byte) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.find(addr, len(data))
	if !ok {
		for i := range data {
			data[i] = 0xff
		}
		b.log.Debug("unclaimed read", "bus", b.name, "addr", fmt.Sprintf("%#x", addr), "len", len(data))
		return false
	}
	e.dev.Read(addr-e.base, data)
	return true
}

// Write performs a guest write at addr and reports whether a device claimed it.
func (b *Bus) Write(addr uint64, data []byte) bool {
	b.mu.RLock()
	defer b.mu.RUnlock()
	e, ok := b.find(addr, len(data))
	if !ok {
		b.log.Debug("unclaimed write", "bus", b.name, "addr", fmt.Sprintf("%#x", addr), "len", len(data))
		return false
	}
	e.dev.Write(addr-e.base, data)
	return true
}
