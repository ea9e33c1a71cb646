package ipi_test

import (
	"encoding/binary"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/pci"
)

// fakeKVM is one VM's KVM as the window device's Wiring sees it: an MMIO
// bus, window slots, ioeventfds (refusing a duplicate address+datamatch as
// KVM does with EEXIST) and irqfds. guestWrite plays a guest store: an
// ioeventfd that matches signals its eventfd without an exit; anything
// else exits to the MMIO bus.
type fakeKVM struct {
	mu      sync.Mutex
	mmio    *bus.Bus
	bars    map[int]uint64
	window  map[uint64][]ipi.Slot
	ioev    map[ioevKey]int
	irqfds  map[int]int // vector → eventfd, while assigned
	routes  map[int]pci.MSIRoute
	exits   int
	changes chan string // every wiring call, when not nil (buffered)
}

type ioevKey struct {
	gpa  uint64
	len  uint32
	data uint64
}

func newFakeKVM() *fakeKVM {
	return &fakeKVM{mmio: bus.New("mmio", nil), bars: map[int]uint64{}, window: map[uint64][]ipi.Slot{},
		ioev: map[ioevKey]int{}, irqfds: map[int]int{}, routes: map[int]pci.MSIRoute{}}
}

func (k *fakeKVM) note(format string, args ...any) {
	if k.changes != nil {
		select {
		case k.changes <- fmt.Sprintf(format, args...):
		default:
		}
	}
}

func (k *fakeKVM) MapMMIO(bar int, gpa, size uint64, d bus.Device) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if err := k.mmio.Insert(d, fmt.Sprintf("BAR%d", bar), gpa, size); err != nil {
		return err
	}
	k.bars[bar] = gpa
	k.note("map BAR%d %#x", bar, gpa)
	return nil
}

func (k *fakeKVM) UnmapMMIO(bar int, gpa uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.mmio.Remove(gpa)
	delete(k.bars, bar)
	k.note("unmap BAR%d %#x", bar, gpa)
}

func (k *fakeKVM) MapWindow(gpa uint64, slots []ipi.Slot) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.window[gpa] = slots
	return nil
}

func (k *fakeKVM) UnmapWindow(gpa uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.window, gpa)
}

func (k *fakeKVM) AddIoeventfd(e ipi.Ioeventfd, fd int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := ioevKey{e.GPA, e.Len, e.Data}
	if _, dup := k.ioev[key]; dup {
		return fmt.Errorf("ioeventfd %#x=%#x: %w", e.GPA, e.Data, unix.EEXIST)
	}
	k.ioev[key] = fd
	k.note("add ioeventfd %#x=%#x", e.GPA, e.Data)
	return nil
}

func (k *fakeKVM) RemoveIoeventfd(e ipi.Ioeventfd, fd int) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := ioevKey{e.GPA, e.Len, e.Data}
	if got, ok := k.ioev[key]; !ok || got != fd {
		return fmt.Errorf("remove ioeventfd %#x=%#x fd %d: %w", e.GPA, e.Data, fd, unix.ENOENT)
	}
	delete(k.ioev, key)
	k.note("remove ioeventfd %#x=%#x", e.GPA, e.Data)
	return nil
}

func (k *fakeKVM) SetIrqfd(f ipi.Irqfd, fd int, r pci.MSIRoute) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if r.Masked {
		delete(k.irqfds, f.Vector)
	} else {
		k.irqfds[f.Vector] = fd
	}
	k.routes[f.Vector] = r
	k.note("irqfd %d masked %v", f.Vector, r.Masked)
	return nil
}

// guestWrite is a 4-byte guest store of v at gpa.
func (k *fakeKVM) guestWrite(gpa uint64, v uint32) {
	k.mu.Lock()
	fd, ok := k.ioev[ioevKey{gpa, 4, uint64(v)}]
	if ok {
		var one = [8]byte{1}
		unix.Write(fd, one[:])
		k.mu.Unlock()
		return
	}
	k.exits++
	k.mu.Unlock()
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	k.mmio.Write(gpa, b[:])
}

func (k *fakeKVM) guestRead(gpa uint64) uint32 {
	var b [4]byte
	k.mu.Lock()
	k.exits++
	k.mu.Unlock()
	k.mmio.Read(gpa, b[:])
	return binary.LittleEndian.Uint32(b[:])
}

