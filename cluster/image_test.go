package cluster_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/internal/testkernel"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/guestmem"
)

// loader is a 32 MiB guest for the loaders, and its layout: one for the
// whole test binary (what a loader leaves in it does not change the next
// one's verdict), so that the fuzz target runs fast.
var loader struct {
	sync.Mutex
	mem *guestmem.Memory
	l   *memmap.Layout
}

// loaderGuest returns the loaders' guest, locked until unlock is called.
func loaderGuest(t testing.TB) (m *guestmem.Memory, l *memmap.Layout, unlock func()) {
	t.Helper()
	loader.Lock()
	if loader.mem == nil {
		l, err := memmap.New(memmap.Spec{RAM: 32 * memmap.MiB, RAMAlign: memmap.PageSize, WindowSize: memmap.MiB})
		if err != nil {
			loader.Unlock()
			t.Fatal(err)
		}
		var regions []guestmem.Region
		for _, r := range l.RAM {
			regions = append(regions, guestmem.Region{GPA: r.Start, Mem: make([]byte, r.Size)})
		}
		m, err := guestmem.New(regions...)
		if err != nil {
			loader.Unlock()
			t.Fatal(err)
		}
		loader.mem, loader.l = m, l
	}
	return loader.mem, loader.l, loader.Unlock
}

// longestCmdline is a command line as long as popvmm ever gives a kernel.
var longestCmdline = strings.Repeat("x", boot.MinCmdline)

// verdicts runs image through validation (InspectKernel on the file, then
// what Check asks of its Placement in layout l: Fits, and InitrdAddr for
// the initrd) and through both loaders, with the longest command line; it
// returns validation's result and each loader's.
func verdicts(t testing.TB, dir string, image, initrd []byte) (info cluster.ImageInfo, verr, bzErr, pvhErr error) {
	t.Helper()
	p := filepath.Join(dir, "kernel")
	if err := os.WriteFile(p, image, 0o644); err != nil {
		t.Fatal(err)
	}
	m, l, unlock := loaderGuest(t)
	defer unlock()
	info, verr = cluster.InspectKernel(p)
	if verr == nil {
		verr = info.Placement.Fits(l)
	}
	if verr == nil && len(initrd) > 0 {
		_, verr = info.Placement.InitrdAddr(l, uint64(len(initrd)))
	}
	_, bzErr = boot.LoadBzImage(m, l, image, longestCmdline, initrd)
	_, pvhErr = boot.LoadPVH(m, l, image, longestCmdline, initrd)
	return info, verr, bzErr, pvhErr
}

// agree fails unless validation accepts exactly when the loader of the
// format it names accepts, and the other loader refuses.
func agree(t testing.TB, what string, info cluster.ImageInfo, verr, bzErr, pvhErr error) {
	t.Helper()
	wantBz := verr == nil && info.Format == cluster.FormatBzImage
	wantPVH := verr == nil && info.Format == cluster.FormatELF
	if (bzErr == nil) != wantBz || (pvhErr == nil) != wantPVH {
		t.Fatalf("%s: validation says %v (%v), LoadBzImage %v, LoadPVH %v", what, info.Format, verr, bzErr, pvhErr)
	}
}

