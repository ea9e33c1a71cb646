// Package guestmem is guest-physical memory as device models and the boot
// code see it: a set of regions (RAM slots, passthrough, the window), every
// access bounds-checked. An address outside every region, or a range that
// crosses a region's end, is an error — never a panic — so a guest's
// garbage descriptor costs at most the device that followed it. So is a
// page the host cannot provide (a passthrough file truncated under its
// mapping raises SIGBUS): Read, Write and Access turn the fault into
// ErrFault, counted by Faults, instead of a crash of the process.
package guestmem

import (
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync/atomic"

	"github.com/popvmm/popvmm/memmap"
)

// Errors.
var (
	ErrOutOfRange = errors.New("guest address out of range")
	ErrReadOnly   = errors.New("guest memory is read-only")
	ErrOverlap    = errors.New("guest memory regions overlap")
	// ErrFault: the host could not provide the memory (SIGBUS or SIGSEGV
	// on access), e.g. a passthrough region whose file was truncated
	// while the VM runs.
	ErrFault = errors.New("guest memory fault")
)

// Region is host memory mapped at a guest-physical address.
type Region struct {
	GPA      uint64
	Mem      []byte
	ReadOnly bool
}

// end is one past the region's last byte; New refuses a region for which
// it would wrap.
func (r Region) end() uint64 { return r.GPA + uint64(len(r.Mem)) }

// Memory is a guest's physical memory.
type Memory struct {
	regions []Region // sorted by GPA, disjoint
	faults  atomic.Uint64
}

// New makes a Memory from regions, which must not overlap or wrap.
func New(regions ...Region) (*Memory, error) {
	rs := slices.Clone(regions)
	slices.SortFunc(rs, func(a, b Region) int { return cmp.Compare(a.GPA, b.GPA) })
	for i, r := range rs {
		if _, ok := memmap.End(r.GPA, uint64(len(r.Mem))); len(r.Mem) == 0 || !ok {
			return nil, fmt.Errorf("region at %#x: empty or wrapping", r.GPA)
		}
		if i > 0 && rs[i-1].end() > r.GPA {
			return nil, fmt.Errorf("%w: %#x and %#x", ErrOverlap, rs[i-1].GPA, r.GPA)
		}
	}
	return &Memory{regions: rs}, nil
}

// Slice returns the host bytes of [gpa, gpa+n), which must lie in one
// region, for a bounds check or for code that runs before the guest does
// (the boot loaders). A device touching them while the guest runs uses
// Read, Write or Access instead: a page the host cannot provide faults,
// and only those turn that into an error.
func (m *Memory) Slice(gpa, n uint64) ([]byte, error) {
	r, err := m.region(gpa, n)
	if err != nil {
		return nil, err
	}
	off := gpa - r.GPA
	return r.Mem[off : off+n : off+n], nil
}

// Access calls f with the host bytes of [gpa, gpa+n) (one region; f may
// write them only where the region is writable) and returns f's error. A
// memory fault inside f, on those bytes, is ErrFault; f must not keep p.
func (m *Memory) Access(gpa, n uint64, f func(p []byte) error) error {
	p, err := m.Slice(gpa, n)
	if err != nil {
		return err
	}
	var ferr error
	if err := m.guard(gpa, n, func() { ferr = f(p) }); err != nil {
		return err
	}
	return ferr
}

// Faults is how many accesses through Read, Write and Access faulted.
func (m *Memory) Faults() uint64 { return m.faults.Load() }

// guard runs f, which touches guest memory at [gpa, gpa+n), and turns a
// memory fault in it into ErrFault. Go crashes the process on a fault at
// an address outside its heap unless the goroutine asked for a panic
// (debug.SetPanicOnFault), whose value is a runtime.Error with the
// faulting address; guard asks for the length of f and recovers that
// panic only. Any other panic goes on.
func (m *Memory) guard(gpa, n uint64, f func()) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		r := recover()
		if r == nil {
			return
		}
		fault, ok := r.(interface {
			error
			RuntimeError()
			Addr() uintptr
		})
		if !ok {
			panic(r)
		}
		m.faults.Add(1)
		err = fmt.Errorf("%w: %#x+%#x (host address %#x): %v", ErrFault, gpa, n, fault.Addr(), fault)
	}()
	f()
	return nil
}

func (m *Memory) region(gpa, n uint64) (Region, error) {
	i, found := slices.BinarySearchFunc(m.regions, gpa, func(r Region, t uint64) int {
		switch {
		case r.end() <= t:
			return -1
		case r.GPA > t:
			return 1
		}
		return 0
	})
	if end, ok := memmap.End(gpa, n); !found || !ok || end > m.regions[i].end() {
		return Region{}, fmt.Errorf("%w: %#x+%#x", ErrOutOfRange, gpa, n)
	}
	return m.regions[i], nil
}

// Read copies len(p) bytes from gpa.
func (m *Memory) Read(gpa uint64, p []byte) error {
	s, err := m.Slice(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	return m.guard(gpa, uint64(len(p)), func() { copy(p, s) })
}

// Write copies p to gpa.
func (m *Memory) Write(gpa uint64, p []byte) error {
	r, err := m.region(gpa, uint64(len(p)))
	if err != nil {
		return err
	}
	if r.ReadOnly {
		return fmt.Errorf("%w: %#x", ErrReadOnly, gpa)
	}
	return m.guard(gpa, uint64(len(p)), func() { copy(r.Mem[gpa-r.GPA:], p) })
}

// ReadU16, ReadU32, ReadU64 read little-endian values.
func (m *Memory) ReadU16(gpa uint64) (uint16, error) {
	var b [2]byte
	err := m.Read(gpa, b[:])
	return binary.LittleEndian.Uint16(b[:]), err
}

func (m *Memory) ReadU32(gpa uint64) (uint32, error) {
	var b [4]byte
	err := m.Read(gpa, b[:])
	return binary.LittleEndian.Uint32(b[:]), err
}

func (m *Memory) ReadU64(gpa uint64) (uint64, error) {
	var b [8]byte
	err := m.Read(gpa, b[:])
	return binary.LittleEndian.Uint64(b[:]), err
}

// WriteU16, WriteU32, WriteU64 write little-endian values.
func (m *Memory) WriteU16(gpa uint64, v uint16) error {
	return m.Write(gpa, binary.LittleEndian.AppendUint16(nil, v))
}

func (m *Memory) WriteU32(gpa uint64, v uint32) error {
	return m.Write(gpa, binary.LittleEndian.AppendUint32(nil, v))
}

func (m *Memory) WriteU64(gpa uint64, v uint64) error {
	return m.Write(gpa, binary.LittleEndian.AppendUint64(nil, v))
}
