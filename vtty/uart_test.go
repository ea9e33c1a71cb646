package vtty_test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

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

// TestOverrun: input the receive queue cannot hold is lost as on a real
// line, and the guest is told: LSR.OE, and a receiver-line-status
// interrupt (IIR 0x06, above received data) while IER.ELSI is set. Reading
// LSR clears both.
func TestOverrun(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fill  func(u *vtty.UART) // leaves the queue full, or not
		taken int
		oe    bool
	}{
		{"one burst too many", func(u *vtty.UART) { u.Receive(make([]byte, vtty.RxCapacity+10)) }, vtty.RxCapacity, true},
		{"exactly full", func(u *vtty.UART) { u.Receive(make([]byte, vtty.RxCapacity)) }, vtty.RxCapacity, false},
		{"byte by byte", func(u *vtty.UART) {
			for range vtty.RxCapacity + 1 {
				u.Receive([]byte{'x'})
			}
		}, vtty.RxCapacity, true},
		{"the last byte of a burst", func(u *vtty.UART) {
			u.Receive(make([]byte, vtty.RxCapacity-1))
			if n := u.Receive([]byte("ab")); n != 1 {
				t.Errorf("Receive(2 bytes, 1 free) took %d, want 1", n)
			}
		}, vtty.RxCapacity, true},
		{"loopback", func(u *vtty.UART) {
			u.Receive(make([]byte, vtty.RxCapacity))
			wr(u, MCR, 0x18) // loopback, OUT2
			wr(u, THR, 'z')
		}, vtty.RxCapacity, true},
		{"while DLAB is set", func(u *vtty.UART) {
			wr(u, LCR, 0x83)
			u.Receive(make([]byte, vtty.RxCapacity+1))
			wr(u, LCR, 0x03)
		}, vtty.RxCapacity, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _, irq := newUART()
			wr(u, MCR, 0x08)      // OUT2
			wr(u, IER, 0x04|0x01) // line status and received data
			tc.fill(u)
			wantIIR := byte(0x04)
			if tc.oe {
				wantIIR = 0x06
			}
			if id := rd(u, IIR) & 0x0f; id != wantIIR || !irq.get() {
				t.Errorf("IIR = %#x, line %v; want %#x, line high", id, irq.get(), wantIIR)
			}
			if lsr := rd(u, LSR); lsr&0x02 != 0 != tc.oe || lsr&0x01 == 0 {
				t.Errorf("LSR = %#x, want OE %v and DR", lsr, tc.oe)
			}
			if lsr := rd(u, LSR); lsr&0x02 != 0 {
				t.Errorf("second LSR = %#x: OE not cleared by reading LSR", lsr)
			}
			if id := rd(u, IIR) & 0x0f; id != 0x04 {
				t.Errorf("IIR after reading LSR = %#x, want received data (0x04)", id)
			}
			taken := 0
			for rd(u, LSR)&0x01 != 0 {
				rd(u, RBR)
				taken++
			}
			if taken != tc.taken || irq.get() {
				t.Errorf("guest read %d bytes, want %d; line %v after", taken, tc.taken, irq.get())
			}
		})
	}
}

// TestOverrunInterruptMasked: with IER.ELSI clear, OE is still reported in
// LSR, and enabling ELSI afterwards raises the interrupt it was owed.
func TestOverrunInterruptMasked(t *testing.T) {
	u, _, irq := newUART()
	wr(u, MCR, 0x08)
	u.Receive(make([]byte, vtty.RxCapacity+1))
	if irq.get() {
		t.Fatal("line high with IER = 0")
	}
	wr(u, IER, 0x04)
	if !irq.get() || rd(u, IIR)&0x0f != 0x06 {
		t.Fatal("no line-status interrupt once ELSI is enabled")
	}
	if rd(u, LSR)&0x02 == 0 || irq.get() {
		t.Errorf("OE lost, or line %v after reading LSR", irq.get())
	}
}

// TestIIRPriority: with several sources pending, IIR names the highest
// (line status, received data, THR empty, modem status), and each clears
// by its own action to reveal the next.
func TestIIRPriority(t *testing.T) {
	u, _, irq := newUART()
	wr(u, MCR, 0x08)
	u.Receive(make([]byte, vtty.RxCapacity+1)) // OE and data
	u.SetCarrier(false)                        // modem status delta
	wr(u, IER, 0x0f)                           // all four; THR empty too
	for _, step := range []struct {
		iir   byte
		clear func()
	}{
		{0x06, func() { rd(u, LSR) }},
		{0x04, func() { wr(u, FCR, 0x07) }},
		{0x02, func() {}}, // reading IIR cleared it
		{0x00, func() { rd(u, MSR) }},
		{0x01, func() {}},
	} {
		id := rd(u, IIR)
		if id&0x0f != step.iir {
			t.Fatalf("IIR = %#x, want %#x", id, step.iir)
		}
		if want := step.iir != 0x01; irq.get() != want {
			t.Errorf("IIR %#x: line %v, want %v", step.iir, irq.get(), want)
		}
		step.clear()
	}
}

