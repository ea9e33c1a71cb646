package ipi_test

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/popvmm/popvmm/ipi"
)

// Fuzz ops: each record is opLen bytes: op, offset (2 bytes), size, value
// (8 bytes), little-endian.
const (
	opRead = iota
	opWrite
	opMoveRegs // BARMoved(0, value): the guest moves BAR0 anywhere
	opMSIX     // MSI-X on (value odd) or off
	opRing     // a doorbell from elsewhere on the kernel's own bell
	numOps

	opLen = 12
)

// regModel is what the registers must hold: QEMU's semantics, written
// independently of the device.
type regModel struct {
	mask, status uint32
	msix         bool
	doorbells    uint64 // Doorbell writes the device took
}

func (m *regModel) valid(off uint64, n int, write bool) bool {
	sizes := []int{1, 2, 4, 8}
	if write {
		sizes = []int{4, 8}
	}
	return slices.Contains(sizes, n) && off%uint64(n) == 0 && off+uint64(n) <= ipi.RegsSize
}

func (m *regModel) reg(r uint64, peer int) uint32 {
	switch r {
	case ipi.RegIntrMask:
		return m.mask
	case ipi.RegIntrStatus:
		return m.status
	case ipi.RegIVPosition:
		return uint32(peer)
	}
	return 0
}

// FuzzRegisters replays (op, offset, size, value) records against a
// device and checks it against regModel after every one: what reads
// return, the INTx line, the doorbell counters, and where the ioeventfds
// are after BAR0 moves.
func FuzzRegisters(f *testing.F) {
	rec := func(op byte, off uint16, size byte, v uint64) []byte {
		b := []byte{op, byte(off), byte(off >> 8), size}
		return binary.LittleEndian.AppendUint64(b, v)
	}
	f.Add(slices.Concat(rec(opWrite, 0, 4, 1), rec(opRing, 0, 0, 0), rec(opWrite, 4, 4, 1), rec(opRead, 4, 4, 0)))
	f.Add(slices.Concat(rec(opWrite, 12, 4, 0x1_0000), rec(opWrite, 12, 4, 0xffff_0000), rec(opWrite, 8, 8, 0x2_0001_0000_0000)))
	f.Add(slices.Concat(rec(opMoveRegs, 0, 0, 0xd000_0000), rec(opWrite, 12, 4, 0), rec(opMoveRegs, 0, 0, 0xffff_ffff_ffff_ff00)))
	f.Add(slices.Concat(rec(opMSIX, 0, 0, 1), rec(opWrite, 0, 8, 0xffff_ffff_ffff_ffff), rec(opMSIX, 0, 0, 0), rec(opRead, 5, 1, 0)))
	f.Fuzz(func(t *testing.T, data []byte) {
		const peer, vectors = 1, 2
		bells := newBells(t, 3, 0, vectors)
		v := newVM(t, bells, peer, 1<<20, nil)
		m := regModel{}
		regs := v.regs()
		for len(data) >= opLen {
			r := data[:opLen]
			data = data[opLen:]
			op := int(r[0]) % numOps
			off := uint64(binary.LittleEndian.Uint16(r[1:])) % 0x140
			n := int(r[3] % 17)
			val := binary.LittleEndian.Uint64(r[4:])
			switch op {
			case opRead:
				got := make([]byte, n)
				v.dev.Read(off, got)
				want := make([]byte, n)
				if m.valid(off, n, false) {
					base := off &^ 3
					w := uint64(m.reg(base, peer)) | uint64(m.reg(base+4, peer))<<32
					w >>= 8 * (off - base)
					for i := range want {
						want[i] = byte(w >> (8 * i))
					}
					if off < ipi.RegIntrStatus+4 && off+uint64(n) > ipi.RegIntrStatus {
						m.status = 0
					}
				} else {
					for i := range want {
						want[i] = 0xff
					}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("read %d bytes at %#x = % x, want % x", n, off, got, want)
				}
			case opWrite:
				b := make([]byte, n)
				for i := range b {
					b[i] = byte(val >> (8 * (i % 8)))
				}
				v.dev.Write(off, b)
				if m.valid(off, n, true) {
					for i := 0; i < n; i += 4 {
						w := binary.LittleEndian.Uint32(b[i:])
						switch off + uint64(i) {
						case ipi.RegIntrMask:
							m.mask = w
						case ipi.RegIntrStatus:
							m.status = w
						case ipi.RegDoorbell:
							m.doorbells++
						}
					}
				}
			case opMoveRegs:
				// A refused move (onto BAR1, past 2^64) leaves BAR0 where
				// it was.
				if to := val &^ (ipi.RegsSize - 1); v.dev.BARMoved(ipi.RegsBAR, to) == nil {
					regs = to
				}
				for _, e := range v.dev.Ioeventfds() {
					if e.GPA != regs+ipi.RegDoorbell {
						t.Fatalf("after BAR0 moved to %#x: ioeventfd at %#x", regs, e.GPA)
					}
				}
				if n := len(v.dev.Ioeventfds()); regs+ipi.RegsSize > regs && n != 3*vectors {
					t.Fatalf("BAR0 at %#x: %d ioeventfds, want %d", regs, n, 3*vectors)
				}
			case opMSIX:
				if m.msix = val&1 != 0; m.msix {
					v.enableMSIX(t, vectors)
				} else {
					v.disableMSIX()
				}
			case opRing:
				bells.Ring(ipi.BellID{Peer: int(val % 4), Vector: int(val>>8) % 3})
			}
			if want := m.status&m.mask != 0 && !m.msix; v.irq.Level() != want {
				t.Fatalf("after op %d: INTx %v, want %v (mask %#x status %#x msix %v)", op, v.irq.Level(), want, m.mask, m.status, m.msix)
			}
			if st := v.dev.Stats(); st.SoftDoorbells+st.BadDoorbells != m.doorbells {
				t.Fatalf("stats %+v: %d doorbell writes", st, m.doorbells)
			}
		}
		if got := binary.LittleEndian.Uint32(read(v.dev, ipi.RegIVPosition, 4)); got != peer {
			t.Fatalf("IVPosition = %d, want %d", got, peer)
		}
	})
}
