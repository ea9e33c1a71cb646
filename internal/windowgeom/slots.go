package windowgeom

import "fmt"

// Slot is one KVM memory slot of the window BAR: Size bytes of the window
// from Offset, at BAR2's address + Offset, read-only (KVM_MEM_READONLY:
// a guest write exits to popvmm as MMIO and is dropped) or writable.
type Slot struct {
	Offset, Size uint64
	ReadOnly     bool
}

// Slots is how kernel peer maps the window: with protect off, one
// writable slot for the whole window; with protect on, the geometry for
// maxPeers peers (For), with writable only the common page and the
// kernel's own section, and read-only the header page, the other peers' sections and the unused rest. Adjacent
// slots of one kind are merged; every slot is page-aligned, and the slots
// cover the window exactly, in order.
func Slots(windowSize uint64, maxPeers, peer int, protect bool) ([]Slot, error) {
	if windowSize == 0 || windowSize%PageSize != 0 {
		return nil, fmt.Errorf("window slots: %d bytes is not a positive multiple of the page size", windowSize)
	}
	if !protect {
		return []Slot{{0, windowSize, false}}, nil
	}
	if windowSize > 1<<62 {
		return nil, fmt.Errorf("window slots: %d bytes is too large", windowSize)
	}
	g, err := For(int(windowSize), maxPeers)
	if err != nil {
		return nil, fmt.Errorf("window slots: %w", err)
	}
	if peer < 0 || peer >= g.MaxPeers {
		return nil, fmt.Errorf("window slots: peer %d has no section (%d peers)", peer, g.MaxPeers)
	}
	u := func(n int) uint64 { return uint64(n) }
	own := u(g.Section(peer))
	parts := []Slot{
		{0, u(g.HeaderSize), true},
		{u(g.Common), u(g.CommonSize), false},
		{u(g.Sections), own - u(g.Sections), true},
		{own, u(g.SectionSize), false},
		{own + u(g.SectionSize), windowSize - own - u(g.SectionSize), true},
	}
	var out []Slot
	for _, s := range parts {
		if s.Size == 0 {
			continue
		}
		if n := len(out); n > 0 && out[n-1].ReadOnly == s.ReadOnly && out[n-1].Offset+out[n-1].Size == s.Offset {
			out[n-1].Size += s.Size
			continue
		}
		out = append(out, s)
	}
	return out, nil
}