// TestFIFOTrigger: with the FIFOs on, received data interrupts as "data
// available" (0x04) from the FCR trigger level up and as a character
// timeout (0x0c) below it; without FIFOs any byte is "data available".
func TestFIFOTrigger(t *testing.T) {
	for _, tc := range []struct {
		fcr  byte
		n    int
		want byte
	}{
		{0x00, 1, 0x04},
		{0x01, 1, 0x04}, // trigger 1
		{0x41, 3, 0x0c}, // trigger 4
		{0x41, 4, 0x04},
		{0x81, 7, 0x0c}, // trigger 8
		{0x81, 8, 0x04},
		{0xc1, 13, 0x0c}, // trigger 14
		{0xc1, 14, 0x04},
		{0xc1, 100, 0x04},
		{0xc0, 1, 0x04}, // FCR0 clear: the trigger bits are not programmed
	} {
		u, _, irq := newUART()
		wr(u, MCR, 0x08)
		wr(u, FCR, tc.fcr)
		wr(u, IER, 0x01)
		u.Receive(make([]byte, tc.n))
		if id := rd(u, IIR) & 0x0f; id != tc.want || !irq.get() {
			t.Errorf("FCR %#x, %d bytes: IIR = %#x, line %v; want %#x, line high", tc.fcr, tc.n, id, irq.get(), tc.want)
		}
	}
}

// TestFCRClearsReceiver: clearing the receive FIFO, or turning the FIFOs
// off, drops its bytes, DR and the receive interrupt with them.
func TestFCRClearsReceiver(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before byte // FCR before the input arrives
		fcr    byte
		clears bool
	}{
		{"clear receive FIFO", 0x01, 0x03, true},
		{"clear transmit FIFO only", 0x01, 0x05, false},
		{"FIFOs off", 0x01, 0x00, true},
		{"FIFOs stay on", 0x01, 0xc1, false},
		{"FIFOs were off", 0x00, 0x00, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			u, _, irq := newUART()
			wr(u, MCR, 0x08)
			wr(u, FCR, tc.before)
			wr(u, IER, 0x01)
			u.Receive([]byte("abc"))
			wr(u, FCR, tc.fcr)
			dr := rd(u, LSR)&0x01 != 0
			if dr == tc.clears || irq.get() == tc.clears {
				t.Errorf("FCR %#x after %#x: DR %v, line %v; want both %v", tc.fcr, tc.before, dr, irq.get(), !tc.clears)
			}
		})
	}
}

// TestModemDeltas: every change of a modem status input sets its delta
// bit (TERI only when RI turns off) and interrupts with IER.EDSSI; in
// loopback the inputs are the MCR outputs and the external DCD is cut off.
func TestModemDeltas(t *testing.T) {
	u, _, irq := newUART()
	wr(u, IER, 0x08)
	steps := []struct {
		name   string
		do     func()
		status byte // MSR bits 7:4
		delta  byte // MSR bits 3:0
	}{
		{"loopback, all outputs off", func() { wr(u, MCR, 0x10) }, 0x00, 0x0b},
		{"RTS", func() { wr(u, MCR, 0x12) }, 0x10, 0x01},
		{"DTR", func() { wr(u, MCR, 0x13) }, 0x30, 0x02},
		{"OUT1: RI on, no delta", func() { wr(u, MCR, 0x17) }, 0x70, 0x00},
		{"OUT1 off: TERI", func() { wr(u, MCR, 0x13) }, 0x30, 0x04},
		{"OUT2", func() { wr(u, MCR, 0x1b) }, 0xb0, 0x08},
		{"carrier lost outside, unseen in loopback", func() { u.SetCarrier(false) }, 0xb0, 0x00},
		{"loopback off: DCD low outside", func() { wr(u, MCR, 0x0b) }, 0x30, 0x08},
		{"carrier back", func() { u.SetCarrier(true) }, 0xb0, 0x08},
		{"carrier unchanged", func() { u.SetCarrier(true) }, 0xb0, 0x00},
	}
	for _, s := range steps {
		s.do()
		wantIIR := byte(0x01)
		if s.delta != 0 {
			wantIIR = 0x00
		}
		out2 := rd(u, MCR)&0x08 != 0 // the line follows OUT2, even in loopback
		if id := rd(u, IIR) & 0x0f; id != wantIIR || irq.get() != (s.delta != 0 && out2) {
			t.Errorf("%s: IIR = %#x, line %v; want %#x", s.name, id, irq.get(), wantIIR)
		}
		if m := rd(u, MSR); m != s.status|s.delta {
			t.Errorf("%s: MSR = %#x, want %#x", s.name, m, s.status|s.delta)
		}
		if m := rd(u, MSR); m&0x0f != 0 || irq.get() {
			t.Errorf("%s: MSR read again = %#x, line %v: deltas not cleared", s.name, m, irq.get())
		}
	}
}

