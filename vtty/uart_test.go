package vtty_test

import (
	"bytes"
	"sync"
	"testing"

	"github.com/popvmm/popvmm/vtty"
)

// line records the interrupt line.
type line struct {
	mu    sync.Mutex
	level bool
	edges int
}

func (l *line) Set(v bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.level = v
	l.edges++
}

func (l *line) get() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.level
}

func newUART() (*vtty.UART, *bytes.Buffer, *line) {
	var out bytes.Buffer
	irq := &line{}
	return vtty.NewUART(&out, irq), &out, irq
}

func rd(u *vtty.UART, off uint64) byte {
	b := []byte{0}
	u.Read(off, b)
	return b[0]
}

func wr(u *vtty.UART, off uint64, v byte) { u.Write(off, []byte{v}) }

// The register offsets, named as in the data sheet.
const (
	THR, RBR, IER, IIR, FCR, LCR, MCR, LSR, MSR, SCR = 0, 0, 1, 2, 2, 3, 4, 5, 6, 7
)

func TestTransmit(t *testing.T) {
	u, out, _ := newUART()
	for _, b := range []byte("Linux version 6.1\n") {
		if rd(u, LSR)&0x20 == 0 {
			t.Fatal("THRE clear: the driver would wait forever")
		}
		wr(u, THR, b)
	}
	if out.String() != "Linux version 6.1\n" {
		t.Errorf("out = %q", out.String())
	}
}

func TestReceiveAndInterrupt(t *testing.T) {
	u, _, irq := newUART()
	wr(u, MCR, 0x08) // OUT2: interrupts reach the PIC
	wr(u, IER, 0x01) // receive interrupt
	if irq.get() || rd(u, IIR)&1 != 1 {
		t.Fatal("interrupt pending with nothing received")
	}
	if n := u.Receive([]byte("ls\n")); n != 3 {
		t.Fatalf("Receive took %d", n)
	}
	if !irq.get() || rd(u, IIR)&0x0f != 0x04 || rd(u, LSR)&1 != 1 {
		t.Fatal("no receive interrupt / data ready")
	}
	var got []byte
	for rd(u, LSR)&1 == 1 {
		got = append(got, rd(u, RBR))
	}
	if string(got) != "ls\n" || irq.get() {
		t.Errorf("read %q, line still %v", got, irq.get())
	}
	// Without OUT2 the line stays low even with data pending.
	wr(u, MCR, 0)
	u.Receive([]byte("x"))
	if irq.get() {
		t.Error("interrupt raised without OUT2")
	}
}

func TestTHREInterrupt(t *testing.T) {
	u, _, irq := newUART()
	wr(u, MCR, 0x08)
	wr(u, IER, 0x02) // enabling THRE with THR empty interrupts at once
	if !irq.get() || rd(u, IIR)&0x0f != 0x02 {
		t.Fatal("no THR-empty interrupt after enabling it")
	}
	// Reading IIR (above) cleared it.
	if irq.get() || rd(u, IIR)&1 != 1 {
		t.Fatal("THR-empty interrupt not cleared by reading IIR")
	}
	wr(u, THR, 'a') // transmit: empties at once, interrupts again
	if !irq.get() {
		t.Fatal("no THR-empty interrupt after a write")
	}
	wr(u, IER, 0)
	if irq.get() {
		t.Error("line high with interrupts disabled")
	}
}

func TestDivisorScratchFIFO(t *testing.T) {
	u, out, _ := newUART()
	wr(u, LCR, 0x83) // DLAB, 8N1
	wr(u, 0, 0x01)   // DLL: 115200 baud
	wr(u, 1, 0x00)   // DLM
	if rd(u, 0) != 1 || rd(u, 1) != 0 || out.Len() != 0 {
		t.Fatal("divisor latch not separate from THR/IER")
	}
	wr(u, LCR, 0x03)
	if rd(u, LCR) != 0x03 {
		t.Error("LCR not kept")
	}
	wr(u, SCR, 0x5a)
	if rd(u, SCR) != 0x5a {
		t.Error("scratch register lost its value (the 8250 probe needs it)")
	}
	wr(u, FCR, 0x07)
	if rd(u, IIR)&0xc0 != 0xc0 {
		t.Error("FIFOs not reported as a 16550A's")
	}
	u.Receive([]byte("abc"))
	wr(u, FCR, 0x03) // clear receive FIFO
	if rd(u, LSR)&1 != 0 {
		t.Error("receive FIFO not cleared")
	}
}

func TestLoopbackAndModem(t *testing.T) {
	u, out, irq := newUART()
	wr(u, MCR, 0x1b) // loopback, OUT2, RTS, DTR
	wr(u, THR, 'z')
	if out.Len() != 0 || rd(u, LSR)&1 != 1 || rd(u, RBR) != 'z' {
		t.Fatal("loopback byte not received")
	}
	if m := rd(u, MSR); m&0xf0 != 0xb0 {
		t.Errorf("loopback MSR = %#x, want CTS|DSR|DCD", m)
	}
	wr(u, MCR, 0x08)
	wr(u, IER, 0x08) // modem status interrupt
	u.SetCarrier(false)
	if !irq.get() || rd(u, IIR)&0x0f != 0x00 {
		t.Fatal("no modem status interrupt on carrier loss")
	}
	if m := rd(u, MSR); m&0x88 != 0x08 {
		t.Errorf("MSR = %#x, want DCD off with its delta", m)
	}
	if irq.get() {
		t.Error("modem interrupt not cleared by reading MSR")
	}
}

func TestOverrun(t *testing.T) {
	u, _, _ := newUART()
	if n := u.Receive(make([]byte, vtty.RxCapacity+10)); n != vtty.RxCapacity {
		t.Errorf("Receive took %d, want %d", n, vtty.RxCapacity)
	}
}

// FuzzUART replays (offset, value, read/write) triples and host input:
// nothing panics, and the interrupt line always equals "an interrupt is
// pending (IIR bit 0 clear) and OUT2 is set".
func FuzzUART(f *testing.F) {
	f.Add([]byte{4, 8, 1, 1, 15, 1, 0, 'a', 1, 2, 0, 0, 5, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		u, _, irq := newUART()
		for len(ops) >= 3 {
			off, v, op := uint64(ops[0]%9), ops[1], ops[2]
			ops = ops[3:]
			switch op % 4 {
			case 0:
				rd(u, off)
			case 1:
				wr(u, off, v)
			case 2:
				u.Receive([]byte{v})
			case 3:
				u.SetCarrier(v&1 == 1)
			}
			pending, level := u.Pending()
			mcr := rd(u, MCR)
			if want := pending && mcr&0x08 != 0; level != want || irq.get() != want {
				t.Fatalf("pending %v, OUT2 %v: line %v (irq saw %v), want %v", pending, mcr&0x08 != 0, level, irq.get(), want)
			}
		}
	})
}
