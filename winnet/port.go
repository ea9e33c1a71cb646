package winnet

import (
	"errors"
	"fmt"
	"github.com/popvmm/popvmm/internal/winmem"
)

// Errors of Send. Each is also counted in the sender's tx drops for the
// destination (but ErrFrame and ErrPeer, which are the caller's mistakes).
var (
	ErrFrame    = errors.New("winnet: frame length out of range")
	ErrPeer     = errors.New("winnet: no such destination")
	ErrPeerDown = errors.New("winnet: destination is down")
	ErrFull     = errors.New("winnet: ring full")
	// ErrBadHead: the destination's consumer index for this ring is not
	// within a ring of the tail (garbage, or a destination that came up
	// and has not taken the ring up yet): the frame is dropped.
	ErrBadHead = errors.New("winnet: destination's consumer index out of range")
)

// Port is one peer's endpoint on a winnet window: the sending, receiving
// and doorbell-mitigation rules of docs/winnet.md, which the guest driver
// follows line for line. It writes only its own section. A Port is used by
// one goroutine at a time.
type Port struct {
	mem []byte
	g   Geometry
	id  int
	// seen is each source's generation when its ring was last taken up.
	seen []uint32
	// rung is, per destination, its arm sequence this port last rang.
	rung []uint32
	// Ring rings destination d's doorbell; nil: none is rung.
	Ring func(d int)
}

// NewPort opens peer id's endpoint on the formatted window mem. It is down
// until Up.
func NewPort(mem []byte, id int) (*Port, error) {
	g, err := Open(mem)
	if err != nil {
		return nil, err
	}
	if id < 0 || id >= g.MaxPeers {
		return nil, fmt.Errorf("winnet: peer %d has no section (%d peers)", id, g.MaxPeers)
	}
	return &Port{mem: mem, g: g, id: id, seen: make([]uint32, g.MaxPeers), rung: make([]uint32, g.MaxPeers)}, nil
}

// Geometry is the window's geometry.
func (p *Port) Geometry() Geometry { return p.g }

// ID is the port's peer id.
func (p *Port) ID() int { return p.id }

// Up brings the port up (at the driver's open): it takes every source's
// ring up at its tail (frames sent to a previous incarnation are dropped),
// sets every ring's base to its tail (a receiver that sees the new
// generation resumes there), disarms, increments the generation, and
// marks itself up.
func (p *Port) Up() {
	sec := p.g.Section(p.id)
	winmem.Store32(p.mem, sec+ctlState, StateDown)
	for q := range p.g.MaxPeers {
		if q == p.id {
			continue
		}
		p.seen[q] = winmem.Load32(p.mem, p.g.Section(q)+ctlGen)
		winmem.Store64(p.mem, p.g.peerBlock(p.id, q)+peerRxHead, winmem.Load64(p.mem, p.g.Ring(q, p.id)+ringTail))
		r := p.g.Ring(p.id, q)
		winmem.Store64(p.mem, r+ringBase, winmem.Load64(p.mem, r+ringTail))
	}
	winmem.Store32(p.mem, sec+ctlArmed, 0)
	winmem.Store32(p.mem, sec+ctlGen, winmem.Load32(p.mem, sec+ctlGen)+1)
	winmem.Store32(p.mem, sec+ctlState, StateUp)
}

// Down marks the port down (the driver's stop): senders drop frames for it.
func (p *Port) Down() {
	sec := p.g.Section(p.id)
	winmem.Store32(p.mem, sec+ctlArmed, 0)
	winmem.Store32(p.mem, sec+ctlState, StateDown)
}

// Beat increments the heartbeat (the driver's timer, every 100 ms).
func (p *Port) Beat() {
	off := p.g.Section(p.id) + ctlHeartbeat
	winmem.Store64(p.mem, off, winmem.Load64(p.mem, off)+1)
}

// add increments one of the port's receive counters for source q.
func (p *Port) add(q int, field uint64, n uint64) {
	off := p.g.peerBlock(p.id, q) + field
	winmem.Store64(p.mem, off, winmem.Load64(p.mem, off)+n)
}

// addTx increments one of the port's send counters for destination d
// (in ring id→d's first line).
func (p *Port) addTx(d int, field uint64, n uint64) {
	off := p.g.Ring(p.id, d) + field
	winmem.Store64(p.mem, off, winmem.Load64(p.mem, off)+n)
}

// Send copies frame into ring id→d and publishes it, then rings d's
// doorbell if d sleeps and this port has not rung it since d armed.
// It never blocks: a frame that cannot go is dropped, counted, and the
// error says why.
func (p *Port) Send(d int, frame []byte) (rang bool, err error) {
	if d < 0 || d >= p.g.MaxPeers || d == p.id {
		return false, ErrPeer
	}
	n := uint64(len(frame))
	if n == 0 || n > uint64(p.g.MaxFrame()) {
		return false, ErrFrame
	}
	if err := p.place(d, frame); err != nil {
		p.addTx(d, ringTxDrops, 1)
		return false, err
	}
	p.addTx(d, ringTxPackets, 1)
	p.addTx(d, ringTxBytes, n)
	// Dekker with the receiver's Arm: the tail store above and the armed
	// load here, its armed store and tail load there, are sequentially
	// consistent (sync/atomic; smp_mb() in the driver).
	dsec := p.g.Section(d)
	if winmem.Load32(p.mem, dsec+ctlArmed) == 1 {
		if seq := winmem.Load32(p.mem, dsec+ctlArmSeq); seq != p.rung[d] {
			p.rung[d] = seq
			if p.Ring != nil {
				p.Ring(d)
			}
			return true, nil
		}
	}
	return false, nil
}

