package winnet_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/popvmm/popvmm/winnet"
)

// Fuzz records: op, a 16-bit offset, a 64-bit value.
const recordSize = 11

// FuzzRings replays records against a two-peer window: garbage words
// written over the sender's control page and ring page (a hostile sender)
// or over the receiver's control page (a hostile receiver), interleaved
// with receives, valid sends, the sender coming up again and the receiver
// arming. Nothing may panic, no delivered frame may exceed MaxFrame, and
// once both sides came up again a frame sent arrives whole: garbage never
// wedges a ring.
func FuzzRings(f *testing.F) {
	rec := func(op byte, off uint16, v uint64) []byte {
		b := make([]byte, recordSize)
		b[0] = op
		binary.LittleEndian.PutUint16(b[1:], off)
		binary.LittleEndian.PutUint64(b[3:], v)
		return b
	}
	f.Add(bytes.Join([][]byte{rec(3, 0, 100), rec(2, 0, 0)}, nil))
	f.Add(bytes.Join([][]byte{rec(3, 0, 100), rec(0, 4096, 1<<40), rec(2, 0, 0)}, nil))
	f.Add(bytes.Join([][]byte{rec(3, 0, 100), rec(0, 4096+64, 0xfffff000_00000010), rec(2, 0, 0)}, nil))
	f.Add(bytes.Join([][]byte{rec(1, 64, 1<<63), rec(3, 0, 70000), rec(5, 0, 0), rec(3, 0, 10)}, nil))
	f.Add(bytes.Join([][]byte{rec(0, 4, 7), rec(4, 0, 0), rec(2, 0, 0), rec(0, 4104, 3), rec(2, 0, 0)}, nil))
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := make([]byte, 256<<10)
		g, err := winnet.Format(mem, 2)
		if err != nil {
			t.Fatal(err)
		}
		tx, _ := winnet.NewPort(mem, 0)
		rx, _ := winnet.NewPort(mem, 1)
		tx.Up()
		rx.Up()
		check := func(b []byte) {
			if len(b) == 0 || len(b) > g.MaxFrame() {
				t.Fatalf("delivered a %d-byte frame (max %d)", len(b), g.MaxFrame())
			}
		}
		word := func(base uint64, off uint16, v uint64) {
			o := uint64(off&0x1ff8) % (2 * winnet.PageSize)
			at := base + o
			if o >= winnet.PageSize {
				at = g.Ring(0, 1) + o - winnet.PageSize
			}
			binary.LittleEndian.PutUint64(mem[at:], v)
		}
		for ; len(data) >= recordSize; data = data[recordSize:] {
			off := binary.LittleEndian.Uint16(data[1:])
			v := binary.LittleEndian.Uint64(data[3:])
			switch data[0] % 6 {
			case 0:
				word(g.Section(0), off, v)
			case 1:
				word(g.Section(1), off%winnet.PageSize, v)
			case 2:
				rx.Receive(0, int(v%(2*winnet.RingSlots)), check)
			case 3:
				_, err := tx.Send(1, make([]byte, 1+v%uint64(g.MaxFrame())))
				if err != nil && !errors.Is(err, winnet.ErrFull) && !errors.Is(err, winnet.ErrBadHead) && !errors.Is(err, winnet.ErrPeerDown) {
					t.Fatalf("Send: %v", err)
				}
			case 4:
				tx.Up()
			case 5:
				if !rx.Arm() {
					rx.Disarm()
				}
			}
		}
		rx.Up()
		tx.Up()
		rx.Receive(0, winnet.RingSlots, check)
		want := bytes.Repeat([]byte{0xab}, 1234)
		if _, err := tx.Send(1, want); err != nil {
			t.Fatalf("Send after both came up again: %v", err)
		}
		var got [][]byte
		rx.Receive(0, winnet.RingSlots, func(b []byte) { got = append(got, b) })
		if len(got) != 1 || !bytes.Equal(got[0], want) {
			t.Fatalf("after both came up again received %d frames, want the one sent", len(got))
		}
	})
}
