package pci

import (
	"cmp"
	"fmt"
	"slices"
	"sync"

	"github.com/popvmm/popvmm/memmap"
)

// Allocator hands out BAR addresses in one kernel's PCI windows: 32-bit
// BARs in memmap's PCI32 window, 64-bit BARs in PCI64 after the shared
// window (which has its fixed place at PCI64's start). Every BAR is
// naturally aligned (to its size), as the BAR registers require.
type Allocator struct {
	mu             sync.Mutex
	win32, win64   memmap.Range
	next32, next64 uint64
}

// NewAllocator makes an allocator for l's windows.
func NewAllocator(l *memmap.Layout) *Allocator {
	w64 := l.PCI64
	if l.Window.Size != 0 {
		w64 = memmap.Range{Start: l.Window.End(), Size: l.PCI64.End() - l.Window.End()}
	}
	return &Allocator{win32: l.PCI32, win64: w64, next32: l.PCI32.Start, next64: w64.Start}
}

// Alloc returns a size-aligned address for a BAR of size bytes (a power of
// two) in the 64-bit or the 32-bit window.
func (a *Allocator) Alloc(size uint64, is64 bool) (uint64, error) {
	if size == 0 || size&(size-1) != 0 {
		return 0, fmt.Errorf("pci: BAR size %#x is not a power of two", size)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	win, next, name := a.win32, &a.next32, "pci32"
	if is64 {
		win, next, name = a.win64, &a.next64, "pci64"
	}
	addr := (*next + size - 1) &^ (size - 1)
	end, ok := memmap.End(addr, size)
	if addr < *next || !ok || end > win.End() {
		return 0, fmt.Errorf("pci: no room for a %s BAR in the %s window %v (next free %#x)", memmap.FormatSize(size), name, win, *next)
	}
	*next = end
	return addr, nil
}

// Place assigns an address to every BAR of bars that has a size, largest
// first so that alignment wastes no space between them, and returns them.
// It refuses malformed BARs as Bus.Add does.
func (a *Allocator) Place(bars [NumBARs]BAR) ([NumBARs]BAR, error) {
	for i := range bars {
		if bars[i].Size != 0 {
			bars[i].Addr = 0
		}
	}
	if err := checkBARs(bars); err != nil {
		return bars, err
	}
	var order []int
	for i, b := range bars {
		if b.Size != 0 {
			order = append(order, i)
		}
	}
	slices.SortStableFunc(order, func(x, y int) int { return cmp.Compare(bars[y].Size, bars[x].Size) })
	for _, i := range order {
		addr, err := a.Alloc(bars[i].Size, bars[i].Is64)
		if err != nil {
			return bars, fmt.Errorf("BAR%d: %w", i, err)
		}
		bars[i].Addr = addr
	}
	return bars, nil
}
