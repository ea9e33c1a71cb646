// Package msg is popvmm's messaging layer on the shared window (protocol
// v2, docs/window-protocol.md): every kernel and host peer checks in to a
// peer table, sends on single-producer/single-consumer rings it owns (one
// per destination, in its own section of the window), subscribes to
// services, and takes doorbells NAPI-style — a receiver drains with
// doorbells disarmed and re-arms only when idle, and a sender rings only an
// armed receiver. The same code runs on the host and inside guests.
package msg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/popvmm/popvmm/internal/winmem"

	"github.com/popvmm/popvmm/internal/windowgeom"
)

// Protocol constants (docs/window-protocol.md).
const (
	Magic   = 0x31304753_4D504F50 // "POPMSG01" little-endian
	Version = 2

	pageSize   = windowgeom.PageSize
	lineSize   = windowgeom.LineSize // a cache line: slot size, and the stride of hot fields
	SlotSize   = windowgeom.SlotSize
	slotHeader = 8
	// SlotPayload is how many message bytes the first slot of a message
	// carries; the following slots carry SlotSize bytes each.
	SlotPayload = SlotSize - slotHeader
	// maxLen is the largest length the 24-bit length field holds.
	maxLen = 1<<24 - 1

	// MaxPeers bounds the peer table: a section header holds one receive
	// head per possible sender, a cache line each.
	MaxPeers = windowgeom.MaxPeers
	// Services is the number of service ids (0-255).
	Services = 256
)

// Window header (page 0). Only popvmm writes it (Format), before any peer
// joins: with window.protect every kernel maps this page read-only, so a
// kernel cannot change the geometry a rebooted peer reads when it rejoins.
const (
	hdrMagic       = 0
	hdrVersion     = 8
	hdrMaxPeers    = 12
	hdrSectionSize = 16
	hdrSections    = 24
	hdrRingSlots   = 32
	hdrSlotSize    = 36
)

// Common area (page 1): one "interrupts armed" word per peer, a cache line
// each (MaxPeers lines fit the page). A receiver sets its own to 1 when it
// goes idle; the first sender to swap it back to 0 rings the doorbell
// (one-shot, like NAPI masking the interrupt at its first firing), so a
// burst costs one doorbell. It lives in the common area, the one page every
// peer may write, because senders write it.
const commonArmed = windowgeom.CommonOffset

func armedOff(p int) int { return commonArmed + p*lineSize }

// Ring control line (at the start of each ring, written by its sender).
const (
	ringTail = 0 // uint64: slots published
	ringBase = 8 // uint64: the tail when the sender last checked in
)

// Section header (at the start of each peer's section): the peer's entry in
// the peer table, its subscriptions and its receive heads.
const (
	secState      = 0  // uint32 State; with the generation one 64-bit word (setGone)
	secGeneration = 4  // uint32, bumped at every check-in
	secHeartbeat  = 8  // uint64, bumped while alive
	secName       = 24 // [32]byte
	secServices   = 64 // [32]byte bitmap of subscribed services
	secHeads      = 128
	nameLen       = 32
)

// State is a peer's state in the peer table.
type State uint32

// Peer states.
const (
	StateOffline State = 0
	StateBooting State = 1
	StateOnline  State = 2
	StateCrashed State = 3
)

func (s State) String() string {
	switch s {
	case StateOffline:
		return "offline"
	case StateBooting:
		return "booting"
	case StateOnline:
		return "online"
	case StateCrashed:
		return "crashed"
	}
	return fmt.Sprintf("state(%d)", uint32(s))
}

// layout is the geometry of a formatted window (windowgeom.Layout), read
// once at Join and checked against the window's size; nothing later trusts
// the header again.
type layout struct {
	maxPeers    int
	sectionSize int
	sections    int // offset of section 0
	slots       int // slots per ring, a power of two
	ringBytes   int
	bytes       int // the size the layout uses
}

func (l layout) section(p int) int        { return l.sections + p*l.sectionSize }
func (l layout) ring(from, to int) int    { return l.section(from) + pageSize + to*l.ringBytes }
func (l layout) slot(ring, i int) int     { return ring + lineSize + (i&(l.slots-1))*SlotSize }
func (l layout) head(owner, from int) int { return l.section(owner) + secHeads + from*lineSize }

func newLayout(maxPeers, slots int) layout {
	return layoutOf(windowgeom.Layout(maxPeers, slots))
}

func layoutOf(g windowgeom.Geometry) layout {
	return layout{maxPeers: g.MaxPeers, sectionSize: g.SectionSize, sections: g.Sections, slots: g.Slots,
		ringBytes: g.RingSize, bytes: g.Size}
}

func (l layout) size() int { return l.bytes }

// ErrFormat marks a window that is not (or not validly) formatted.
var ErrFormat = errors.New("window not formatted for protocol v2")

// Format lays protocol v2 out on a window of len(mem) bytes for maxPeers
// peers (see windowgeom.For) and returns the slot count. Every peer starts
// offline. Only the window's owner (popvmm) formats, before any peer joins.
func Format(mem []byte, maxPeers int) (int, error) {
	g, err := windowgeom.For(len(mem), maxPeers)
	if err != nil {
		return 0, err
	}
	slots := g.Slots
	l := layoutOf(g)
	clear(mem[:l.size()])
	le := binary.LittleEndian
	le.PutUint32(mem[hdrVersion:], Version)
	le.PutUint32(mem[hdrMaxPeers:], uint32(maxPeers))
	le.PutUint64(mem[hdrSectionSize:], uint64(l.sectionSize))
	le.PutUint64(mem[hdrSections:], uint64(l.sections))
	le.PutUint32(mem[hdrRingSlots:], uint32(slots))
	le.PutUint32(mem[hdrSlotSize:], SlotSize)
	winmem.Store64(mem, hdrMagic, Magic) // last: the header is valid from here on
	return slots, nil
}

// readLayout validates the header of a formatted window.
func readLayout(mem []byte) (layout, error) {
	if len(mem) < pageSize {
		return layout{}, fmt.Errorf("%w: %d bytes", ErrFormat, len(mem))
	}
	le := binary.LittleEndian
	if winmem.Load64(mem, hdrMagic) != Magic {
		return layout{}, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	if v := le.Uint32(mem[hdrVersion:]); v != Version {
		return layout{}, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	maxPeers := int(le.Uint32(mem[hdrMaxPeers:]))
	slots := int(le.Uint32(mem[hdrRingSlots:]))
	if maxPeers < 2 || maxPeers > MaxPeers || slots < windowgeom.MinSlots || slots > windowgeom.MaxSlots || slots&(slots-1) != 0 ||
		le.Uint32(mem[hdrSlotSize:]) != SlotSize {
		return layout{}, fmt.Errorf("%w: %d peers, %d slots", ErrFormat, maxPeers, slots)
	}
	l := newLayout(maxPeers, slots)
	if uint64(l.sectionSize) != le.Uint64(mem[hdrSectionSize:]) || uint64(l.sections) != le.Uint64(mem[hdrSections:]) || l.size() > len(mem) {
		return layout{}, fmt.Errorf("%w: geometry does not match a %d-byte window", ErrFormat, len(mem))
	}
	return l, nil
}
