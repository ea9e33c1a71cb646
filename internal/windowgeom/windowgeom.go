// Package windowgeom is the shared window's geometry as pure arithmetic:
// where messaging protocol v2 (docs/window-protocol.md) puts the header
// page, the common page and each peer's section for a window size and a
// peer count (For), how a kernel maps the window with window.protect
// (Slots), and the bounds a cluster must fit in (MaxPeers, MaxBells).
// Package ipi/msg lays its window out by it, package ipi maps it, and
// cluster.Check checks a cluster.toml against it without importing either.
package windowgeom

import "fmt"

// Protocol constants (docs/window-protocol.md).
const (
	// PageSize is the granularity of the geometry: every part starts and
	// ends on a multiple of it.
	PageSize = 4096
	// LineSize is a cache line: a ring's slot size, and the stride of the
	// protocol's hot fields.
	LineSize = 64
	// SlotSize is the size of one ring slot.
	SlotSize = LineSize
	// MaxPeers bounds the peer table: a section header holds one receive
	// head per possible sender, a cache line each.
	MaxPeers = 56
	// MinSlots and MaxSlots bound a ring's slot count, a power of two.
	MinSlots = 16
	MaxSlots = 4096

	// HeaderOffset, CommonOffset and SectionsOffset are where the header
	// page, the common page and section 0 begin.
	HeaderOffset   = 0
	CommonOffset   = PageSize
	SectionsOffset = 2 * PageSize

	// MaxBells bounds peers × vectors: every VM registers one
	// KVM_IOEVENTFD per bell on its window device's Doorbell register,
	// and KVM holds at most 1000 devices (ioeventfds included) on a VM's
	// MMIO bus, which virtio queues share.
	MaxBells = 768
)

// Geometry says where the parts of a window formatted for MaxPeers peers
// lie, in bytes from the window's start: the header page, the common page
// and one section per peer, all page-aligned. A section is a header page
// followed by one ring per possible destination. It is what window.protect
// maps: every kernel writes the common page and its own section only.
type Geometry struct {
	MaxPeers    int
	Slots       int // per ring
	RingSize    int // bytes of one ring: its control line, then Slots slots
	HeaderSize  int // page 0, at offset 0
	Common      int // offset of the common page
	CommonSize  int
	Sections    int // offset of section 0
	SectionSize int
	// Size is the bytes the layout uses; the window's rest is unused.
	Size int
}

// Section returns the offset of peer p's section.
func (g Geometry) Section(p int) int { return g.Sections + p*g.SectionSize }

// Layout is the geometry of maxPeers peers with rings of slots slots,
// whatever the window's size; For picks the slots for a size.
func Layout(maxPeers, slots int) Geometry {
	ring := LineSize + slots*SlotSize
	sec := PageSize + maxPeers*ring
	sec = (sec + PageSize - 1) &^ (PageSize - 1)
	return Geometry{MaxPeers: maxPeers, Slots: slots, RingSize: ring,
		HeaderSize: PageSize, Common: CommonOffset, CommonSize: PageSize,
		Sections: SectionsOffset, SectionSize: sec, Size: SectionsOffset + maxPeers*sec}
}

// For returns the geometry ipi/msg's Format gives a window of size bytes
// for maxPeers peers: the largest power-of-two ring (MinSlots to MaxSlots
// slots) that fits.
func For(size, maxPeers int) (Geometry, error) {
	if maxPeers < 2 || maxPeers > MaxPeers {
		return Geometry{}, fmt.Errorf("format window: %d peers, want 2-%d", maxPeers, MaxPeers)
	}
	for s := MaxSlots; s >= MinSlots; s /= 2 {
		if g := Layout(maxPeers, s); g.Size <= size {
			return g, nil
		}
	}
	return Geometry{}, fmt.Errorf("format window: %d bytes is too small for %d peers (need %d)", size, maxPeers, Layout(maxPeers, MinSlots).Size)
}
