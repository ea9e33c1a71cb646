package bus_test

import (
	"bytes"
	"errors"
	"sync"
	"testing"

	"github.com/popvmm/popvmm/vmm/bus"
)

// regs is a device with 16 byte-wide registers that records accesses.
type regs struct {
	mu   sync.Mutex
	mem  [16]byte
	last uint64
}

func (r *regs) Read(off uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = off
	for i := range data {
		data[i] = r.mem[(int(off)+i)%16]
	}
}

func (r *regs) Write(off uint64, data []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last = off
	for i := range data {
		r.mem[(int(off)+i)%16] = data[i]
	}
}

func TestInsertOverlap(t *testing.T) {
	b := bus.New("pio", nil)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.Insert(&regs{}, "com1", 0x3f8, 8))
	must(b.Insert(&regs{}, "pci", 0xcf8, 8))
	must(b.Insert(&regs{}, "adjacent", 0x400, 8)) // right after com1's neighbourhood
	tests := []struct {
		base, size uint64
	}{
		{0x3f8, 8}, {0x3f0, 9}, {0x3ff, 1}, {0x3fc, 2}, {0xcf0, 0x100}, {0x0, 0x10000},
	}
	for _, tt := range tests {
		if err := b.Insert(&regs{}, "x", tt.base, tt.size); !errors.Is(err, bus.ErrOverlap) {
			t.Errorf("Insert(%#x, %#x) = %v, want ErrOverlap", tt.base, tt.size, err)
		}
	}
	if err := b.Insert(&regs{}, "x", 0x10, 0); err == nil {
		t.Error("empty range accepted")
	}
	if err := b.Insert(&regs{}, "x", ^uint64(0)-1, 4); err == nil {
		t.Error("wrapping range accepted")
	}
	must(b.Insert(&regs{}, "gap", 0x3f0, 8)) // exactly fills the gap before com1
}

func TestDispatch(t *testing.T) {
	b := bus.New("mmio", nil)
	dev := &regs{}
	if err := b.Insert(dev, "dev", 0x1000, 16); err != nil {
		t.Fatal(err)
	}
	if !b.Write(0x1004, []byte{1, 2, 3, 4}) || dev.last != 4 {
		t.Fatalf("write not dispatched at offset 4 (last %d)", dev.last)
	}
	got := make([]byte, 4)
	if !b.Read(0x1004, got) || !bytes.Equal(got, []byte{1, 2, 3, 4}) {
		t.Errorf("read back %v", got)
	}
	// Unclaimed: all ones, not claimed.
	if b.Read(0x2000, got) || !bytes.Equal(got, []byte{0xff, 0xff, 0xff, 0xff}) {
		t.Errorf("unclaimed read = %v", got)
	}
	// Straddling the device's end is not the device's.
	if b.Read(0x100e, got) {
		t.Error("a read straddling the device's end was claimed")
	}
	if b.Write(0xfff, []byte{9, 9}) {
		t.Error("a write straddling the device's start was claimed")
	}
	if !b.Remove(0x1000) || b.Remove(0x1000) {
		t.Error("Remove did not remove exactly once")
	}
	if b.Read(0x1004, got) {
		t.Error("removed device still answers")
	}
}

func TestConcurrent(t *testing.T) {
	b := bus.New("mmio", nil)
	for i := range 64 {
		if err := b.Insert(&regs{}, "d", uint64(i)*0x100, 0x10); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			buf := make([]byte, 4)
			for i := range 2000 {
				addr := uint64((i*7+w)%64)*0x100 + 4
				b.Write(addr, buf)
				b.Read(addr, buf)
			}
		})
	}
	wg.Go(func() {
		for i := range 200 {
			b.Insert(&regs{}, "late", 0x10000+uint64(i)*0x10, 0x10)
		}
	})
	wg.Wait()
}

// FuzzBus replays (op, address, size) triples against a bus with a few
// devices: no access may panic, and unclaimed reads are all ones.
func FuzzBus(f *testing.F) {
	f.Add([]byte{0, 0xf8, 0x03, 1, 1, 0xfc, 0x0c, 4})
	f.Fuzz(func(t *testing.T, ops []byte) {
		b := bus.New("pio", nil)
		b.Insert(&regs{}, "com1", 0x3f8, 8)
		b.Insert(&regs{}, "pci", 0xcf8, 8)
		for len(ops) >= 4 {
			op, addr, size := ops[0], uint64(ops[1])|uint64(ops[2])<<8, []int{1, 2, 4, 8}[ops[3]%4]
			ops = ops[4:]
			data := make([]byte, size)
			if op%2 == 0 {
				if !b.Read(addr, data) && !bytes.Equal(data, bytes.Repeat([]byte{0xff}, size)) {
					t.Fatalf("unclaimed read at %#x = %v", addr, data)
				}
			} else {
				b.Write(addr, data)
			}
		}
	})
}

// slowDev blocks in Write until released, and records whether Remove had
// already returned when the access finished.
type slowDev struct {
	entered, release, removed chan struct{}
	removedEarly              bool
}

func (d *slowDev) Read(uint64, []byte) {}
func (d *slowDev) Write(uint64, []byte) {
	close(d.entered)
	<-d.release
	select {
	case <-d.removed:
		d.removedEarly = true
	default:
	}
}

func TestRemoveWaitsForAccess(t *testing.T) {
	b := bus.New("pio", nil)
	d := &slowDev{entered: make(chan struct{}), release: make(chan struct{}), removed: make(chan struct{})}
	if err := b.Insert(d, "slow", 0x10, 1); err != nil {
		t.Fatal(err)
	}
	accessed := make(chan struct{})
	go func() {
		b.Write(0x10, []byte{1})
		close(accessed)
	}()
	<-d.entered
	go func() {
		b.Remove(0x10)
		close(d.removed)
	}()
	close(d.release)
	<-accessed
	<-d.removed
	if d.removedEarly {
		t.Error("Remove returned while an access to the device was in flight")
	}
	if b.Write(0x10, []byte{1}) {
		t.Error("removed device still claims writes")
	}
}
