package vblk_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/vblk"
	"github.com/popvmm/popvmm/vmm/guestmem"
	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// memBackend is a disk in memory whose next operations can be made to
// fail, as a host's EIO or ENOSPC would.
type memBackend struct {
	mu      sync.Mutex
	data    []byte
	fail    error // returned by the next ReadAt, WriteAt or Flush
	flushes int
}

// snapshot copies the disk and the flush count under the lock (the
// device's workers write it).
func (m *memBackend) snapshot() ([]byte, int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return bytes.Clone(m.data), m.flushes
}

func (m *memBackend) take() error {
	err := m.fail
	m.fail = nil
	return err
}

func (m *memBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.take(); err != nil {
		return 0, err
	}
	return copy(p, m.data[off:]), nil
}

func (m *memBackend) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.take(); err != nil {
		return 0, err
	}
	return copy(m.data[off:], p), nil
}

func (m *memBackend) Size() (int64, error) { return int64(len(m.data)), nil }
func (m *memBackend) Flush() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.flushes++
	return m.take()
}
func (m *memBackend) CanDiscard() bool { return true }
func (m *memBackend) Discard(off, n int64) error {
	return m.WriteZeroes(off, n, true)
}
func (m *memBackend) WriteZeroes(off, n int64, _ bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+n])
	return nil
}

// guest drives a virtio-blk device as Linux's driver would: MSI-X vector
// 0 for configuration, 1 for the request queue.
type guest struct {
	t   testing.TB
	b   *vblk.Block
	d   *virtiotest.Driver
	r   *virtiotest.Router
	q   *virtiotest.DriverQueue
	hdr uint64
	buf uint64
	st  uint64
}

const bufLen = 64 << 10

func newGuest(t testing.TB, cfg vblk.Config, queueSize uint16) *guest {
	t.Helper()
	ram, mem := virtiotest.NewMemory(t)
	return newGuestOn(t, cfg, queueSize, ram, mem)
}

// newGuestOn is newGuest over guest memory mem, whose RAM (where the
// driver allocates) is ram.
func newGuestOn(t testing.TB, cfg vblk.Config, queueSize uint16, ram []byte, mem *guestmem.Memory) *guest {
	t.Helper()
	b, err := vblk.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := virtiotest.NewRouter(2)
	p, err := virtio.NewPCI(b, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: r})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() }) // before the memory goes
	g := &guest{t: t, b: b, d: virtiotest.New(t, p, ram, mem), r: r}
	g.hdr, g.buf, g.st = g.d.Alloc(vblk.HeaderLen), g.d.Alloc(bufLen), g.d.Alloc(1)
	g.up(queueSize)
	return g
}

// up negotiates, sets the queue up with size (0: the device's maximum)
// and sets DRIVER_OK.
func (g *guest) up(size uint16) {
	g.t.Helper()
	if _, ok := g.d.Negotiate(virtio.FeatureVersion1 | g.b.Features()&^virtio.FeatureEventIdx); !ok {
		g.t.Fatal("features refused")
	}
	g.d.EnableMSIX()
	g.d.Write(0x10, 2, 0)
	g.q = g.d.SetupQueue(0, size, 1)
	g.d.SetStatus(virtio.StatusAcknowledge | virtio.StatusDriver | virtio.StatusFeaturesOK | virtio.StatusDriverOK)
	if g.d.Status()&virtio.StatusDriverOK == 0 {
		g.t.Fatal("DRIVER_OK refused")
	}
}

// do sends one request: out after the header as readable data, then in
// writable bytes and the status byte; it returns the status, what the
// device wrote and the used length.
func (g *guest) do(typ uint32, sector uint64, out []byte, in int) (byte, []byte, uint32) {
	g.t.Helper()
	var h [vblk.HeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], typ)
	binary.LittleEndian.PutUint64(h[8:], sector)
	g.d.Mem.Write(g.hdr, h[:])
	g.d.Mem.Write(g.st, []byte{0xee})
	bufs := []virtiotest.Buf{{Addr: g.hdr, Len: vblk.HeaderLen}}
	if len(out) > 0 {
		g.d.Mem.Write(g.buf, out)
		bufs = append(bufs, virtiotest.Buf{Addr: g.buf, Len: uint32(len(out))})
	}
	if in > 0 {
		bufs = append(bufs, virtiotest.Buf{Addr: g.buf, Len: uint32(in), Write: true})
	}
	bufs = append(bufs, virtiotest.Buf{Addr: g.st, Len: 1, Write: true})
	return g.submit(bufs, in)
}