// TestInspectAgreesWithLoaders: validation and the loaders give the same
// verdict on every image, kernels cut short (the copy interrupted) at any
// point included, for bzImage and ELF alike.
func TestInspectAgreesWithLoaders(t *testing.T) {
	le := binary.LittleEndian
	vmlinux := testkernel.ELFLoadable(0x1000000, 0x1000000, bytes.Repeat([]byte{0x90}, 0x4000), 0x1000)
	bz := append(testkernel.BzImage(0x020f, true), bytes.Repeat([]byte{0xcc}, 0x3000)...)
	with := func(b []byte, f func([]byte)) []byte {
		b = bytes.Clone(b)
		f(b)
		return b
	}
	tests := []struct {
		name   string
		image  []byte
		accept bool
	}{
		{"vmlinux", vmlinux, true},
		{"vmlinux cut in its segment", vmlinux[:len(vmlinux)-0x3000], false},
		{"vmlinux cut by one byte", vmlinux[:len(vmlinux)-1], false},
		{"vmlinux cut in its PVH note", vmlinux[:64+3*56+10], false},
		{"vmlinux cut in its program headers", vmlinux[:64+56+20], false},
		{"vmlinux cut in its ELF header", vmlinux[:40], false},
		{"segment offset wraps", with(vmlinux, func(b []byte) { le.PutUint64(b[64+56+8:], ^uint64(0)-0x10) }), false},
		{"vmlinux with a bzImage header too", with(vmlinux, func(b []byte) { copy(b[0x202:], "HdrS") }), true},
		{"bzImage", bz, true},
		{"bzImage without its kernel", bz[:0x1000], true}, // init_size covers what is loaded
		{"bzImage cut in its setup", bz[:0x900], false},
		{"bzImage cut in its setup header", bz[:0x250], false},
		{"bzImage setup header ends past itself", with(bz, func(b []byte) { b[0x201] = 0x7f }), false},
		{"bzImage takes a short command line", with(bz, func(b []byte) { le.PutUint32(b[0x238:], 255) }), false},
		{"bzImage takes no command line size", with(bz, func(b []byte) { le.PutUint32(b[0x238:], 0) }), false},
		{"bzImage takes a long command line", with(bz, func(b []byte) { le.PutUint32(b[0x238:], 1<<20) }), true},
		{"bzImage protocol 2.11", with(bz, func(b []byte) { le.PutUint16(b[0x206:], 0x020b) }), false},
		{"empty", nil, false},
		{"ELF magic alone", []byte("\x7fELF"), false},
	}
	dir := t.TempDir()
	for _, tt := range tests {
		info, verr, bzErr, pvhErr := verdicts(t, dir, tt.image, []byte("070701"))
		agree(t, tt.name, info, verr, bzErr, pvhErr)
		if (verr == nil) != tt.accept {
			t.Errorf("%s: validation says %v, want accepted %v", tt.name, verr, tt.accept)
		}
		if verr != nil && !errors.Is(bzErr, boot.ErrKernel) && !errors.Is(pvhErr, boot.ErrKernel) {
			t.Errorf("%s: refused without ErrKernel: %v / %v", tt.name, bzErr, pvhErr)
		}
	}
	// What validation says of a truncated vmlinux names the problem.
	p := testkernel.Write(t, dir, "short", vmlinux[:len(vmlinux)-0x3000])
	if _, err := cluster.InspectKernel(p); err == nil || !strings.Contains(err.Error(), "run past the end of the") {
		t.Errorf("truncated vmlinux: %v", err)
	}
}

// TestLongestCmdlineFits: the longest command line popvmm composes (the
// user's 1024 bytes, a name of 32, the longest addresses, the nested
// flags) fits the MinCmdline every accepted image takes.
func TestLongestCmdlineFits(t *testing.T) {
	cl := &cluster.Cluster{Name: "c", Network: cluster.Network{Subnet: netip.MustParsePrefix("255.255.255.0/24"),
		Host: netip.MustParseAddr("255.255.255.254")}}
	k := &cluster.Kernel{Name: strings.Repeat("n", 32), IP: netip.MustParseAddr("255.255.255.253"), Cmdline: strings.Repeat("x", 1024)}
	if n := len(guest.Cmdline(cl, k, true, nil)); n > boot.MinCmdline {
		t.Errorf("popvmm's longest command line is %d bytes, over boot.MinCmdline %d", n, boot.MinCmdline)
	}
}

// FuzzInspectMatchesLoad: for any file, `popvmm validate` (InspectKernel,
// then the layout checks Check makes with its Placement) accepts it
// exactly when the loader of the format it names (LoadBzImage, LoadPVH)
// loads it, and the other loader refuses it: validation and the loaders
// share one parse (boot.ParseImage). Seeds: good and broken images of
// both kinds, and the corpus in testdata/fuzz.
func FuzzInspectMatchesLoad(f *testing.F) {
	vmlinux := testkernel.ELFLoadable(0x1000000, 0x1000000, bytes.Repeat([]byte{0x90}, 0x400), 0x1000)
	bz := append(testkernel.BzImage(0x020f, true), bytes.Repeat([]byte{0xcc}, 0x400)...)
	f.Add(vmlinux, uint16(6))
	f.Add(vmlinux[:len(vmlinux)-0x100], uint16(6))
	f.Add(testkernel.ELFSegments(0x1000000, testkernel.Segment{Paddr: 0x1000000, Data: []byte("text")},
		testkernel.Segment{Paddr: 0x20000, Data: []byte("data")}), uint16(0))
	f.Add(bz, uint16(6))
	f.Add(bz[:0x300], uint16(0))
	f.Add(testkernel.BzImage(0x020c, true), uint16(4096))
	dir := f.TempDir() // one per fuzzing process: its inputs run one at a time
	f.Fuzz(func(t *testing.T, image []byte, initrdLen uint16) {
		var initrd []byte
		if initrdLen > 0 {
			initrd = make([]byte, int(initrdLen)*64) // up to 4 MiB
		}
		info, verr, bzErr, pvhErr := verdicts(t, dir, image, initrd)
		agree(t, "image", info, verr, bzErr, pvhErr)
	})
}
