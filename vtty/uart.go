package vtty

import (
	"io"
	"sync"

	"github.com/popvmm/popvmm/vmm/bus"
)

// 16550A register offsets and bits (National Semiconductor PC16550D data
// sheet; the subset Linux's 8250 driver uses).
const (
	regData = 0 // RBR (read) / THR (write); DLL with DLAB
	regIER  = 1 // interrupt enable; DLM with DLAB
	regIIR  = 2 // interrupt identification (read) / FCR (write)
	regLCR  = 3
	regMCR  = 4
	regLSR  = 5
	regMSR  = 6
	regSCR  = 7

	ierRx    = 1 << 0 // received data available
	ierTHRE  = 1 << 1 // transmitter holding register empty
	ierLine  = 1 << 2 // receiver line status
	ierModem = 1 << 3 // modem status

	// IIR identifications, highest priority first.
	iirLine    = 0x06 // receiver line status (OE)
	iirRx      = 0x04 // received data at the FIFO trigger level
	iirTimeout = 0x0c // received data below the trigger level
	iirTHRE    = 0x02
	iirModem   = 0x00
	iirNone    = 0x01
	iirFIFO    = 0xc0 // FIFOs enabled

	fcrEnable  = 1 << 0
	fcrClearRx = 1 << 1
	fcrTrigger = 0xc0 // receive FIFO trigger level: 1, 4, 8, 14 bytes

	lcrDLAB = 1 << 7

	mcrDTR  = 1 << 0
	mcrRTS  = 1 << 1
	mcrOUT1 = 1 << 2
	mcrOUT2 = 1 << 3 // on a PC, gates the interrupt line
	mcrLoop = 1 << 4

	lsrDR   = 1 << 0 // data ready
	lsrOE   = 1 << 1 // overrun
	lsrTHRE = 1 << 5
	lsrTEMT = 1 << 6

	msrDCTS = 1 << 0
	msrDDSR = 1 << 1
	msrTERI = 1 << 2 // RI went from on to off
	msrDDCD = 1 << 3
	msrCTS  = 1 << 4
	msrDSR  = 1 << 5
	msrRI   = 1 << 6
	msrDCD  = 1 << 7
)

// RxCapacity bounds the receive queue. A real 16550A holds 16 bytes; a
// deeper queue loses nothing when the host pastes into the console faster
// than the guest drains it, and overflow is reported as an overrun.
const RxCapacity = 4096

// triggers maps FCR bits 7:6 to the receive FIFO trigger level.
var triggers = [4]int{1, 4, 8, 14}

// UART is a 16550A on the port-I/O bus (COM1 at 0x3f8, 8 ports). Bytes the
// guest transmits go to out; bytes given to Receive reach the guest with a
// receive interrupt. It is safe for a vCPU thread and a host goroutine.
type UART struct {
	out     io.Writer
	outByte io.ByteWriter // out, when it takes a byte without a slice
	irq     bus.IRQ

	mu      sync.Mutex
	rx      []byte
	ier     byte
	lcr     byte
	mcr     byte
	lsr     byte // only the sticky error bit OE; DR/THRE/TEMT are computed
	modem   byte // the modem status input lines (MSR bits 7:4) outside loopback
	delta   byte // MSR bits 3:0: line changes since MSR was last read
	scr     byte
	dll     byte
	dlm     byte
	fifo    bool
	trigger int  // receive FIFO trigger level, in bytes
	thrIntr bool // a THR-empty interrupt is pending until IIR read or THR write
	level   bool // current interrupt line level

	input InputStats
}

// InputStats counts host input (Receive) the guest did not get.
type InputStats struct {
	// Loopback are bytes that came while the UART was in loopback mode
	// (MCR bit 4): its receiver was disconnected from the line, so they
	// were dropped, as on a real line, and the guest was not told.
	Loopback uint64
	// Overrun are bytes that found the receive queue full: dropped, with
	// LSR.OE set for the guest.
	Overrun uint64
}

// NewUART makes a UART writing to out and raising irq. The modem lines
// show a connected terminal (CTS, DSR, DCD). Each transmitted byte is
// written to out on the vCPU's thread, so out must not block: a Console
// only queues.
func NewUART(out io.Writer, irq bus.IRQ) *UART {
	u := &UART{out: out, irq: irq, modem: msrCTS | msrDSR | msrDCD}
	u.outByte, _ = out.(io.ByteWriter)
	u.powerOn()
	return u
}

