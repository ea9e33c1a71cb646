package guestmem_test

import (
	"errors"
	"testing"

	"github.com/popvmm/popvmm/vmm/guestmem"
)

func mem(t testing.TB) *guestmem.Memory {
	m, err := guestmem.New(
		guestmem.Region{GPA: 0, Mem: make([]byte, 0x10000)},
		guestmem.Region{GPA: 0x100000000, Mem: make([]byte, 0x1000)},
		guestmem.Region{GPA: 0x200000000, Mem: make([]byte, 0x1000), ReadOnly: true},
	)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestAccess(t *testing.T) {
	m := mem(t)
	if err := m.WriteU64(0x100000ff8, 0x1122334455667788); err != nil {
		t.Fatal(err)
	}
	if v, err := m.ReadU64(0x100000ff8); err != nil || v != 0x1122334455667788 {
		t.Errorf("ReadU64 = %#x, %v", v, err)
	}
	if v, err := m.ReadU32(0x100000ffc); err != nil || v != 0x11223344 {
		t.Errorf("ReadU32 = %#x, %v", v, err)
	}
	if v, err := m.ReadU16(0x100000ff8); err != nil || v != 0x7788 {
		t.Errorf("ReadU16 = %#x, %v", v, err)
	}
	tests := []struct {
		name string
		err  error
		do   func() error
	}{
		{"past the end", guestmem.ErrOutOfRange, func() error { _, err := m.ReadU64(0x100000ffc); return err }},
		{"in a hole", guestmem.ErrOutOfRange, func() error { _, err := m.ReadU32(0x20000); return err }},
		{"wrapping", guestmem.ErrOutOfRange, func() error { _, err := m.Slice(^uint64(0)-2, 8); return err }},
		{"ending at 2^64", guestmem.ErrOutOfRange, func() error { _, err := m.Slice(^uint64(0)-7, 8); return err }},
		{"wrapping onto RAM", guestmem.ErrOutOfRange, func() error { _, err := m.Slice(0x10, ^uint64(0)-7); return err }},
		{"huge write", guestmem.ErrOutOfRange, func() error { _, err := m.Slice(0x100000000, 1<<63); return err }},
		{"read-only", guestmem.ErrReadOnly, func() error { return m.WriteU32(0x200000000, 1) }},
		{"crossing regions", guestmem.ErrOutOfRange, func() error { _, err := m.Slice(0xfff8, 0x10); return err }},
	}
	for _, tt := range tests {
		if err := tt.do(); !errors.Is(err, tt.err) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.err)
		}
	}
	if _, err := m.ReadU32(0x200000000); err != nil {
		t.Errorf("reading read-only memory: %v", err)
	}
	s, err := m.Slice(0x10, 4)
	if err != nil || len(s) != 4 || cap(s) != 4 {
		t.Errorf("Slice = len %d cap %d, %v; want a 4-byte slice that cannot grow into its neighbour", len(s), cap(s), err)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := guestmem.New(guestmem.Region{GPA: 0, Mem: make([]byte, 0x2000)}, guestmem.Region{GPA: 0x1000, Mem: make([]byte, 0x1000)}); !errors.Is(err, guestmem.ErrOverlap) {
		t.Errorf("overlap: %v", err)
	}
	if _, err := guestmem.New(guestmem.Region{GPA: 0}); err == nil {
		t.Error("empty region accepted")
	}
	// A region whose end would be 2^64 or beyond wraps; refused.
	for _, gpa := range []uint64{^uint64(0) - 0xfff, ^uint64(0) - 0x7ff} {
		if _, err := guestmem.New(guestmem.Region{GPA: gpa, Mem: make([]byte, 0x1000)}); err == nil {
			t.Errorf("region at %#x of 4 KiB (past 2^64) accepted", gpa)
		}
	}
}

// FuzzAccess: any address and length is an error or a correct access,
// never a panic.
func FuzzAccess(f *testing.F) {
	f.Add(uint64(0xfff8), uint64(16), true)
	f.Add(uint64(0x100000000), uint64(0x1000), false)
	f.Fuzz(func(t *testing.T, gpa, n uint64, write bool) {
		m := mem(t)
		n %= 0x20000
		if write {
			m.Write(gpa, make([]byte, n))
			return
		}
		s, err := m.Slice(gpa, n)
		if err == nil && uint64(len(s)) != n {
			t.Fatalf("Slice(%#x, %#x) = %d bytes", gpa, n, len(s))
		}
	})
}
