package vmm_test

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/bus"
)

var le = binary.LittleEndian

// port is a one-byte register that records writes.
type port struct {
	val     byte
	written []byte
}

func (p *port) Read(_ uint64, d []byte) {
	for i := range d {
		d[i] = p.val
	}
}
func (p *port) Write(_ uint64, d []byte) { p.written = append(p.written, d...) }

func buses(t *testing.T) (*bus.Bus, *bus.Bus, *port, *port) {
	pio, mmio := bus.New("pio", nil), bus.New("mmio", nil)
	com, dev := &port{val: 0x60}, &port{val: 0xab}
	if err := pio.Insert(com, "com1", 0x3f8, 8); err != nil {
		t.Fatal(err)
	}
	if err := mmio.Insert(dev, "dev", 0xd0000000, 0x1000); err != nil {
		t.Fatal(err)
	}
	return pio, mmio, com, dev
}

func runPage(reason uint32) []byte {
	r := make([]byte, 4096)
	le.PutUint32(r[8:], reason)
	return r
}

func ioExit(out bool, port uint16, size uint8, count uint32, data []byte) []byte {
	r := runPage(vmm.ExitIO)
	if out {
		r[32] = 1
	}
	r[33] = size
	le.PutUint16(r[34:], port)
	le.PutUint32(r[36:], count)
	le.PutUint64(r[40:], 0x800)
	copy(r[0x800:], data)
	return r
}

func TestPortIO(t *testing.T) {
	pio, mmio, com, _ := buses(t)
	// outsb of "hi" (a string I/O of count 2).
	a, e, err := vmm.HandleExit(ioExit(true, 0x3f8, 1, 2, []byte("hi")), pio, mmio)
	if err != nil || a != vmm.ActionContinue || string(com.written) != "hi" {
		t.Fatalf("out: %v %v written %q", a, err, com.written)
	}
	if got, want := e.String(), "io out 0x3f8 (2 bytes)"; got != want {
		t.Errorf("exit %q, want %q", got, want)
	}
	// inb from LSR: the device's byte lands in the run page.
	r := ioExit(false, 0x3fd, 1, 1, nil)
	if a, _, err := vmm.HandleExit(r, pio, mmio); err != nil || a != vmm.ActionContinue || r[0x800] != 0x60 {
		t.Fatalf("in: %v %v data %#x", a, err, r[0x800])
	}
	// Nobody at port 0x80: reads all ones.
	r = ioExit(false, 0x80, 2, 1, nil)
	vmm.HandleExit(r, pio, mmio)
	if le.Uint16(r[0x800:]) != 0xffff {
		t.Errorf("unclaimed inw = %#x", le.Uint16(r[0x800:]))
	}
}

func TestMMIO(t *testing.T) {
	pio, mmio, _, dev := buses(t)
	r := runPage(vmm.ExitMMIO)
	le.PutUint64(r[32:], 0xd0000010)
	le.PutUint32(r[48:], 4)
	if a, _, err := vmm.HandleExit(r, pio, mmio); err != nil || a != vmm.ActionContinue || le.Uint32(r[40:]) != 0xabababab {
		t.Fatalf("mmio read: %v %v %#x", a, err, le.Uint32(r[40:]))
	}
	r[52] = 1
	copy(r[40:], []byte{1, 2, 3, 4})
	if _, e, _ := vmm.HandleExit(r, pio, mmio); e.String() != "mmio write 0xd0000010 (4 bytes)" {
		t.Errorf("exit %q, want \"mmio write 0xd0000010 (4 bytes)\"", e)
	}
	if string(dev.written) != "\x01\x02\x03\x04" {
		t.Errorf("mmio write %v", dev.written)
	}
}

func TestLifecycleExits(t *testing.T) {
	pio, mmio, _, _ := buses(t)
	sys := func(typ uint32) []byte {
		r := runPage(vmm.ExitSystemEvent)
		le.PutUint32(r[32:], typ)
		return r
	}
	internal := runPage(vmm.ExitInternalError)
	le.PutUint32(internal[32:], 1) // emulation failure
	le.PutUint32(internal[36:], 2)
	le.PutUint64(internal[40:], 0x0f0b)
	tests := []struct {
		name   string
		run    []byte
		want   vmm.Action
		detail string
	}{
		{"hlt", runPage(vmm.ExitHLT), vmm.ActionHalt, ""},
		{"signal", runPage(vmm.ExitIntr), vmm.ActionContinue, ""},
		{"triple fault", runPage(vmm.ExitShutdown), vmm.ActionCrash, "triple fault"},
		{"poweroff", sys(1), vmm.ActionPowerOff, ""},
		{"reset", sys(2), vmm.ActionReset, ""},
		{"guest crash", sys(3), vmm.ActionCrash, "guest reported a crash"},
		{"emulation failure", internal, vmm.ActionCrash, "internal error, suberror 1 0xf0b 0x0"},
		{"fail entry", runPage(vmm.ExitFailEntry), vmm.ActionCrash, "hardware entry failure"},
		{"unknown", runPage(99), vmm.ActionCrash, "unexpected exit exit99"},
	}
	for _, tt := range tests {
		a, e, err := vmm.HandleExit(tt.run, pio, mmio)
		if err != nil || a != tt.want || !strings.Contains(e.Detail, tt.detail) {
			t.Errorf("%s: %v %+v %v, want %v with %q", tt.name, a, e, err, tt.want, tt.detail)
		}
	}
}

func TestHostileExits(t *testing.T) {
	pio, mmio, _, _ := buses(t)
	bad := ioExit(true, 0x3f8, 1, 1, nil)
	le.PutUint64(bad[40:], 1<<40) // data offset outside the page
	if a, _, err := vmm.HandleExit(bad, pio, mmio); err == nil || a != vmm.ActionCrash {
		t.Errorf("data offset outside kvm_run: %v %v", a, err)
	}
	huge := ioExit(true, 0x3f8, 4, 1<<30, nil)
	if _, _, err := vmm.HandleExit(huge, pio, mmio); err == nil {
		t.Error("a 4 GiB string I/O was accepted")
	}
	odd := ioExit(true, 0x3f8, 3, 1, nil)
	if _, _, err := vmm.HandleExit(odd, pio, mmio); err == nil {
		t.Error("3-byte port I/O accepted")
	}
	r := runPage(vmm.ExitMMIO)
	le.PutUint32(r[48:], 9)
	if _, _, err := vmm.HandleExit(r, pio, mmio); err == nil {
		t.Error("9-byte MMIO accepted")
	}
	if _, _, err := vmm.HandleExit(make([]byte, 100), pio, mmio); err == nil {
		t.Error("short kvm_run accepted")
	}
}

func TestImmediateExit(t *testing.T) {
	r := runPage(0)
	vmm.SetImmediateExit(r, true)
	if r[1] != 1 {
		t.Error("immediate_exit not set")
	}
	vmm.SetImmediateExit(r, false)
	if r[1] != 0 {
		t.Error("immediate_exit not cleared")
	}
}

// FuzzHandleExit: any kvm_run page content yields an action, never a
// panic.
func FuzzHandleExit(f *testing.F) {
	f.Add(ioExit(true, 0x3f8, 1, 2, []byte("hi")))
	f.Add(runPage(vmm.ExitMMIO))
	f.Fuzz(func(t *testing.T, page []byte) {
		pio, mmio, _, _ := buses(t)
		vmm.HandleExit(page, pio, mmio)
	})
}
