package boot

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/internal/pvhnote"
	"github.com/popvmm/popvmm/memmap"
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
// protected mode, paging off, EBX pointing at hvm_start_info.
func LoadPVH(mem *guestmem.Memory, l *memmap.Layout, image []byte, cmdline string, initrd []byte) (Entry, error) {
	f, err := elf.NewFile(bytes.NewReader(image))
	if err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrKernel, err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return Entry{}, fmt.Errorf("%w: ELF %v %v", ErrKernel, f.Class, f.Machine)
	}
	var entry uint64
	var kernelEnd uint64
	for _, p := range f.Progs {
		switch p.Type {
		case elf.PT_LOAD:
			if p.Filesz > p.Memsz {
				return Entry{}, fmt.Errorf("%w: segment file size above memory size", ErrKernel)
			}
			seg, err := mem.Slice(p.Paddr, p.Memsz)
			if err != nil {
				return Entry{}, fmt.Errorf("kernel segment at %#x: %w", p.Paddr, err)
			}
			if _, err := io.ReadFull(p.Open(), seg[:p.Filesz]); err != nil {
				return Entry{}, fmt.Errorf("read kernel segment: %w", err)
			}
			clear(seg[p.Filesz:])
			kernelEnd = max(kernelEnd, p.Paddr+p.Memsz)
		case elf.PT_NOTE:
			if p.Filesz > 1<<20 {
				continue
			}
			data := make([]byte, p.Filesz)
			if _, err := p.ReadAt(data, 0); err != nil {
				return Entry{}, fmt.Errorf("read ELF notes: %w", err)
			}
			if e, ok := pvhnote.Find(data, binary.LittleEndian); ok {
				entry = uint64(e)
			}
		}
	}
	if entry == 0 {
		return Entry{}, fmt.Errorf("%w: no PVH entry note (build with CONFIG_PVH=y)", ErrKernel)
	}

	if err := writeCmdline(mem, cmdline, memmap.CmdlineMax-1); err != nil {
		return Entry{}, err
	}
	le := binary.LittleEndian
	si := make([]byte, startInfoSize)
	le.PutUint32(si[0:], pvhMagic)
	le.PutUint32(si[4:], pvhVersion)
	le.PutUint64(si[24:], memmap.CmdlineAddr)
	if len(initrd) > 0 {
		addr, err := l.InitrdAddr(uint64(len(initrd)), kernelEnd, 0)
		if err != nil {
			return Entry{}, err
		}
		if err := mem.Write(addr, initrd); err != nil {
			return Entry{}, fmt.Errorf("load initrd at %#x: %w", addr, err)
		}
		mod := make([]byte, moduleEntrySize)
		le.PutUint64(mod[0:], addr)
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
	return Entry{Mode: Protected32, RIP: entry, RBX: memmap.PVHInfoAddr, RSP: memmap.BootStackTop,
		GDTBase: base, GDTLimit: limit}, nil
}
