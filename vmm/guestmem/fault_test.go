package guestmem_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vmm/guestmem"
)

// truncatedRegion maps a file of size bytes shared, as a passthrough
// region is mapped, then truncates the file to nothing: every page of the
// mapping then raises SIGBUS on access.
func truncatedRegion(t *testing.T, file func(t *testing.T) *os.File, size int) []byte {
	t.Helper()
	f := file(t)
	if err := f.Truncate(int64(size)); err != nil {
		t.Fatal(err)
	}
	p, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(p) })
	p[0] = 1 // a page that was there
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTruncatedPassthroughFaults: a passthrough region's file truncated
// while the VM runs leaves its mapping without pages, and a device model
// that read or wrote there (a virtio descriptor pointing into the region)
// took SIGBUS, which brought the whole supervisor down. Every guarded
// access is ErrFault instead, counted, and the memory stays usable.
func TestTruncatedPassthroughFaults(t *testing.T) {
	files := map[string]func(t *testing.T) *os.File{
		"memfd": func(t *testing.T) *os.File {
			fd, err := unix.MemfdCreate("passthrough", unix.MFD_CLOEXEC)
			if err != nil {
				t.Skipf("memfd_create: %v", err)
			}
			f := os.NewFile(uintptr(fd), "memfd:passthrough")
			t.Cleanup(func() { f.Close() })
			return f
		},
		"regular file": func(t *testing.T) *os.File {
			f, err := os.Create(filepath.Join(t.TempDir(), "passthrough.img"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { f.Close() })
			return f
		},
	}
	const size, gpa = 0x4000, 0x200000000
	for name, file := range files {
		t.Run(name, func(t *testing.T) {
			m, err := guestmem.New(guestmem.Region{GPA: 0, Mem: make([]byte, 0x1000)},
				guestmem.Region{GPA: gpa, Mem: truncatedRegion(t, file, size)})
			if err != nil {
				t.Fatal(err)
			}
			accesses := []struct {
				what string
				do   func() error
			}{
				{"Read", func() error { return m.Read(gpa+0x10, make([]byte, 64)) }},
				{"Write", func() error { return m.Write(gpa+0x1000, []byte("frame")) }},
				{"ReadU16", func() error { _, err := m.ReadU16(gpa + 2); return err }},
				{"WriteU32", func() error { return m.WriteU32(gpa+0x3ffc, 7) }},
				{"Access", func() error {
					return m.Access(gpa+0x2000, 16, func(p []byte) error { p[15] = 1; return nil })
				}},
			}
			for i, a := range accesses {
				if err := a.do(); !errors.Is(err, guestmem.ErrFault) {
					t.Errorf("%s in the truncated region = %v, want ErrFault", a.what, err)
				}
				if got := m.Faults(); got != uint64(i+1) {
					t.Errorf("after %s: Faults() = %d, want %d", a.what, got, i+1)
				}
			}
			// The rest of guest memory is as it was.
			if err := m.WriteU64(0x100, 42); err != nil {
				t.Fatal(err)
			}
			if v, err := m.ReadU64(0x100); err != nil || v != 42 {
				t.Errorf("RAM after the faults: %d, %v", v, err)
			}
			// A panic that is not a fault is not taken for one.
			defer func() {
				if r := recover(); r != "not a fault" {
					t.Errorf("recovered %v, want the callback's own panic to go on", r)
				}
			}()
			m.Access(0x100, 8, func([]byte) error { panic("not a fault") })
		})
	}
}