func (g *guest) submit(bufs []virtiotest.Buf, in int) (byte, []byte, uint32) {
	g.t.Helper()
	if _, ok := g.q.Offer(bufs...); !ok {
		g.t.Fatal("queue full")
	}
	g.q.Kick()
	deadline := time.After(10 * time.Second)
	for {
		if used := g.q.TakeUsed(); len(used) > 0 {
			st := make([]byte, 1)
			g.d.Mem.Read(g.st, st)
			data := make([]byte, in)
			g.d.Mem.Read(g.buf, data)
			return st[0], data, used[0].Len
		}
		select {
		case <-g.r.Signals[1]:
		case <-g.r.Signals[0]:
			g.t.Fatalf("configuration interrupt: device status %#x", g.d.Status())
		case <-deadline:
			g.t.Fatalf("no completion within 10s (device status %#x, stats %+v)", g.d.Status(), g.b.Stats())
		}
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestReadWriteFlushID: writes land at their sector, reads return them,
// FLUSH reaches the backend, GET_ID returns the serial, and the config
// space says the capacity and limits.
func TestReadWriteFlushID(t *testing.T) {
	be := &memBackend{data: make([]byte, 1<<20)}
	g := newGuest(t, vblk.Config{Backend: be, Serial: "disk-0001"}, 0)
	if c := g.d.Read(g.d.DevCfg, 8); c != 2048 {
		t.Errorf("capacity %d sectors, want 2048", c)
	}
	if g.b.Features()&vblk.FeatureRO != 0 {
		t.Error("a writable disk offers VIRTIO_BLK_F_RO")
	}
	data := pattern(8192, 3)
	if st, _, n := g.do(vblk.TypeOut, 10, data, 0); st != vblk.StatusOK || n != 1 {
		t.Fatalf("write: status %d, used %d", st, n)
	}
	if disk, _ := be.snapshot(); !bytes.Equal(disk[10*512:10*512+8192], data) {
		t.Fatal("the write did not land at sector 10")
	}
	st, got, n := g.do(vblk.TypeIn, 10, nil, 8192)
	if st != vblk.StatusOK || n != 8193 || !bytes.Equal(got, data) {
		t.Fatalf("read back: status %d, used %d, equal %v", st, n, bytes.Equal(got, data))
	}
	if st, _, _ := g.do(vblk.TypeFlush, 0, nil, 0); st != vblk.StatusOK {
		t.Fatalf("flush: status %d", st)
	}
	if _, n := be.snapshot(); n != 1 {
		t.Fatalf("backend flushes %d, want 1", n)
	}
	st, id, n := g.do(vblk.TypeGetID, 0, nil, vblk.IDBytes)
	if st != vblk.StatusOK || n != vblk.IDBytes+1 || string(bytes.TrimRight(id, "\x00")) != "disk-0001" {
		t.Fatalf("GET_ID: status %d, used %d, id %q", st, n, id)
	}
	s := g.b.Stats()
	if s.Reads != 1 || s.Writes != 1 || s.Flushes != 1 || s.ReadBytes != 8192 || s.WriteBytes != 8192 || s.Errors != 0 || s.Refused != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestRefused: writes to a read-only disk, ranges past the end (also
// ones that would wrap 2^64), partial sectors and unknown requests
// complete with an error status and never reach the backend.
func TestRefused(t *testing.T) {
	be := &memBackend{data: pattern(1<<20, 1)}
	orig := bytes.Clone(be.data)
	ro := newGuest(t, vblk.Config{Backend: be, ReadOnly: true}, 0)
	if ro.b.Features()&vblk.FeatureRO == 0 {
		t.Error("a read-only disk does not offer VIRTIO_BLK_F_RO")
	}
	seg := make([]byte, 16)
	binary.LittleEndian.PutUint32(seg[8:], 8)
	for _, c := range []struct {
		what   string
		typ    uint32
		sector uint64
		out    []byte
		in     int
		want   byte
	}{
		{"write to a read-only disk", vblk.TypeOut, 0, pattern(512, 9), 0, vblk.StatusIOErr},
		{"write-zeroes on a read-only disk", vblk.TypeWriteZeroes, 0, seg, 0, vblk.StatusIOErr},
		{"discard on a read-only disk", vblk.TypeDiscard, 0, seg, 0, vblk.StatusIOErr},
		{"read at the capacity", vblk.TypeIn, 2048, nil, 512, vblk.StatusIOErr},
		{"read across the end", vblk.TypeIn, 2047, nil, 1024, vblk.StatusIOErr},
		{"read at a sector that wraps 2^64", vblk.TypeIn, 1 << 55, nil, 512, vblk.StatusIOErr},
		{"read of half a sector", vblk.TypeIn, 0, nil, 100, vblk.StatusIOErr},
		{"an unknown request", 99, 0, nil, 0, vblk.StatusUnsupp},
	} {
		if st, _, _ := ro.do(c.typ, c.sector, c.out, c.in); st != c.want {
			t.Errorf("%s: status %d, want %d", c.what, st, c.want)
		}
	}
	if disk, _ := be.snapshot(); !bytes.Equal(disk, orig) {
		t.Error("a refused request changed the disk")
	}
	if s := ro.b.Stats(); s.Refused != 8 || s.Writes != 0 || s.Errors != 0 {
		t.Errorf("stats %+v, want 8 refused and nothing else", s)
	}
	// The device still serves good requests.
	if st, got, _ := ro.do(vblk.TypeIn, 2047, nil, 512); st != vblk.StatusOK || !bytes.Equal(got, orig[2047*512:]) {
		t.Errorf("the last sector: status %d", st)
	}
}

// TestHostErrors: EIO and ENOSPC from the host become IOERR for that
// request, counted; the next request works.
func TestHostErrors(t *testing.T) {
	be := &memBackend{data: make([]byte, 1<<20)}
	g := newGuest(t, vblk.Config{Backend: be}, 0)
	for _, c := range []struct {
		typ uint32
		err error
	}{{vblk.TypeOut, syscall.ENOSPC}, {vblk.TypeIn, syscall.EIO}, {vblk.TypeFlush, syscall.EIO}} {
		be.mu.Lock()
		be.fail = c.err
		be.mu.Unlock()
		var out []byte
		in := 0
		switch c.typ {
		case vblk.TypeOut:
			out = pattern(512, 4)
		case vblk.TypeIn:
			in = 512
		}
		if st, _, _ := g.do(c.typ, 1, out, in); st != vblk.StatusIOErr {
			t.Errorf("type %d with %v: status %d, want IOERR", c.typ, c.err, st)
		}
	}
	if s := g.b.Stats(); s.Errors != 3 {
		t.Errorf("stats %+v, want 3 errors", s)
	}
	if st, _, _ := g.do(vblk.TypeOut, 1, pattern(512, 5), 0); st != vblk.StatusOK {
		t.Errorf("a write after the errors: status %d", st)
	}
	if g.d.Status()&virtio.StatusDeviceNeedsReset != 0 {
		t.Error("a host error broke the device")
	}
}

// TestMalformedChain: a chain without room for the header or the status
// byte sets DEVICE_NEEDS_RESET; a reset and a new activation bring the
// device back.
func TestMalformedChain(t *testing.T) {
	be := &memBackend{data: make([]byte, 1<<20)}
	for _, bufs := range [][]virtiotest.Buf{
		{{Addr: 0x1000, Len: 8}, {Addr: 0x2000, Len: 1, Write: true}}, // a short header
		{{Addr: 0x1000, Len: vblk.HeaderLen}},                         // no status byte
	} {
		g := newGuest(t, vblk.Config{Backend: be}, 0)
		g.q.Offer(bufs...)
		g.q.Kick()
		select {
		case <-g.r.Signals[0]:
		case <-time.After(10 * time.Second):
			t.Fatal("no configuration interrupt for a malformed chain")
		}
		if g.d.Status()&virtio.StatusDeviceNeedsReset == 0 {
			t.Fatal("DEVICE_NEEDS_RESET not set")
		}
		g.d.SetStatus(0)
		g.up(0)
		if st, _, _ := g.do(vblk.TypeIn, 0, nil, 512); st != vblk.StatusOK {
			t.Errorf("after a reset: status %d", st)
		}
	}
}

// TestReactivateQueueSize: what the device derives from the queue is
// taken again at every activation: a driver that resets and comes back
// with a smaller, then a larger queue is served both times (the kind of
// Firecracker PR #2127).
func TestReactivateQueueSize(t *testing.T) {
	be := &memBackend{data: make([]byte, 1<<20)}
	g := newGuest(t, vblk.Config{Backend: be, QueueSize: 256}, 256)
	for _, size := range []uint16{16, 256, 4} {
		g.d.SetStatus(0)
		g.up(size)
		if g.q.Size != size {
			t.Fatalf("queue size %d, want %d", g.q.Size, size)
		}
		for i := range int(size) * 2 {
			if st, _, _ := g.do(vblk.TypeOut, uint64(i), pattern(512, byte(i)), 0); st != vblk.StatusOK {
				t.Fatalf("queue size %d, request %d: status %d", size, i, st)
			}
		}
	}
}

// TestSegMax: the config's seg_max is as many data buffers as the device
// takes in a request, for queues up to the largest: a request of seg_max
// data buffers in one indirect table (as Linux sends one) completes. It
// was queue size − 2, which past 1024 is more than the indirect table the
// queue takes: such a request broke the device.
func TestSegMax(t *testing.T) {
	for _, tt := range []struct {
		queue uint16
		want  uint32
	}{{256, 254}, {1024, 1022}, {2048, 1022}, {virtio.MaxQueueSize, 1022}} {
		be := &memBackend{data: make([]byte, 1<<20)}
		g := newGuest(t, vblk.Config{Backend: be, QueueSize: tt.queue}, 0)
		segMax := uint32(g.d.Read(g.d.DevCfg+0x0c, 4))
		if segMax != tt.want {
			t.Errorf("queue size %d: seg_max %d, want %d", tt.queue, segMax, tt.want)
		}
		var h [vblk.HeaderLen]byte
		binary.LittleEndian.PutUint32(h[0:], vblk.TypeOut)
		g.d.Mem.Write(g.hdr, h[:])
		g.d.Mem.Write(g.st, []byte{0xee})
		data := g.d.Alloc(uint64(segMax) * vblk.SectorSize)
		g.d.Mem.Write(data, pattern(int(segMax)*vblk.SectorSize, 4))
		bufs := []virtiotest.Buf{{Addr: g.hdr, Len: vblk.HeaderLen}}
		for i := range uint64(segMax) {
			bufs = append(bufs, virtiotest.Buf{Addr: data + i*vblk.SectorSize, Len: vblk.SectorSize})
		}
		bufs = append(bufs, virtiotest.Buf{Addr: g.st, Len: 1, Write: true})
		if _, ok := g.q.OfferIndirect(bufs...); !ok {
			t.Fatal("queue full")
		}
		g.q.Kick()
		deadline := time.After(10 * time.Second)
		for done := false; !done; {
			select {
			case <-g.r.Signals[1]:
				done = len(g.q.TakeUsed()) > 0
			case <-g.r.Signals[0]:
				t.Fatalf("queue size %d, a write of seg_max = %d buffers: configuration interrupt, device status %#x", tt.queue, segMax, g.d.Status())
			case <-deadline:
				t.Fatalf("queue size %d: no completion within 10s", tt.queue)
			}
		}
		st := make([]byte, 1)
		g.d.Mem.Read(g.st, st)
		if disk, _ := be.snapshot(); st[0] != vblk.StatusOK || !bytes.Equal(disk[:segMax*vblk.SectorSize], pattern(int(segMax)*vblk.SectorSize, 4)) {
			t.Fatalf("queue size %d, a write of seg_max = %d buffers: status %d", tt.queue, segMax, st[0])
		}
	}
}

// TestScatteredRequest: the device takes a request however the driver
// splits it into descriptors: header and data in one buffer, data and
// status in one buffer.
func TestScatteredRequest(t *testing.T) {
	be := &memBackend{data: make([]byte, 1<<20)}
	g := newGuest(t, vblk.Config{Backend: be}, 0)
	data := pattern(1024, 6)
	var h [vblk.HeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], vblk.TypeOut)
	binary.LittleEndian.PutUint64(h[8:], 4)
	a := g.d.Alloc(vblk.HeaderLen + 1024)
	g.d.Mem.Write(a, append(h[:], data...))
	g.submit([]virtiotest.Buf{{Addr: a, Len: 100}, {Addr: a + 100, Len: vblk.HeaderLen + 1024 - 100}, {Addr: g.st, Len: 1, Write: true}}, 0)
	if disk, _ := be.snapshot(); !bytes.Equal(disk[4*512:4*512+1024], data) {
		t.Fatal("a write whose header shares a buffer with data did not land")
	}
	binary.LittleEndian.PutUint32(h[0:], vblk.TypeIn)
	g.d.Mem.Write(g.hdr, h[:])
	b := g.d.Alloc(1024 + 1)
	g.d.Mem.Write(g.st, []byte{0xee})
	st, _, n := g.submit([]virtiotest.Buf{{Addr: g.hdr, Len: vblk.HeaderLen}, {Addr: b, Len: 1025, Write: true}}, 0)
	got := make([]byte, 1025)
	g.d.Mem.Read(b, got)
	if st != 0xee || n != 1025 || !bytes.Equal(got[:1024], data) || got[1024] != vblk.StatusOK {
		t.Fatalf("a read whose status shares the data buffer: used %d, status byte %d", n, got[1024])
	}
}

// TestDiskFile: a real file: discard and write-zeroes read back as
// zeroes, a read-only open refuses writes at the file too, sizes that
// are not whole sectors are refused, and close flushes.
func TestDiskFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, pattern(1<<20, 2), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := vblk.OpenDisk(path, false)
	if err != nil {
		t.Fatal(err)
	}
	g := newGuest(t, vblk.Config{Backend: d}, 0)
	seg := make([]byte, 16)
	binary.LittleEndian.PutUint64(seg[0:], 8)
	binary.LittleEndian.PutUint32(seg[8:], 16)
	for _, typ := range []uint32{vblk.TypeWriteZeroes, vblk.TypeDiscard} {
		if typ == vblk.TypeDiscard && g.b.Features()&vblk.FeatureDiscard == 0 {
			continue // the host file system cannot punch holes
		}
		if st, _, _ := g.do(typ, 0, seg, 0); st != vblk.StatusOK {
			t.Fatalf("type %d: status %d", typ, st)
		}
		if _, got, _ := g.do(vblk.TypeIn, 8, nil, 16*512); !bytes.Equal(got, make([]byte, 16*512)) {
			t.Errorf("type %d: the range does not read back as zeroes", typ)
		}
		g.do(vblk.TypeOut, 8, pattern(16*512, 1), 0)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".odd", make([]byte, 1000), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := vblk.OpenDisk(path+".odd", true); err == nil {
		t.Error("a 1000-byte disk was accepted")
	}
	if _, err := vblk.OpenDisk(t.TempDir(), true); err == nil {
		t.Error("a directory was accepted as a disk")
	}
}

// TestLocks: a writable disk excludes every other open of it; read-only
// opens share; the refusal names the holder when it is another process.
func TestLocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	w, err := vblk.OpenDisk(path, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, ro := range []bool{false, true} {
		if _, err := vblk.OpenDisk(path, ro); !errors.Is(err, vblk.ErrLocked) {
			t.Errorf("open (read-only %v) beside a writer: %v, want ErrLocked", ro, err)
		}
	}
	w.Close()
	r1, err := vblk.OpenDisk(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := vblk.OpenDisk(path, true)
	if err != nil {
		t.Fatalf("a second read-only open: %v", err)
	}
	r2.Close()
	if _, err := vblk.OpenDisk(path, false); !errors.Is(err, vblk.ErrLocked) {
		t.Errorf("a writable open beside a reader: %v, want ErrLocked", err)
	}
}

// TestHoldersNamesProcess: a disk another process has open is named with
// that process's command and pid.
func TestHoldersNamesProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sleep", "60")
	held, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	cmd.ExtraFiles = []*os.File{held}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	held.Close()
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if got, want := vblk.Holders(f), fmt.Sprintf("sleep (pid %d)", cmd.Process.Pid); got != want {
		t.Errorf("Holders = %q, want %q", got, want)
	}
}

// TestLocksInteropWithQEMU: the lock bytes follow QEMU's scheme (a shared
// lock at 100+p: "uses permission p"; at 200+p: "lets nobody else have
// p"): a read-only disk denies nobody a consistent read, so QEMU may read
// it too; beside a QEMU reader popvmm may read but not write; beside a
// QEMU writer popvmm may do neither.
func TestLocksInteropWithQEMU(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	qemu := func(bytes ...int64) *os.File {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bytes {
			lk := unix.Flock_t{Type: unix.F_RDLCK, Start: b, Len: 1}
			if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
				t.Fatal(err)
			}
		}
		return f
	}
	denied := func(b int64) bool {
		f, _ := os.Open(path)
		defer f.Close()
		lk := unix.Flock_t{Type: unix.F_WRLCK, Start: b, Len: 1}
		unix.FcntlFlock(f.Fd(), unix.F_OFD_GETLK, &lk)
		return lk.Type != unix.F_UNLCK
	}
	ro, err := vblk.OpenDisk(path, true)
	if err != nil {
		t.Fatal(err)
	}
	if denied(200) {
		t.Error("a read-only disk denies others a consistent read (QEMU: \"Failed to get consistent read lock\")")
	}
	if !denied(201) {
		t.Error("a read-only disk lets others write it")
	}
	ro.Close()

	reader := qemu(100, 201) // QEMU readonly=on: reads, denies write
	if d, err := vblk.OpenDisk(path, true); err != nil {
		t.Errorf("read-only beside a QEMU reader: %v", err)
	} else {
		d.Close()
	}
	if _, err := vblk.OpenDisk(path, false); !errors.Is(err, vblk.ErrLocked) {
		t.Errorf("writable beside a QEMU reader: %v, want ErrLocked", err)
	}
	reader.Close()

	writer := qemu(100, 101, 201, 203) // QEMU writable: reads, writes, denies write and resize
	for _, readOnly := range []bool{true, false} {
		if _, err := vblk.OpenDisk(path, readOnly); !errors.Is(err, vblk.ErrLocked) {
			t.Errorf("read-only %v beside a QEMU writer: %v, want ErrLocked", readOnly, err)
		}
	}
	writer.Close()
}

// TestDiskVectored: preadv and pwritev over more buffers than one call
// takes (IOV_MAX), of odd sizes, land where ReadAt says; a read past the
// end is an error; and a device on a Disk reads a request scattered over
// several guest buffers in the right order.
func TestDiskVectored(t *testing.T) {
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := vblk.OpenDisk(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	want := pattern(3<<20, 7)
	var bufs [][]byte
	for rest := want; len(rest) > 0; {
		n := min(len(rest), 1+len(bufs)%3*1000) // 1, 1001, 2001, 1, ... bytes: about 2000 buffers
		bufs = append(bufs, rest[:n])
		rest = rest[n:]
	}
	if len(bufs) <= 1024 {
		t.Fatalf("only %d buffers", len(bufs))
	}
	if err := d.WritevAt(bufs, 4096); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if _, err := d.ReadAt(got, 4096); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("pwritev of %d buffers did not land as written (%v)", len(bufs), err)
	}
	var rb [][]byte
	back := make([]byte, len(want))
	for rest := back; len(rest) > 0; {
		n := min(len(rest), 1+len(rb)%3*1000)
		rb = append(rb, rest[:n])
		rest = rest[n:]
	}
	if err := d.ReadvAt(rb, 4096); err != nil || !bytes.Equal(back, want) {
		t.Fatalf("preadv of %d buffers: %v", len(rb), err)
	}
	if err := d.ReadvAt([][]byte{make([]byte, 8192)}, 4<<20-4096); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a read past the end: %v, want io.ErrUnexpectedEOF", err)
	}

	g := newGuest(t, vblk.Config{Backend: d}, 0)
	var h [vblk.HeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], vblk.TypeIn)
	binary.LittleEndian.PutUint64(h[8:], 8) // byte 4096: want[0:]
	g.d.Mem.Write(g.hdr, h[:])
	sizes := []uint32{512, 1536, 7, 4096 - 7, 2048}
	chain := []virtiotest.Buf{{Addr: g.hdr, Len: vblk.HeaderLen}}
	var addrs []uint64
	for _, n := range sizes {
		a := g.d.Alloc(uint64(n))
		addrs = append(addrs, a)
		chain = append(chain, virtiotest.Buf{Addr: a, Len: n, Write: true})
	}
	chain = append(chain, virtiotest.Buf{Addr: g.st, Len: 1, Write: true})
	if st, _, _ := g.submit(chain, 0); st != vblk.StatusOK {
		t.Fatalf("scattered read: status %d", st)
	}
	off := 0
	for i, n := range sizes {
		p := make([]byte, n)
		g.d.Mem.Read(addrs[i], p)
		if !bytes.Equal(p, want[off:off+int(n)]) {
			t.Fatalf("scattered read: buffer %d (%d bytes at request offset %d) holds the wrong bytes", i, n, off)
		}
		off += int(n)
	}
}