// place writes frame at the next free place of ring id→d's data area and
// publishes its descriptor.
func (p *Port) place(d int, frame []byte) error {
	dsec := p.g.Section(d)
	if winmem.Load32(p.mem, dsec+ctlState) != StateUp {
		return ErrPeerDown
	}
	r := p.g.Ring(p.id, d)
	head := winmem.Load64(p.mem, p.g.peerBlock(d, p.id)+peerRxHead) // d's: untrusted
	tail := winmem.Load64(p.mem, r+ringTail)
	out := tail - head
	switch {
	case out > RingSlots:
		return ErrBadHead
	case out == RingSlots:
		return ErrFull
	}
	need := alignLine(uint64(len(frame)))
	at, ok := uint64(0), need <= p.g.DataSize
	if out > 0 {
		// The free bytes lie between the end of the newest frame and the
		// start of the oldest unconsumed one. Both descriptors are this
		// port's own, but without window.protect anyone could have
		// written them: bounded like any other.
		oldest, _ := unpack(winmem.Load64(p.mem, r+ringSlots+8*(head%RingSlots)))
		noff, nlen := unpack(winmem.Load64(p.mem, r+ringSlots+8*((tail-1)%RingSlots)))
		pos := noff + alignLine(nlen)
		switch {
		case oldest >= p.g.DataSize || pos > p.g.DataSize:
			ok = false
		case pos >= oldest: // free: [pos, DataSize) and [0, oldest)
			if p.g.DataSize-pos >= need {
				at = pos
			} else {
				ok = need < oldest
			}
		default: // free: [pos, oldest)
			at, ok = pos, need < oldest-pos
		}
	}
	if !ok {
		return ErrFull
	}
	copy(p.mem[p.g.Data(p.id, d)+at:], frame)
	winmem.Store64(p.mem, r+ringSlots+8*(tail%RingSlots), uint64(at)|uint64(len(frame))<<32)
	winmem.Store64(p.mem, r+ringTail, tail+1)
	return nil
}

func unpack(desc uint64) (off, n uint64) { return desc & 0xffffffff, desc >> 32 }

func alignLine(n uint64) uint64 { return (n + LineSize - 1) &^ (LineSize - 1) }

// Receive takes up to budget frames from ring s→id, calling deliver with
// each (a copy the callee may keep), and returns how many descriptors it
// consumed. A source that came up again since the last call is taken up
// at its ring's base. Every index, offset and length is bounded: a bad
// descriptor is skipped, a tail more than a ring ahead of the head makes
// the head jump to it; each counts a drop.
func (p *Port) Receive(s, budget int, deliver func([]byte)) int {
	if s < 0 || s >= p.g.MaxPeers || s == p.id {
		return 0
	}
	r := p.g.Ring(s, p.id)
	headOff := p.g.peerBlock(p.id, s) + peerRxHead
	if gen := winmem.Load32(p.mem, p.g.Section(s)+ctlGen); gen != p.seen[s] {
		p.seen[s] = gen
		winmem.Store64(p.mem, headOff, winmem.Load64(p.mem, r+ringBase))
	}
	head := winmem.Load64(p.mem, headOff)
	tail := winmem.Load64(p.mem, r+ringTail)
	if tail-head > RingSlots {
		p.add(s, peerRxDrops, 1)
		winmem.Store64(p.mem, headOff, tail)
		return 0
	}
	done := 0
	data := p.g.Data(s, p.id)
	for ; head != tail && done < budget; done++ {
		off, n := unpack(winmem.Load64(p.mem, r+ringSlots+8*(head%RingSlots)))
		if n == 0 || n > uint64(p.g.MaxFrame()) || off >= p.g.DataSize || n > p.g.DataSize-off {
			p.add(s, peerRxDrops, 1)
		} else {
			frame := make([]byte, n)
			copy(frame, p.mem[data+off:data+off+n])
			p.add(s, peerRxPackets, 1)
			p.add(s, peerRxBytes, n)
			deliver(frame)
		}
		head++
		winmem.Store64(p.mem, headOff, head) // the sender may reuse the space
	}
	return done
}

// Pending says whether any source's ring holds a frame this port has not
// consumed (or an index to resynchronise).
func (p *Port) Pending() bool {
	for s := range p.g.MaxPeers {
		if s == p.id {
			continue
		}
		head := winmem.Load64(p.mem, p.g.peerBlock(p.id, s)+peerRxHead)
		if winmem.Load32(p.mem, p.g.Section(s)+ctlGen) != p.seen[s] || winmem.Load64(p.mem, p.g.Ring(s, p.id)+ringTail) != head {
			return true
		}
	}
	return false
}

// Arm is NAPI's completion: the port is going to sleep and wants a
// doorbell. It increments its arm sequence, sets armed, then checks the
// rings once more: if a frame arrived meanwhile it disarms and returns
// false (keep polling); true means it may sleep until a doorbell (or its
// timer).
func (p *Port) Arm() bool {
	sec := p.g.Section(p.id)
	winmem.Store32(p.mem, sec+ctlArmSeq, winmem.Load32(p.mem, sec+ctlArmSeq)+1)
	winmem.Store32(p.mem, sec+ctlArmed, 1)
	if p.Pending() {
		winmem.Store32(p.mem, sec+ctlArmed, 0)
		return false
	}
	return true
}

// Disarm is the doorbell's interrupt: the port polls, senders need not
// ring it.
func (p *Port) Disarm() { winmem.Store32(p.mem, p.g.Section(p.id)+ctlArmed, 0) }
