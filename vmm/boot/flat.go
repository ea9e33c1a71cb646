package boot

import (
	"fmt"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// FlatAddr is where LoadFlat puts a flat binary and starts it.
const FlatAddr = memmap.KernelAddr

// LoadFlat loads a flat binary (a freestanding test guest, no headers) at
// FlatAddr. The vCPU starts there in 32-bit protected mode, paging off,
// with flat code (SelectorCode) and data (SelectorData) segments from the
// boot GDT and the stack below BootStackTop.
func LoadFlat(mem *guestmem.Memory, l *memmap.Layout, image []byte) (Entry, error) {
	r := memmap.Range{Start: FlatAddr, Size: uint64(len(image))}
	if err := l.CheckKernel(r); err != nil {
		return Entry{}, fmt.Errorf("%w: flat binary %w", ErrKernel, err)
	}
	if err := mem.Write(FlatAddr, image); err != nil {
		return Entry{}, fmt.Errorf("load flat binary at %#x: %w", uint64(FlatAddr), err)
	}
	base, limit, err := writeGDT(mem, gdt32)
	if err != nil {
		return Entry{}, err
	}
	return Entry{Mode: Protected32, RIP: FlatAddr, RSP: memmap.BootStackTop, GDTBase: base, GDTLimit: limit}, nil
}
