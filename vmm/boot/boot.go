// Package boot puts a Linux kernel into guest memory the way firmware and a
// boot loader would: the bzImage 64-bit boot protocol (zero page, e820,
// command line, initrd, identity page tables, GDT) and PVH entry for an ELF
// vmlinux (hvm_start_info, memory map, initrd module), plus the MP table
// through which the guest finds its application processors without ACPI.
// It writes only through guestmem (every access bounds-checked) at the
// addresses package memmap fixes, and returns the register state the vCPU
// must start with. No KVM here: it is all testable by reading memory back.
package boot

import (
	"errors"
	"fmt"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// Mode is the CPU mode the first vCPU starts in.
type Mode int

// Modes.
const (
	Long64      Mode = iota // 64-bit, paging on: the bzImage 64-bit entry
	Protected32             // 32-bit protected, paging off: the PVH entry
)

// GDT selectors the Linux boot protocols expect (__BOOT_CS, __BOOT_DS).
const (
	SelectorCode = 0x10
	SelectorData = 0x18
)

// Entry is the boot vCPU's initial state.
type Entry struct {
	Mode Mode
	RIP  uint64
	RSI  uint64 // bzImage: the zero page
	RBX  uint64 // PVH: hvm_start_info
	RSP  uint64
	CR3  uint64 // page tables (Long64)
	// GDTBase and GDTLimit describe the boot GDT (flat code and data).
	GDTBase  uint64
	GDTLimit uint16
}

// ErrKernel marks a kernel image popvmm cannot boot.
var ErrKernel = errors.New("cannot boot kernel image")

// gdt is the boot GDT: null, null, flat 64-bit code (0x10), flat data
// (0x18). The code descriptor is marked long mode (L=1); the PVH path
// switches to a 32-bit code descriptor in the same slot.
var gdt64 = []uint64{0, 0, 0x00af9b000000ffff, 0x00cf93000000ffff}
var gdt32 = []uint64{0, 0, 0x00cf9b000000ffff, 0x00cf93000000ffff}

func writeGDT(mem *guestmem.Memory, entries []uint64) (uint64, uint16, error) {
	for i, e := range entries {
		if err := mem.WriteU64(memmap.GDTAddr+uint64(i)*8, e); err != nil {
			return 0, 0, fmt.Errorf("write GDT: %w", err)
		}
	}
	// An empty IDT: any exception before the kernel sets its own is a
	// triple fault, which stops this kernel only.
	for i := range uint64(2) {
		if err := mem.WriteU64(memmap.IDTAddr+i*8, 0); err != nil {
			return 0, 0, fmt.Errorf("write IDT: %w", err)
		}
	}
	return memmap.GDTAddr, uint16(len(entries)*8 - 1), nil
}

// writePageTables identity-maps the first 4 GiB with 2 MiB pages: one PML4
// entry, one PDPT with four entries, four page directories.
func writePageTables(mem *guestmem.Memory) error {
	const present, writable, huge = 1, 2, 0x80
	if err := mem.WriteU64(memmap.PML4Addr, memmap.PDPTAddr|present|writable); err != nil {
		return fmt.Errorf("write page tables: %w", err)
	}
	for i := range uint64(4) {
		pd := memmap.PDAddr + i*0x1000
		if err := mem.WriteU64(memmap.PDPTAddr+i*8, pd|present|writable); err != nil {
			return fmt.Errorf("write page tables: %w", err)
		}
		for j := range uint64(512) {
			phys := (i*512 + j) << 21
			if err := mem.WriteU64(pd+j*8, phys|present|writable|huge); err != nil {
				return fmt.Errorf("write page tables: %w", err)
			}
		}
	}
	return nil
}

func writeCmdline(mem *guestmem.Memory, cmdline string, limit int) error {
	if len(cmdline) > limit {
		return fmt.Errorf("command line of %d bytes is longer than the kernel's %d", len(cmdline), limit)
	}
	if err := mem.Write(memmap.CmdlineAddr, append([]byte(cmdline), 0)); err != nil {
		return fmt.Errorf("write command line: %w", err)
	}
	return nil
}
