package winmem

import "testing"

// TestBounds: in-range aligned words load what was stored; an offset
// past the end, one whose word would cross the end, a negative one and an
// unaligned one panic, for both offset types.
func TestBounds(t *testing.T) {
	b := make([]byte, 64)
	Store64(b, 56, 0x1122334455667788)
	Store32(b, uint64(4), 7)
	if Load64(b, uint64(56)) != 0x1122334455667788 || Load32(b, 4) != 7 {
		t.Fatal("a stored word did not load back")
	}
	if !CAS32(b, 4, 7, 8) || CAS32(b, 4, 7, 9) || Load32(b, 4) != 8 {
		t.Fatal("CAS32")
	}
	if !CAS64(b, 56, 0x1122334455667788, 1) || Load64(b, 56) != 1 {
		t.Fatal("CAS64")
	}
	for name, f := range map[string]func(){
		"past the end":     func() { Load32(b, 64) },
		"crossing the end": func() { Load64(b, uint64(60)) },
		"negative":         func() { Load32(b, -4) },
		"unaligned":        func() { Load64(b, 4) },
		"huge":             func() { Load64(b, ^uint64(7)) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}