// BenchmarkRead1MScattered: one 1 MiB read of a disk file into 128
// scattered 8 KiB guest buffers (Linux's driver sends up to 256 pages
// through an indirect table for a 1 MiB O_DIRECT read; the test driver
// has direct descriptors only), from pop to completion: the device's cost
// per request beside the copy itself (compare BenchmarkPreadv1M).
func BenchmarkRead1MScattered(b *testing.B) {
	d := benchDisk(b)
	g := newGuest(b, vblk.Config{Backend: d}, 0)
	var h [vblk.HeaderLen]byte
	binary.LittleEndian.PutUint32(h[0:], vblk.TypeIn)
	g.d.Mem.Write(g.hdr, h[:])
	chain := []virtiotest.Buf{{Addr: g.hdr, Len: vblk.HeaderLen}}
	for range 128 {
		a := g.d.Alloc(8192 + 4096) // not adjacent to the previous buffer
		chain = append(chain, virtiotest.Buf{Addr: a, Len: 8192, Write: true})
	}
	chain = append(chain, virtiotest.Buf{Addr: g.st, Len: 1, Write: true})
	b.SetBytes(1 << 20)
	b.ResetTimer()
	for range b.N {
		if st, _, _ := g.submit(chain, 0); st != vblk.StatusOK {
			b.Fatalf("status %d", st)
		}
	}
}

// BenchmarkPreadv1M: the copy alone, one preadv of 1 MiB into 256 4 KiB
// buffers of the same file.
func BenchmarkPreadv1M(b *testing.B) {
	d := benchDisk(b)
	bufs := make([][]byte, 256)
	for i := range bufs {
		bufs[i] = make([]byte, 4096)
	}
	iov := make([][]byte, 256)
	b.SetBytes(1 << 20)
	for range b.N {
		copy(iov, bufs)
		if err := d.ReadvAt(iov, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func benchDisk(b *testing.B) *vblk.Disk {
	path := filepath.Join(b.TempDir(), "disk.img")
	if err := os.WriteFile(path, pattern(4<<20, 3), 0o600); err != nil {
		b.Fatal(err)
	}
	d, err := vblk.OpenDisk(path, true)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	return d
}