// FuzzUART replays (offset, value, op) triples and host input: nothing
// panics, the interrupt line always equals "an interrupt is pending (IIR
// bit 0 clear) and OUT2 is set", input the UART could not take is reported
// as an overrun, and in loopback no input is taken, only counted.
func FuzzUART(f *testing.F) {
	f.Add([]byte{4, 8, 1, 1, 15, 1, 0, 'a', 1, 2, 0, 0, 5, 0, 0})
	// Overrun with the line-status interrupt on, read back through LSR.
	f.Add([]byte{4, 8, 1, 1, 5, 1, 0, 255, 4, 2, 0, 0, 5, 0, 0, 2, 0, 0})
	// Overrun through loopback, FIFOs on with trigger 14.
	f.Add([]byte{2, 0xc1, 1, 1, 1, 1, 0, 200, 4, 4, 0x18, 1, 0, 'z', 1, 2, 0, 0, 5, 0, 0})
	// Modem deltas from loopback MCR writes and the carrier.
	f.Add([]byte{1, 8, 1, 4, 0x1f, 1, 2, 0, 0, 4, 0x1b, 1, 0, 0, 3, 4, 0x08, 1, 6, 0, 0, 0, 1, 3})
	// FCR clears and disables with data queued.
	f.Add([]byte{1, 1, 1, 4, 8, 1, 2, 1, 1, 0, 'a', 2, 0, 'b', 2, 2, 3, 1, 2, 0, 1, 5, 0, 0})
	// A reset with the receive interrupt raised, then input again.
	f.Add([]byte{4, 8, 1, 1, 1, 1, 0, 'a', 2, 0, 0, 5, 0, 'b', 2, 4, 8, 1, 1, 1, 1})
	f.Fuzz(func(t *testing.T, ops []byte) {
		u, _, irq := newUART()
		for len(ops) >= 3 {
			off, v, op := uint64(ops[0]%9), ops[1], ops[2]
			ops = ops[3:]
			var in []byte
			switch op % 6 {
			case 0:
				rd(u, off)
			case 1:
				wr(u, off, v)
			case 2:
				in = []byte{v}
			case 3:
				u.SetCarrier(v&1 == 1)
			case 4:
				in = make([]byte, int(v)*64) // a paste, up to ~4 queues full
			case 5:
				u.Reset() // a reboot inside the VM
			}
			if in != nil {
				loop := rd(u, MCR)&0x10 != 0
				before := u.InputStats()
				n := u.Receive(in)
				after := u.InputStats()
				switch {
				case loop && (n != 0 || after.Loopback != before.Loopback+uint64(len(in))):
					t.Fatalf("loopback: Receive took %d of %d bytes, counted %d: the line is disconnected", n, len(in), after.Loopback-before.Loopback)
				case !loop && n < len(in) && (rd(u, LSR)&0x02 == 0 || after.Overrun != before.Overrun+uint64(len(in)-n)):
					t.Fatalf("Receive took %d of %d bytes, LSR.OE clear or not counted (%+v)", n, len(in), after)
				}
			}
			pending, level := u.Pending()
			mcr := rd(u, MCR)
			if want := pending && mcr&0x08 != 0; level != want || irq.get() != want {
				t.Fatalf("pending %v, OUT2 %v: line %v (irq saw %v), want %v", pending, mcr&0x08 != 0, level, irq.get(), want)
			}
		}
	})
}

