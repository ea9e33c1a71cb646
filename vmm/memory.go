package vmm

import (
	"errors"
	"fmt"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/kvm"
	"golang.org/x/sys/unix"
)

// Addresses KVM needs for Intel's real-mode emulation: the identity-map
// page and three TSS pages, in the reserved top of the 32-bit hole (below
// 4 GiB, clear of the IOAPIC and LAPIC pages), as QEMU places them.
const (
	identityMapAddr = 0xfeffc000
	tssAddr         = 0xfeffd000
)

// slotPlan is one KVM memory slot: Size bytes at GPA, backed by RAM from
// offset Off (Passthrough < 0) or by passthrough region Passthrough.
type slotPlan struct {
	Slot        uint32
	GPA, Size   uint64
	Off         uint64
	Passthrough int
	ReadOnly    bool
}

// planSlots lays out the memory slots for l: RAM around the hole (one slot
// per layout RAM range, consecutive offsets into one backing file), then
// each passthrough region, which must be exactly one of l's.
func planSlots(l *memmap.Layout, pt []Passthrough) ([]slotPlan, error) {
	var plan []slotPlan
	var off uint64
	for _, r := range l.RAM {
		plan = append(plan, slotPlan{Slot: uint32(len(plan)), GPA: r.Start, Size: r.Size, Off: off, Passthrough: -1})
		off += r.Size
	}
	if len(pt) != len(l.Passthrough) {
		return nil, fmt.Errorf("%d passthrough regions for a layout with %d", len(pt), len(l.Passthrough))
	}
	for i, p := range pt {
		lr := l.Passthrough[i]
		if p.GPA != lr.Start || p.Size != lr.Size {
			return nil, fmt.Errorf("passthrough[%d] at %#x size %#x: the layout has %v", i, p.GPA, p.Size, lr.Range)
		}
		if p.Offset%memmap.PageSize != 0 {
			return nil, fmt.Errorf("passthrough[%d]: file offset %#x is not page aligned", i, p.Offset)
		}
		plan = append(plan, slotPlan{Slot: uint32(len(plan)), GPA: p.GPA, Size: p.Size, Passthrough: i, ReadOnly: p.ReadOnly})
	}
	return plan, nil
}

// guestRAM is a VM's host memory: RAM on one memfd, passthrough regions
// mapped from their files.
type guestRAM struct {
	fd   int
	ram  []byte
	pt   [][]byte
	plan []slotPlan
	mem  *guestmem.Memory
}

// ramBytes sums the layout's RAM.
func ramBytes(l *memmap.Layout) uint64 {
	var n uint64
	for _, r := range l.RAM {
		n += r.Size
	}
	return n
}

// allocRAM creates and maps the VM's memory per cfg. On error nothing is
// left behind.
func allocRAM(cfg *Config) (_ *guestRAM, err error) {
	plan, err := planSlots(cfg.Layout, cfg.Passthrough)
	if err != nil {
		return nil, err
	}
	g := &guestRAM{fd: -1, plan: plan}
	defer func() {
		if err != nil {
			g.close()
		}
	}()
	size := ramBytes(cfg.Layout)
	g.fd, err = unix.MemfdCreate("popvmm/"+cfg.Name, unix.MFD_CLOEXEC|hugeFlags(cfg.HugePageSize))
	if err != nil {
		return nil, fmt.Errorf("memfd for %s of RAM: %w", memmap.FormatSize(size), err)
	}
	if err := unix.Ftruncate(g.fd, int64(size)); err != nil {
		return nil, fmt.Errorf("size RAM memfd to %s: %w", memmap.FormatSize(size), err)
	}
	g.ram, err = unix.Mmap(g.fd, 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s of RAM: %w", memmap.FormatSize(size), err)
	}
	if cfg.NUMANode >= 0 {
		if err := bindNode(g.ram, cfg.NUMANode); err != nil {
			return nil, fmt.Errorf("bind RAM to NUMA node %d: %w", cfg.NUMANode, err)
		}
	}
	switch {
	case cfg.Mlock:
		if err := unix.Mlock(g.ram); err != nil {
			return nil, fmt.Errorf("mlock %s of RAM: %w", memmap.FormatSize(size), err)
		}
	case cfg.Populate || cfg.HugePageSize != 0:
		if err := unix.Madvise(g.ram, unix.MADV_POPULATE_WRITE); err != nil {
			return nil, fmt.Errorf("populate %s of RAM: %w", memmap.FormatSize(size), err)
		}
	}
	regions := []guestmem.Region{}
	for _, s := range plan {
		if s.Passthrough < 0 {
			regions = append(regions, guestmem.Region{GPA: s.GPA, Mem: g.ram[s.Off : s.Off+s.Size : s.Off+s.Size]})
			continue
		}
		b, err := mapPassthrough(cfg.Passthrough[s.Passthrough])
		if err != nil {
			return nil, fmt.Errorf("passthrough[%d]: %w", s.Passthrough, err)
		}
		g.pt = append(g.pt, b)
		regions = append(regions, guestmem.Region{GPA: s.GPA, Mem: b, ReadOnly: s.ReadOnly})
	}
	if g.mem, err = guestmem.New(regions...); err != nil {
		return nil, err
	}
	return g, nil
}

// mapPassthrough maps passthrough region p of its file. cluster's
// probeMap tries the same mapping when the config is checked: keep the
// two alike.
func mapPassthrough(p Passthrough) ([]byte, error) {
	flags, prot := unix.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	if p.ReadOnly {
		flags, prot = unix.O_RDONLY, unix.PROT_READ
	}
	fd, err := unix.Open(p.Path, flags|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", p.Path, err)
	}
	defer unix.Close(fd)
	b, err := unix.Mmap(fd, int64(p.Offset), int(p.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map %s at offset %#x: %w", p.Path, p.Offset, err)
	}
	return b, nil
}

// slots registers every memory slot with vm.
func (g *guestRAM) slots(vm *kvm.VM) error {
	ptIndex := 0
	for _, s := range g.plan {
		var b []byte
		var flags uint32
		if s.Passthrough < 0 {
			b = g.ram[s.Off : s.Off+s.Size]
		} else {
			b = g.pt[ptIndex]
			ptIndex++
			if s.ReadOnly {
				flags |= kvm.MemReadOnly
			}
		}
		if err := vm.SetMemory(s.Slot, flags, s.GPA, b); err != nil {
			return err
		}
	}
	return nil
}

// clear returns RAM to zeros (a reboot) by punching out the memfd's pages.
func (g *guestRAM) clear() error {
	err := unix.Fallocate(g.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, int64(len(g.ram)))
	if err != nil {
		clear(g.ram)
	}
	return nil
}

// close unmaps everything and closes the memfd; calling it twice is harmless.
func (g *guestRAM) close() error {
	var errs []error
	for _, b := range g.pt {
		errs = append(errs, unix.Munmap(b))
	}
	g.pt = nil
	if g.ram != nil {
		errs = append(errs, unix.Munmap(g.ram))
		g.ram = nil
	}
	if g.fd >= 0 {
		errs = append(errs, unix.Close(g.fd))
		g.fd = -1
	}
	return errors.Join(errs...)
}
