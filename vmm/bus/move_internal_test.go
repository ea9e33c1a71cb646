package bus

import (
	"errors"
	"testing"
)

type nopDev struct{ _ int }

func (*nopDev) Read(uint64, []byte)  {}
func (*nopDev) Write(uint64, []byte) {}

// TestMove: a move onto another device's range changes nothing (both stay
// where they were); a move to free space takes dev's own entry along; a
// move never removes another device's entry at from.
func TestMove(t *testing.T) {
	b := New("mmio", nil)
	a, o := &nopDev{}, &nopDev{}
	if err := b.Insert(a, "a", 0x1000, 0x100); err != nil {
		t.Fatal(err)
	}
	if err := b.Insert(o, "o", 0x2000, 0x100); err != nil {
		t.Fatal(err)
	}
	owner := func(addr uint64) Device {
		b.mu.RLock()
		defer b.mu.RUnlock()
		e, ok := b.find(addr, 1)
		if !ok {
			return nil
		}
		return e.dev
	}
	if err := b.Move(a, "a", 0x1000, true, 0x2080, 0x100); !errors.Is(err, ErrOverlap) {
		t.Fatalf("move onto o: %v, want ErrOverlap", err)
	}
	if owner(0x1000) != a || owner(0x2000) != o {
		t.Fatal("a refused move changed the bus")
	}
	// dev is not at from: o's entry there must stay.
	if err := b.Move(a, "a", 0x2000, true, 0x3000, 0x100); err != nil {
		t.Fatal(err)
	}
	if owner(0x2000) != o || owner(0x3000) != a || owner(0x1000) != a {
		t.Fatalf("a move from another device's base touched it: 0x1000 %v 0x2000 %v 0x3000 %v", owner(0x1000), owner(0x2000), owner(0x3000))
	}
	b.Remove(0x3000)
	if err := b.Move(a, "a", 0x1000, true, 0x1080, 0x100); err != nil {
		t.Fatalf("a move overlapping only its own old range: %v", err)
	}
	if owner(0x1000) != nil || owner(0x1080) != a {
		t.Fatal("the overlapping move did not take a's entry along")
	}
	for _, to := range []uint64{0xffff_ffff_ffff_ff80} {
		if err := b.Move(a, "a", 0x1080, true, to, 0x100); err == nil {
			t.Fatalf("a move to %#x wrapping 2^64 succeeded", to)
		}
	}
	if owner(0x1080) != a {
		t.Fatal("a refused wrapping move unmapped a")
	}
}
