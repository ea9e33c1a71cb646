package vblk_test

import (
	"encoding/binary"
	"io"
	"testing"

	"github.com/popvmm/popvmm/vblk"
	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vmm/virtio/virtiotest"
)

// FuzzBlockDevice replays register accesses and a guest-memory image (the
// queue's rings and requests) against a virtio-blk device on an
// in-memory disk, moved a buffer at a time (Backend) and a request at a
// time (VectorBackend, as Disk): nothing may panic or hang, a read-only
// disk is never written, and a reset always brings the device back to
// status 0.
func FuzzBlockDevice(f *testing.F) {
	setup := virtiotest.SetupProgram(0x40, ^uint64(0)>>31, 1) // every feature the seed can name
	request := func(typ uint32, sector uint64, flags []uint16, lens []uint32, data []byte) []byte {
		img := make([]byte, 0xc00)
		binary.LittleEndian.PutUint32(img[0x800:], typ)
		binary.LittleEndian.PutUint64(img[0x808:], sector)
		copy(img[0x900:], data)
		virtiotest.Chain(img, 0, 0x800, flags, lens)
		return virtiotest.Program(setup, img)
	}
	w := uint16(virtio.DescWrite)
	seg := make([]byte, 16)
	binary.LittleEndian.PutUint32(seg[8:], 1)
	f.Add(request(vblk.TypeIn, 0, []uint16{0, w, w}, []uint32{16, 0x200, 1}, nil))
	f.Add(request(vblk.TypeIn, 1, []uint16{0, w, w}, []uint32{16, 0x200, 1}, nil))
	f.Add(request(vblk.TypeOut, 2, []uint16{0, 0, w}, []uint32{16, 0x200, 1}, nil))
	f.Add(request(vblk.TypeFlush, 0, []uint16{0, w}, []uint32{16, 1}, nil))
	f.Add(request(vblk.TypeGetID, 0, []uint16{0, w, w}, []uint32{16, 20, 1}, nil))
	f.Add(request(vblk.TypeDiscard, 0, []uint16{0, 0, w}, []uint32{16, 16, 1}, seg))
	f.Add(request(vblk.TypeWriteZeroes, 0, []uint16{0, 0, w}, []uint32{16, 16, 1}, seg))
	f.Add(request(vblk.TypeIn, 0, []uint16{0, w}, []uint32{8, 1}, nil)) // a short header
	f.Add(request(vblk.TypeIn, 1<<60, []uint16{0, w, w}, []uint32{16, 0x200, 1}, nil))
	f.Fuzz(func(t *testing.T, prog []byte) {
		for i := range 4 {
			ro, vectored := i&1 == 1, i&2 == 2
			ram, mem := virtiotest.NewMemorySize(t, 0x10000)
			be := &memBackend{data: make([]byte, 64<<10)}
			var backend vblk.Backend = be
			if vectored {
				backend = vecBackend{be}
			}
			b, err := vblk.New(vblk.Config{Backend: backend, ReadOnly: ro, Serial: "fuzz", QueueSize: 16, Workers: 2})
			if err != nil {
				t.Fatal(err)
			}
			p, err := virtio.NewPCI(b, virtio.PCIConfig{Mem: mem, BARAddr: 0xc000_0000, Router: virtiotest.NewRouter(2)})
			if err != nil {
				t.Fatal(err)
			}
			d := virtiotest.New(t, p, ram, mem)
			virtiotest.Replay(d, prog, virtio.BARSize)
			d.SetStatus(0)
			if s := d.Status(); s != 0 {
				t.Fatalf("status %#x after reset", s)
			}
			b.Close()
			if ro && b.Stats().Writes != 0 {
				t.Fatalf("a read-only disk took %d writes", b.Stats().Writes)
			}
			disk, _ := be.snapshot()
			for _, c := range disk {
				if ro && c != 0 {
					t.Fatal("a read-only disk was written")
				}
			}
		}
	})
}

// vecBackend is memBackend as a VectorBackend: a request's buffers in one
// call, and a transfer past the end an error, as preadv's short read is.
type vecBackend struct{ *memBackend }

func (v vecBackend) ReadvAt(bufs [][]byte, off int64) error {
	return v.vec(bufs, off, v.ReadAt)
}

func (v vecBackend) WritevAt(bufs [][]byte, off int64) error {
	return v.vec(bufs, off, v.WriteAt)
}

func (v vecBackend) vec(bufs [][]byte, off int64, op func([]byte, int64) (int, error)) error {
	for _, p := range bufs {
		if off < 0 || off+int64(len(p)) > int64(len(v.data)) {
			return io.ErrUnexpectedEOF
		}
		if _, err := op(p, off); err != nil {
			return err
		}
		off += int64(len(p))
	}
	return nil
}
