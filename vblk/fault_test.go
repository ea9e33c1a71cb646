package vblk_test

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vblk"
	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// TestTruncatedPassthroughBuffer: a request whose data buffer lies in a
// passthrough region whose file was truncated while the VM runs (a memfd
// here, mapped shared as the VMM maps one). The device's copy of that
// buffer took SIGBUS and the whole supervisor with it; it is an I/O
// error of that request (status IOERR, counted), the fault counted by
// guest memory, and the device serves the next request.
func TestTruncatedPassthroughBuffer(t *testing.T) {
	const gpa, size = 0x2_0000_0000, 0x10000
	fd, err := unix.MemfdCreate("passthrough", unix.MFD_CLOEXEC)
	if err != nil {
		t.Skipf("memfd_create: %v", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:passthrough")
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	pt, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(pt) })
	ram, _ := virtiotest.NewMemory(t)
	mem, err := guestmem.New(guestmem.Region{GPA: 0, Mem: ram}, guestmem.Region{GPA: gpa, Mem: pt})
	if err != nil {
		t.Fatal(err)
	}
	g := newGuestOn(t, vblk.Config{Backend: &memBackend{data: make([]byte, 1<<20)}}, 0, ram, mem) // ReadAt and WriteAt copy in Go
	b := g.b
	if err := f.Truncate(0); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		typ  uint32
		data virtiotest.Buf
	}{
		{vblk.TypeOut, virtiotest.Buf{Addr: gpa + 0x1000, Len: 4096}},
		{vblk.TypeIn, virtiotest.Buf{Addr: gpa + 0x2000, Len: 4096, Write: true}},
	} {
		var h [vblk.HeaderLen]byte
		h[0] = byte(tt.typ)
		g.d.Mem.Write(g.hdr, h[:])
		g.d.Mem.Write(g.st, []byte{0xee})
		st, _, _ := g.submit([]virtiotest.Buf{{Addr: g.hdr, Len: vblk.HeaderLen}, tt.data, {Addr: g.st, Len: 1, Write: true}}, 0)
		if st != vblk.StatusIOErr {
			t.Errorf("request type %d with its data in a truncated passthrough region: status %d, want IOERR", tt.typ, st)
		}
	}
	if s := b.Stats(); s.Errors != 2 {
		t.Errorf("stats %+v, want 2 errors", s)
	}
	if n := mem.Faults(); n != 2 {
		t.Errorf("guest memory counted %d faults, want 2", n)
	}
	if st, _, _ := g.do(vblk.TypeOut, 0, pattern(512, 1), 0); st != vblk.StatusOK {
		t.Errorf("a write in RAM after the faults: status %d", st)
	}
}