func (k *fakeKVM) ioeventfds() map[ioevKey]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	m := make(map[ioevKey]int, len(k.ioev))
	for key, fd := range k.ioev {
		m[key] = fd
	}
	return m
}

func (k *fakeKVM) irqfd(vector int) (int, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	fd, ok := k.irqfds[vector]
	return fd, ok
}

func (k *fakeKVM) exitCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.exits
}

// fakeIRQ is an INTx line: its level, and every change on a channel.
type fakeIRQ struct {
	mu      sync.Mutex
	level   bool
	changes chan bool
}

func newFakeIRQ() *fakeIRQ { return &fakeIRQ{changes: make(chan bool, 1024)} }

func (q *fakeIRQ) Set(level bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.level = level
	select {
	case q.changes <- level:
	default:
	}
}

func (q *fakeIRQ) Level() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.level
}

// waitLevel waits until the line is at level.
func (q *fakeIRQ) waitLevel(t *testing.T, level bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for q.Level() != level {
		select {
		case <-q.changes:
		case <-deadline:
			t.Fatalf("INTx line not %v within 10s", level)
		}
	}
}

// waitEventfd waits until eventfd fd has been signalled and returns its
// count (reading it resets it).
func waitEventfd(t *testing.T, fd int) uint64 {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		ms := int(time.Until(deadline) / time.Millisecond)
		if ms <= 0 {
			t.Fatalf("eventfd %d not signalled within 10s", fd)
		}
		n, err := unix.Poll(fds, ms)
		if err == unix.EINTR || n == 0 {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		var b [8]byte
		if r, err := unix.Read(fd, b[:]); r == 8 && err == nil {
			return binary.LittleEndian.Uint64(b[:])
		}
	}
}

// eventfdCount reads eventfd fd without waiting: 0 when it was not
// signalled.
func eventfdCount(fd int) uint64 {
	var b [8]byte
	if n, _ := unix.Read(fd, b[:]); n != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

// vm is one kernel's window device on a fake KVM.
type vm struct {
	dev *ipi.Device
	kvm *fakeKVM
	irq *fakeIRQ
}

// Default BAR placement in the tests.
const (
	testRegs   = 0xe000_0000
	testMSIX   = 0xe000_1000
	testWindow = 0x1_0000_0000
)

// newVM makes and wires kernel peer's device over bells.
func newVM(t testing.TB, bells *ipi.Doorbells, peer int, windowSize uint64, slots []ipi.Slot) *vm {
	t.Helper()
	v := &vm{kvm: newFakeKVM(), irq: newFakeIRQ()}
	regs := uint64(testRegs) + uint64(peer)<<16
	dev, err := ipi.NewDevice(ipi.DeviceConfig{Peer: peer, Bells: bells, WindowSize: windowSize, Slots: slots,
		Regs: regs, MSIX: regs + 0x1000, Window: testWindow, IRQ: v.irq, IntLine: 11, Wiring: v.kvm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if err := dev.Wire(); err != nil {
		t.Fatal(err)
	}
	v.dev = dev
	return v
}

func (v *vm) regs() uint64 {
	v.kvm.mu.Lock()
	defer v.kvm.mu.Unlock()
	return v.kvm.bars[ipi.RegsBAR]
}

// msixCap is where the device's MSI-X capability sits (the first and only
// one).
const msixCap = 0x40

// enableMSIX turns MSI-X on with every vector unmasked, each with its own
// message.
func (v *vm) enableMSIX(t testing.TB, vectors int) {
	t.Helper()
	m := v.dev.MSIX()
	for i := range vectors {
		var e [16]byte
		binary.LittleEndian.PutUint32(e[0:], 0xfee0_0000)
		binary.LittleEndian.PutUint32(e[8:], uint32(0x40+i))
		m.Write(uint64(16*i), e[0:8])
		m.Write(uint64(16*i+8), e[8:16]) // data, vector control 0: unmasked
	}
	v.dev.ConfigWrite(msixCap+3, []byte{0x80}) // message control: enable
}

func (v *vm) disableMSIX() { v.dev.ConfigWrite(msixCap+3, []byte{0}) }

func newBells(t testing.TB, kernels, hosts, vectors int) *ipi.Doorbells {
	t.Helper()
	b, err := ipi.NewDoorbells(kernels, hosts, vectors)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

// waitFor polls ok until it holds, failing after 10s; for state that has no
// event of its own to wait on.
func waitFor(t testing.TB, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within 10s", what)
		}
		runtime.Gosched()
	}
}
