package boot

import (
	"encoding/binary"
	"fmt"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// PVH boot (xen/include/public/arch-x86/hvm/start_info.h).
const (
	pvhMagic          = 0x336ec578
	pvhVersion        = 1
	startInfoSize     = 56
	memmapEntrySize   = 24
	moduleEntrySize   = 32
	pvhModuleAddr     = memmap.PVHInfoAddr + 0x80 // one module entry after start_info
	maxPVHMemmapEntry = (memmap.ZeroPageAddr - memmap.PVHMemmapAddr) / memmapEntrySize
)

// LoadPVH loads an ELF vmlinux with a PVH entry note: its PT_LOAD segments
// at their physical addresses, the initrd as a module, the command line,
// and hvm_start_info with the memory map. The vCPU starts in 32-bit
// protected mode, paging off, EBX pointing at hvm_start_info. The image is
// parsed and checked by ParseImage, as validation does; one that is not an
// ELF kernel with a PVH note, whose segments are not all in the file, or
// whose segments do not fit l (PVHPlacement, Placement.Fits: over a boot
// structure, below 1 MiB, beyond RAM) is refused before anything is written.
func LoadPVH(mem *guestmem.Memory, l *memmap.Layout, image []byte, cmdline string, initrd []byte) (Entry, error) {
	img, err := ParseImageBytes(image)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrKernel, err)
	}
	if img.Format != FormatPVH {
		return Entry{}, fmt.Errorf("%w: not an ELF kernel but a %s", ErrKernel, img.Format)
	}
	return img.loadPVH(mem, l, image, cmdline, initrd)
}

func (img *Image) loadPVH(mem *guestmem.Memory, l *memmap.Layout, image []byte, cmdline string, initrd []byte) (Entry, error) {
	pl := img.Placement
	initrdAddr, err := img.plan(l, cmdline, initrd)
	if err != nil {
		return Entry{}, err
	}
	for _, sg := range img.segments {
		seg, err := mem.Slice(sg.paddr, sg.memsz)
		if err != nil {
			return Entry{}, fmt.Errorf("kernel segment at %#x: %w", sg.paddr, err)
		}
		copy(seg, image[sg.off:sg.off+sg.filesz])
		clear(seg[sg.filesz:])
	}

	if err := writeCmdline(mem, cmdline, img.CmdlineMax); err != nil {
		return Entry{}, err
	}
	le := binary.LittleEndian
	si := make([]byte, startInfoSize)
	le.PutUint32(si[0:], pvhMagic)
	le.PutUint32(si[4:], pvhVersion)
	le.PutUint64(si[24:], memmap.CmdlineAddr)
	if len(initrd) > 0 {
		if err := mem.Write(initrdAddr, initrd); err != nil {
			return Entry{}, fmt.Errorf("load initrd at %#x: %w", initrdAddr, err)
		}
		mod := make([]byte, moduleEntrySize)
		le.PutUint64(mod[0:], initrdAddr)
		le.PutUint64(mod[8:], uint64(len(initrd)))
		if err := mem.Write(pvhModuleAddr, mod); err != nil {
			return Entry{}, fmt.Errorf("write PVH module list: %w", err)
		}
		le.PutUint32(si[12:], 1) // nr_modules
		le.PutUint64(si[16:], pvhModuleAddr)
	}
	if len(l.E820) > maxPVHMemmapEntry {
		return Entry{}, fmt.Errorf("%d memory map entries, PVH area holds %d", len(l.E820), maxPVHMemmapEntry)
	}
	for i, e := range l.E820 {
		ent := make([]byte, memmapEntrySize)
		le.PutUint64(ent[0:], e.Addr)
		le.PutUint64(ent[8:], e.Size)
		le.PutUint32(ent[16:], uint32(e.Type))
		if err := mem.Write(memmap.PVHMemmapAddr+uint64(i*memmapEntrySize), ent); err != nil {
			return Entry{}, fmt.Errorf("write PVH memory map: %w", err)
		}
	}
	le.PutUint64(si[40:], memmap.PVHMemmapAddr)
	le.PutUint32(si[48:], uint32(len(l.E820)))
	if err := mem.Write(memmap.PVHInfoAddr, si); err != nil {
		return Entry{}, fmt.Errorf("write hvm_start_info: %w", err)
	}
	base, limit, err := writeGDT(mem, gdt32)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Mode: Protected32, RIP: pl.Entry, RBX: memmap.PVHInfoAddr, RSP: memmap.BootStackTop,
		GDTBase: base, GDTLimit: limit}, nil
}
