package vmm

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/boot"
)

// Format is the kind of kernel image a VM boots.
type Format int

// Formats.
const (
	FormatBzImage Format = iota // Linux bzImage, 64-bit boot protocol
	FormatPVH                   // ELF vmlinux with a PVH entry note
	FormatFlat                  // flat binary at boot.FlatAddr, 32-bit protected mode (test guests)
)

func (f Format) String() string {
	switch f {
	case FormatBzImage:
		return "bzImage"
	case FormatPVH:
		return "pvh"
	case FormatFlat:
		return "flat"
	}
	return fmt.Sprintf("format(%d)", int(f))
}

// Boot is what a VM boots: the image, its format, and for Linux the
// initrd and command line.
type Boot struct {
	Format  Format
	Image   []byte
	Initrd  []byte
	Cmdline string
}

// Passthrough maps Size bytes of a host file (or device) from Offset at
// guest-physical GPA; the layout must hold a passthrough region there.
type Passthrough struct {
	Path     string
	Offset   uint64
	Size     uint64
	GPA      uint64
	ReadOnly bool // a read-only KVM slot: guest writes exit as MMIO and are dropped
}

// RestartPolicy says what a guest's reset request does.
type RestartPolicy int

// Restart policies.
const (
	// RestartNever turns a reset into state crashed ("reset requested by
	// the guest"): Linux resets when it panics with panic=N, so a reset
	// that nobody asked for is treated as a crash and the console kept.
	RestartNever RestartPolicy = iota
	// RestartAlways reboots the kernel in the same VM: fresh vCPUs and
	// irqchip, RAM cleared, the image loaded again; devices keep their
	// state.
	RestartAlways
)

// Config is one VM.
type Config struct {
	// Name is the kernel's name: thread names, logs, status.
	Name string
	// Layout is the kernel's guest-physical map (memmap.New).
	Layout *memmap.Layout
	// CPUs are the host cores: vCPU i runs only on CPUs[i].
	CPUs []int
	// HugePageSize backs RAM with hugetlbfs pages of this size (2 MiB or
	// 1 GiB); 0 uses ordinary pages.
	HugePageSize uint64
	// NUMANode binds RAM to a host NUMA node; -1 leaves it unbound.
	NUMANode int
	// Mlock locks RAM in host memory (and so populates it).
	Mlock bool
	// Populate faults all of RAM in at creation (always done for huge
	// pages, so that a shortage fails here rather than in the guest).
	Populate bool
	// Passthrough regions, each matching one of Layout.Passthrough.
	Passthrough []Passthrough
	// Boot is the kernel.
	Boot Boot
	// Restart is the reset policy.
	Restart RestartPolicy
	// Log receives the VM's events (nil: discarded).
	Log *slog.Logger
	// ConsoleTail returns the guest console's recent output (e.g.
	// vtty.Console.Replay); a crash's reason quotes its last line, so that
	// a triple fault says where the boot was. It is called once, from the
	// crashing vCPU's thread, and must not block. nil: not quoted.
	ConsoleTail func() []byte
}

func (c *Config) check() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("empty name"))
	}
	if c.Layout == nil || len(c.Layout.RAM) == 0 {
		errs = append(errs, errors.New("no memory layout"))
	}
	if len(c.CPUs) == 0 || len(c.CPUs) > boot.MaxCPUs {
		errs = append(errs, fmt.Errorf("%d vCPUs: want 1-%d", len(c.CPUs), boot.MaxCPUs))
	}
	for i, cpu := range c.CPUs {
		if cpu < 0 {
			errs = append(errs, fmt.Errorf("vCPU %d: host core %d", i, cpu))
		}
	}
	switch c.HugePageSize {
	case 0, 2 * memmap.MiB, memmap.GiB:
	default:
		errs = append(errs, fmt.Errorf("huge page size %s: want 2M or 1G", memmap.FormatSize(c.HugePageSize)))
	}
	if c.Layout != nil && c.HugePageSize != 0 {
		for _, r := range c.Layout.RAM {
			if r.Start%c.HugePageSize != 0 || r.Size%c.HugePageSize != 0 {
				errs = append(errs, fmt.Errorf("RAM %v is not aligned to %s pages", r, memmap.FormatSize(c.HugePageSize)))
			}
		}
	}
	if len(c.Boot.Image) == 0 {
		errs = append(errs, errors.New("no kernel image"))
	}
	if c.Layout != nil {
		if _, err := planSlots(c.Layout, c.Passthrough); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// hugeFlags are memfd_create's flags for huge pages of size: MFD_HUGETLB
// with log2(size) in bits 26-31.
func hugeFlags(size uint64) int {
	const mfdHugetlb, mfdHugeShift = 0x4, 26
	if size == 0 {
		return 0
	}
	return mfdHugetlb | bits.TrailingZeros64(size)<<mfdHugeShift
}