// powerOn sets every register the guest programs to its power-on value:
// interrupt enables, line and modem control, FIFOs off with trigger level 1,
// scratch 0, divisor 12 (9600 baud); the receive queue empty, OE and the
// modem deltas clear. The modem status inputs and the line level are left
// as they are.
func (u *UART) powerOn() {
	u.rx = u.rx[:0]
	u.ier, u.lcr, u.mcr, u.lsr, u.delta, u.scr = 0, 0, 0, 0, 0, 0
	u.dll, u.dlm = 12, 0
	u.fifo, u.trigger, u.thrIntr = false, 1, false
}

var _ bus.Device = (*UART)(nil)

// Read implements bus.Device.
func (u *UART) Read(off uint64, data []byte) {
	for i := range data {
		data[i] = 0xff
	}
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	data[0] = u.read(off)
	u.update()
	u.mu.Unlock()
}

// Write implements bus.Device.
func (u *UART) Write(off uint64, data []byte) {
	if len(data) == 0 {
		return
	}
	u.mu.Lock()
	out := u.write(off, data[0])
	u.update()
	u.mu.Unlock()
	// Outside the lock, so the host's Receive never waits on the sink.
	switch {
	case out < 0 || u.out == nil:
	case u.outByte != nil:
		u.outByte.WriteByte(byte(out))
	default:
		u.out.Write([]byte{byte(out)})
	}
}

func (u *UART) dlab() bool { return u.lcr&lcrDLAB != 0 }

func (u *UART) read(off uint64) byte {
	switch off {
	case regData:
		if u.dlab() {
			return u.dll
		}
		if len(u.rx) == 0 {
			return 0
		}
		b := u.rx[0]
		u.rx = u.rx[1:]
		return b
	case regIER:
		if u.dlab() {
			return u.dlm
		}
		return u.ier
	case regIIR:
		id := u.iir()
		if id == iirTHRE {
			u.thrIntr = false // reading IIR clears a THR-empty interrupt
		}
		if u.fifo {
			id |= iirFIFO
		}
		return id
	case regLCR:
		return u.lcr
	case regMCR:
		return u.mcr
	case regLSR:
		v := u.lsr | lsrTHRE | lsrTEMT // transmission is instantaneous
		if len(u.rx) > 0 {
			v |= lsrDR
		}
		u.lsr = 0 // error bits clear on read
		return v
	case regMSR:
		v := u.lines() | u.delta
		u.delta = 0 // deltas clear on read
		return v
	case regSCR:
		return u.scr
	}
	return 0xff
}

// write applies a register write; it returns the byte to transmit, or -1.
func (u *UART) write(off uint64, v byte) int {
	switch off {
	case regData:
		if u.dlab() {
			u.dll = v
			return -1
		}
		u.thrIntr = true // the holding register empties at once
		if u.mcr&mcrLoop != 0 {
			u.push(v)
			return -1
		}
		return int(v)
	case regIER:
		if u.dlab() {
			u.dlm = v
			return -1
		}
		old := u.ier
		u.ier = v & 0x0f
		if u.ier&ierTHRE != 0 && old&ierTHRE == 0 {
			u.thrIntr = true // enabling it with THR empty interrupts at once
		}
	case regIIR: // FCR
		if v&fcrEnable == 0 {
			// Turning the FIFOs off empties them; the other bits are
			// not programmed without FCR0.
			if u.fifo {
				u.rx = u.rx[:0]
			}
			u.fifo = false
			break
		}
		u.fifo = true
		u.trigger = triggers[v>>6]
		if v&fcrClearRx != 0 {
			u.rx = u.rx[:0]
		}
	case regLCR:
		u.lcr = v
	case regMCR:
		old := u.lines()
		u.mcr = v & 0x1f
		u.track(old) // in loopback, MCR bits are the modem inputs
	case regSCR:
		u.scr = v
	}
	return -1
}

