package cluster

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/popvmm/popvmm/internal/pvhnote"
	"github.com/popvmm/popvmm/vmm/boot"
)

// ImageFormat is the kind of kernel file popvmm can boot.
type ImageFormat string

// Kernel image formats.
const (
	FormatBzImage ImageFormat = "bzImage" // Linux/x86 boot protocol, 64-bit entry
	FormatELF     ImageFormat = "elf-pvh" // ELF vmlinux with a PVH entry note
)

// ImageInfo describes a kernel file.
type ImageInfo struct {
	Format ImageFormat `json:"format"`
	// Protocol is the bzImage boot protocol version (0x020f is 2.15).
	Protocol uint16 `json:"protocol,omitempty"`
	// PVHEntry is the 32-bit PVH entry point of an ELF kernel.
	PVHEntry uint32 `json:"pvh_entry,omitempty"`
	// Placement is where the loader puts the kernel in guest memory;
	// Check checks it against the kernel's layout with the same
	// functions the loader calls.
	Placement boot.Placement `json:"placement"`
}

func (i ImageInfo) String() string {
	if i.Format == FormatBzImage {
		return fmt.Sprintf("bzImage, boot protocol %d.%02d", i.Protocol>>8, i.Protocol&0xff)
	}
	return fmt.Sprintf("ELF vmlinux, PVH entry %#x", i.PVHEntry)
}

// ErrNotKernel is returned for a file that is neither kind of kernel.
var ErrNotKernel = errors.New("not a bzImage or ELF kernel")

// Offsets in the bzImage setup header (Documentation/arch/x86/boot.rst).
const (
	hdrBootFlag   = 0x1fe // 0xAA55
	hdrMagic      = 0x202 // "HdrS"
	hdrVersion    = 0x206
	hdrXLoadFlags = 0x236
	hdrEnd        = 0x268

	minProtocol = 0x020c // 2.12: xloadflags, 64-bit entry
	xlfKernel64 = 1 << 0
)

// InspectKernel opens path and says which boot path can start it.
func InspectKernel(path string) (ImageInfo, error) {
	f, err := openNonBlock(path)
	if err != nil {
		return ImageInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ImageInfo{}, err
	}
	if !st.Mode().IsRegular() {
		return ImageInfo{}, fmt.Errorf("%w: not a regular file", ErrNotKernel)
	}
	head := make([]byte, hdrEnd)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return ImageInfo{}, err
	}
	head = head[:n]
	switch {
	case bytes.HasPrefix(head, []byte(elf.ELFMAG)):
		return inspectELF(f)
	case len(head) >= hdrEnd && string(head[hdrMagic:hdrMagic+4]) == "HdrS":
		return inspectBzImage(head, uint64(st.Size()))
	}
	return ImageInfo{}, ErrNotKernel
}

func inspectBzImage(h []byte, size uint64) (ImageInfo, error) {
	le := binary.LittleEndian
	if le.Uint16(h[hdrBootFlag:]) != 0xaa55 {
		return ImageInfo{}, fmt.Errorf("%w: bzImage header without boot flag 0xAA55", ErrNotKernel)
	}
	info := ImageInfo{Format: FormatBzImage, Protocol: le.Uint16(h[hdrVersion:])}
	if info.Protocol < minProtocol {
		return info, fmt.Errorf("bzImage boot protocol %d.%02d is older than 2.12, which popvmm's 64-bit entry needs",
			info.Protocol>>8, info.Protocol&0xff)
	}
	if le.Uint16(h[hdrXLoadFlags:])&xlfKernel64 == 0 {
		return info, errors.New("bzImage has no 64-bit entry point (XLF_KERNEL_64 clear)")
	}
	p, err := boot.BzImagePlacement(h, size)
	if err != nil {
		return info, err
	}
	info.Placement = p
	return info, nil
}

func inspectELF(r io.ReaderAt) (ImageInfo, error) {
	ef, err := elf.NewFile(r)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("%w: %w", ErrNotKernel, err)
	}
	if ef.Class != elf.ELFCLASS64 || ef.Machine != elf.EM_X86_64 {
		return ImageInfo{}, fmt.Errorf("%w: ELF %v %v, want ELFCLASS64 EM_X86_64", ErrNotKernel, ef.Class, ef.Machine)
	}
	for _, p := range ef.Progs {
		if p.Type != elf.PT_NOTE || p.Filesz > 1<<20 {
			continue
		}
		data := make([]byte, p.Filesz)
		if _, err := p.ReadAt(data, 0); err != nil {
			return ImageInfo{}, fmt.Errorf("read ELF notes: %w", err)
		}
		if entry, ok := pvhnote.Find(data, ef.ByteOrder); ok {
			p, err := boot.PVHPlacement(ef)
			if err != nil {
				return ImageInfo{}, err
			}
			return ImageInfo{Format: FormatELF, PVHEntry: entry, Placement: p}, nil
		}
	}
	return ImageInfo{}, errors.New("ELF kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y")
}