// TestReset: a platform reset leaves every register as a fresh UART has it
// (what the next boot's 8250 driver probes), drops input queued for the
// ended boot, clears OE and lowers the interrupt line.
func TestReset(t *testing.T) {
	fresh, _, _ := newUART()
	regs := func(u *vtty.UART) [8]byte {
		var r [8]byte
		for _, off := range []uint64{IER, IIR, LCR, MCR, LSR, SCR} {
			r[off] = rd(u, off)
		}
		wr(u, LCR, 0x80) // DLAB: the divisor
		r[0], r[1] = rd(u, 0), rd(u, 1)
		wr(u, LCR, 0x00)
		r[MSR] = rd(u, MSR) &^ 0x0f // the deltas depend on what was read before
		return r
	}
	want := regs(fresh)

	u, out, irq := newUART()
	wr(u, LCR, 0x83) // DLAB, 8N1
	wr(u, 0, 1)      // 115200 baud
	wr(u, 1, 0)
	wr(u, LCR, 0x03)
	wr(u, FCR, 0xc7) // FIFOs on, trigger 14
	wr(u, MCR, 0x0b) // DTR, RTS, OUT2
	wr(u, IER, 0x0f)
	wr(u, SCR, 0x5a)
	u.Receive(make([]byte, vtty.RxCapacity+1)) // overrun
	if !irq.get() {
		t.Fatal("setup: no interrupt raised")
	}
	u.Reset()
	if irq.get() {
		t.Error("interrupt line still raised after Reset")
	}
	if got := regs(u); got != want {
		t.Errorf("registers after Reset = % x, want as fresh % x", got, want)
	}
	if rd(u, LSR)&0x03 != 0 {
		t.Error("data ready or overrun after Reset")
	}
	// The UART works on: the next boot's output and input.
	wr(u, THR, 'k')
	u.Receive([]byte("x"))
	if out.String() != "k" || rd(u, RBR) != 'x' {
		t.Errorf("after Reset: out %q", out.String())
	}
}

// TestLoopbackDisconnectsHostInput: in loopback mode the receiver hears
// only what the guest transmits (PC16550D, MCR bit 4): host input is not
// taken, is counted, raises no interrupt and sets no overrun, does not mix
// into the self-test's bytes, and does not come back when loopback ends;
// input after that is received as usual. Bytes refused for a full queue
// are counted apart.
func TestLoopbackDisconnectsHostInput(t *testing.T) {
	u, out, irq := newUART()
	wr(u, MCR, 0x10|0x08) // loopback, OUT2
	wr(u, IER, 0x05)      // received data, line status
	if n := u.Receive([]byte("typed")); n != 0 {
		t.Errorf("Receive in loopback took %d bytes", n)
	}
	if irq.get() || rd(u, LSR)&0x03 != 0 {
		t.Errorf("host input in loopback: line %v, LSR %#x; want no interrupt, no data, no overrun", irq.get(), rd(u, LSR))
	}
	for _, b := range []byte("self-test") {
		wr(u, THR, b)
	}
	var got []byte
	for rd(u, LSR)&0x01 != 0 {
		got = append(got, rd(u, RBR))
	}
	if string(got) != "self-test" || out.Len() != 0 {
		t.Errorf("looped back %q (out %q), want only the guest's %q", got, out.String(), "self-test")
	}
	wr(u, MCR, 0x08) // loopback ends
	if rd(u, LSR)&0x01 != 0 {
		t.Error("input refused in loopback arrived once it ended")
	}
	if n := u.Receive([]byte("ls\n")); n != 3 || rd(u, RBR) != 'l' {
		t.Errorf("after loopback Receive took %d", n)
	}
	u.Receive(make([]byte, vtty.RxCapacity+7))
	if st := u.InputStats(); st != (vtty.InputStats{Loopback: 5, Overrun: 9}) {
		t.Errorf("InputStats = %+v, want 5 refused in loopback and 9 overrun", st)
	}
}

// TestConsoleInputInLoopback: what is typed on the console while the
// guest's UART is in loopback is dropped and counted, never queued for
// later; typing after loopback ends reaches the guest.
func TestConsoleInputInLoopback(t *testing.T) {
	c := openConsole(t)
	u := vtty.NewUART(c, nil)
	tty := attach(t, c)
	defer tty.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Input(ctx, u.Receive)
	wr(u, MCR, 0x10)
	tty.Write([]byte("during"))
	deadline := time.Now().Add(10 * time.Second)
	for u.InputStats().Loopback < 6 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if st := u.InputStats(); st.Loopback != 6 {
		t.Fatalf("InputStats = %+v, want 6 bytes refused in loopback", st)
	}
	wr(u, MCR, 0x00)
	tty.Write([]byte("after"))
	var got []byte
	for len(got) < 5 && time.Now().Before(deadline) {
		if rd(u, LSR)&0x01 != 0 {
			got = append(got, rd(u, RBR))
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	if string(got) != "after" {
		t.Errorf("the guest read %q, want %q", got, "after")
	}
}