// lines returns the modem status inputs (MSR bits 7:4) as the chip sees
// them: the external lines, or in loopback the modem control outputs.
func (u *UART) lines() byte {
	if u.mcr&mcrLoop == 0 {
		return u.modem
	}
	var v byte
	if u.mcr&mcrRTS != 0 {
		v |= msrCTS
	}
	if u.mcr&mcrDTR != 0 {
		v |= msrDSR
	}
	if u.mcr&mcrOUT1 != 0 {
		v |= msrRI
	}
	if u.mcr&mcrOUT2 != 0 {
		v |= msrDCD
	}
	return v
}

// track sets the MSR delta bits for what changed since the inputs were
// old: any change of CTS, DSR or DCD, and RI turning off (TERI).
func (u *UART) track(old byte) {
	now := u.lines()
	changed := old ^ now
	if changed&msrCTS != 0 {
		u.delta |= msrDCTS
	}
	if changed&msrDSR != 0 {
		u.delta |= msrDDSR
	}
	if old&msrRI != 0 && now&msrRI == 0 {
		u.delta |= msrTERI
	}
	if changed&msrDCD != 0 {
		u.delta |= msrDDCD
	}
}

// iir computes the highest-priority pending interrupt (without FIFO bits).
// With the FIFOs on, data below the trigger level reports a character
// timeout: transmission is instantaneous here, so the line is always idle.
func (u *UART) iir() byte {
	switch {
	case u.ier&ierLine != 0 && u.lsr&lsrOE != 0:
		return iirLine
	case u.ier&ierRx != 0 && len(u.rx) > 0:
		if u.fifo && len(u.rx) < u.trigger {
			return iirTimeout
		}
		return iirRx
	case u.ier&ierTHRE != 0 && u.thrIntr:
		return iirTHRE
	case u.ier&ierModem != 0 && u.delta != 0:
		return iirModem
	}
	return iirNone
}

// update drives the interrupt line: pending and gated by OUT2, as on a PC.
func (u *UART) update() {
	level := u.iir() != iirNone && u.mcr&mcrOUT2 != 0
	if level != u.level && u.irq != nil {
		u.irq.Set(level)
	}
	u.level = level
}

func (u *UART) push(b byte) {
	if len(u.rx) >= RxCapacity {
		u.lsr |= lsrOE
		return
	}
	u.rx = append(u.rx, b)
}

// Receive queues bytes for the guest (console input) and returns how many
// were taken. The rest are lost, as on a real line, and the guest is told:
// LSR.OE is set, with a line-status interrupt if IER enables one.
//
// In loopback mode (MCR bit 4: a guest's self-test, Linux's 8250 probe)
// the receiver hears only what the guest transmits, as the PC16550D's
// does: Receive takes nothing, the bytes are dropped and counted
// (InputStats.Loopback), and the guest sees no overrun and no interrupt
// for them. Input typed after loopback ends is received as usual.
func (u *UART) Receive(p []byte) int {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.mcr&mcrLoop != 0 {
		u.input.Loopback += uint64(len(p))
		return 0
	}
	n := min(len(p), RxCapacity-len(u.rx))
	u.rx = append(u.rx, p[:n]...)
	if n < len(p) {
		u.lsr |= lsrOE
		u.input.Overrun += uint64(len(p) - n)
	}
	u.update()
	return n
}

// InputStats returns the counts of host input the guest did not get.
func (u *UART) InputStats() InputStats {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.input
}

// Reset puts the UART in its power-on state, as a platform reset (a
// reboot inside the VM) does: interrupt enables, line and modem control,
// FIFO control, scratch and divisor (9600 baud) as NewUART set them; the
// receive queue emptied (input typed for the ended boot is not the next
// one's); OE and the modem deltas cleared; the interrupt line lowered.
// The modem status inputs (DCD: a terminal attached) are the host's and
// stay.
func (u *UART) Reset() {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.powerOn()
	u.update()
}

// Pending reports, without side effects, whether an interrupt is pending
// and whether the line is raised (pending and OUT2 set).
func (u *UART) Pending() (pending, line bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.iir() != iirNone, u.level
}

// SetCarrier changes the DCD modem line (a terminal attached or gone),
// with its delta bit for a modem-status interrupt.
func (u *UART) SetCarrier(on bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	old := u.lines()
	u.modem &^= msrDCD
	if on {
		u.modem |= msrDCD
	}
	u.track(old) // no change seen in loopback: the line is disconnected
	u.update()
}
