package windowgeom_test

import (
	"fmt"
	"testing"

	"github.com/popvmm/popvmm/internal/windowgeom"
)

// TestSlots: for every window size, peer count and peer, the slots
// cover the window exactly, in order, page-aligned, without overlap or two
// adjacent slots of one kind, and the writable bytes are exactly the
// common page and the peer's own section.
func TestSlots(t *testing.T) {
	for _, size := range []uint64{1 << 20, 4 << 20, 16 << 20, 256 << 20} {
		for _, peers := range []int{2, 3, 10, 56} {
			g, err := windowgeom.For(int(size), peers)
			if err != nil {
				continue // too small for so many peers: Slots must say so
			}
			for p := range peers {
				slots, err := windowgeom.Slots(size, peers, p, true)
				if err != nil {
					t.Fatalf("Slots(%#x, %d, %d) = %v", size, peers, p, err)
				}
				checkSlots(t, fmt.Sprintf("size %#x peers %d peer %d", size, peers, p), slots, size, g, p)
			}
			if _, err := windowgeom.Slots(size, peers, peers, true); err == nil {
				t.Errorf("Slots for peer %d of %d: no error", peers, peers)
			}
		}
		slots, err := windowgeom.Slots(size, 2, 0, false)
		if err != nil || len(slots) != 1 || slots[0] != (windowgeom.Slot{Offset: 0, Size: size}) {
			t.Errorf("unprotected: %+v, %v; want one writable slot", slots, err)
		}
	}
	if _, err := windowgeom.Slots(1<<20, 56, 0, true); err == nil {
		t.Error("1 MiB for 56 peers: no error")
	}
	if _, err := windowgeom.Slots(4097, 2, 0, false); err == nil {
		t.Error("a window that is not whole pages: no error")
	}
}

func checkSlots(t *testing.T, what string, slots []windowgeom.Slot, size uint64, g windowgeom.Geometry, p int) {
	t.Helper()
	var at uint64
	for i, s := range slots {
		switch {
		case s.Offset != at:
			t.Errorf("%s: slot %d at %#x, want %#x (gap or overlap)", what, i, s.Offset, at)
		case s.Size == 0 || s.Offset%windowgeom.PageSize != 0 || s.Size%windowgeom.PageSize != 0:
			t.Errorf("%s: slot %d %+v not whole pages", what, i, s)
		case i > 0 && slots[i-1].ReadOnly == s.ReadOnly:
			t.Errorf("%s: slots %d and %d of one kind not merged", what, i-1, i)
		}
		at = s.Offset + s.Size
	}
	if at != size {
		t.Errorf("%s: slots end at %#x, want %#x", what, at, size)
	}
	writable := func(off uint64) bool {
		for _, s := range slots {
			if off >= s.Offset && off < s.Offset+s.Size {
				return !s.ReadOnly
			}
		}
		t.Fatalf("%s: %#x in no slot", what, off)
		return false
	}
	own := uint64(g.Section(p))
	for off := uint64(0); off < size; off += windowgeom.PageSize {
		want := (off >= uint64(g.Common) && off < uint64(g.Common+g.CommonSize)) || (off >= own && off < own+uint64(g.SectionSize))
		if writable(off) != want {
			t.Errorf("%s: page %#x writable %v, want %v", what, off, !want, want)
		}
	}
}

// TestFor: the geometry is the largest ring that fits, page-aligned, and
// refuses what cannot fit; one case worked by hand pins the arithmetic
// (docs/window-protocol.md: 8192 + maxPeers × section).
func TestFor(t *testing.T) {
	g, err := windowgeom.For(4<<20, 4)
	want := windowgeom.Geometry{MaxPeers: 4, Slots: 2048, RingSize: 64 + 2048*64, HeaderSize: 4096, Common: 4096,
		CommonSize: 4096, Sections: 8192, SectionSize: 130 * 4096, Size: 8192 + 4*130*4096}
	if err != nil || g != want {
		t.Errorf("For(4 MiB, 4) = %+v, %v; want %+v", g, err, want)
	}
	for _, size := range []int{1 << 20, 4 << 20, 64 << 20, 1 << 30} {
		for _, peers := range []int{2, 9, 56} {
			g, err := windowgeom.For(size, peers)
			if err != nil {
				if windowgeom.Layout(peers, windowgeom.MinSlots).Size <= size {
					t.Errorf("For(%#x, %d) = %v, but the smallest ring fits", size, peers, err)
				}
				continue
			}
			switch {
			case g.Size > size:
				t.Errorf("For(%#x, %d) uses %#x bytes", size, peers, g.Size)
			case g.Slots < windowgeom.MaxSlots && windowgeom.Layout(peers, 2*g.Slots).Size <= size:
				t.Errorf("For(%#x, %d) = %d slots, but %d fit", size, peers, g.Slots, 2*g.Slots)
			case g.SectionSize%windowgeom.PageSize != 0 || g.Section(peers-1)+g.SectionSize != g.Size:
				t.Errorf("For(%#x, %d) = %+v: sections not whole pages ending at Size", size, peers, g)
			}
		}
	}
	for _, peers := range []int{0, 1, windowgeom.MaxPeers + 1} {
		if _, err := windowgeom.For(1<<30, peers); err == nil {
			t.Errorf("For(1 GiB, %d peers) = nil error", peers)
		}
	}
}
