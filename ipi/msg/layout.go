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
)

// Protocol constants (docs/window-protocol.md).
const (
	Magic   = 0x31304753_4D504F50 // "POPMSG01" little-endian
	Version = 2

	pageSize   = 4096
	lineSize   = 64 // a cache line: slot size, and the stride of hot fields
	SlotSize   = lineSize
	slotHeader = 8
	// SlotPayload is how many message bytes the first slot of a message
	// carries; the following slots carry SlotSize bytes each.
	SlotPayload = SlotSize - slotHeader
	// maxLen is the largest length the 24-bit length field holds.
	maxLen = 1<<24 - 1

	// MaxPeers bounds the peer table: a section header holds one receive
	// head per possible sender, a cache line each.
	MaxPeers = 56
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
const (
	commonOffset = pageSize
	commonArmed  = commonOffset
	// sectionsOffset is where section 0 begins: after the header page and
	// the common page.
	sectionsOffset = 2 * pageSize
)

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

// layout is the geometry of a formatted window, read once at Join and
// checked against the window's size; nothing later trusts the header again.
type layout struct {
	maxPeers    int
	sectionSize int
	sections    int // offset of section 0
	slots       int // slots per ring, a power of two
	ringBytes   int
}

func (l layout) section(p int) int        { return l.sections + p*l.sectionSize }
func (l layout) ring(from, to int) int    { return l.section(from) + pageSize + to*l.ringBytes }
func (l layout) slot(ring, i int) int     { return ring + lineSize + (i&(l.slots-1))*SlotSize }
func (l layout) head(owner, from int) int { return l.section(owner) + secHeads + from*lineSize }

func newLayout(maxPeers, slots int) layout {
	ringBytes := lineSize + slots*SlotSize
	sec := pageSize + maxPeers*ringBytes
	sec = (sec + pageSize - 1) &^ (pageSize - 1)
	return layout{maxPeers: maxPeers, sectionSize: sec, sections: sectionsOffset, slots: slots, ringBytes: ringBytes}
}

func (l layout) size() int { return l.sections + l.maxPeers*l.sectionSize }

// ErrFormat marks a window that is not (or not validly) formatted.
var ErrFormat = errors.New("window not formatted for protocol v2")

// Geometry says where the parts of a window formatted for MaxPeers peers
// lie, in bytes from the window's start: the header page, the common page
// and one section per peer, all page-aligned. It is what window.protect
// maps: every kernel writes the common page and its own section only.
type Geometry struct {
	MaxPeers    int
	Slots       int // per ring
	HeaderSize  int // page 0, at offset 0
	Common      int // offset of the common page
	CommonSize  int
	Sections    int // offset of section 0
	SectionSize int
	// Size is the bytes the layout uses; the window's rest is unused.
	Size int
}

// Section returns the offset of peer p's section.
func (g Geometry) Section(p int) int { return g.Sections + p*g.SectionSize }

// PageSize is the granularity of the geometry: every part starts and ends
// on a multiple of it.
const PageSize = pageSize

// GeometryFor returns the geometry Format gives a window of size bytes for
// maxPeers peers: the largest power-of-two ring (16 to 4096 slots) that
// fits.
func GeometryFor(size, maxPeers int) (Geometry, error) {
	if maxPeers < 2 || maxPeers > MaxPeers {
		return Geometry{}, fmt.Errorf("format window: %d peers, want 2-%d", maxPeers, MaxPeers)
	}
	for s := 4096; s >= 16; s /= 2 {
		if l := newLayout(maxPeers, s); l.size() <= size {
			return Geometry{MaxPeers: maxPeers, Slots: s, HeaderSize: pageSize, Common: commonOffset, CommonSize: pageSize,
				Sections: l.sections, SectionSize: l.sectionSize, Size: l.size()}, nil
		}
	}
	return Geometry{}, fmt.Errorf("format window: %d bytes is too small for %d peers (need %d)", size, maxPeers, newLayout(maxPeers, 16).size())
}

// Format lays protocol v2 out on a window of len(mem) bytes for maxPeers
// peers (see GeometryFor) and returns the slot count. Every peer starts
// offline. Only the window's owner (popvmm) formats, before any peer joins.
func Format(mem []byte, maxPeers int) (int, error) {
	g, err := GeometryFor(len(mem), maxPeers)
	if err != nil {
		return 0, err
	}
	slots := g.Slots
	l := newLayout(maxPeers, slots)
	clear(mem[:l.size()])
	le := binary.LittleEndian
	le.PutUint32(mem[hdrVersion:], Version)
	le.PutUint32(mem[hdrMaxPeers:], uint32(maxPeers))
	le.PutUint64(mem[hdrSectionSize:], uint64(l.sectionSize))
	le.PutUint64(mem[hdrSections:], uint64(l.sections))
	le.PutUint32(mem[hdrRingSlots:], uint32(slots))
	le.PutUint32(mem[hdrSlotSize:], SlotSize)
	store64(mem, hdrMagic, Magic) // last: the header is valid from here on
	return slots, nil
}

// readLayout validates the header of a formatted window.
func readLayout(mem []byte) (layout, error) {
	if len(mem) < pageSize {
		return layout{}, fmt.Errorf("%w: %d bytes", ErrFormat, len(mem))
	}
	le := binary.LittleEndian
	if load64(mem, hdrMagic) != Magic {
		return layout{}, fmt.Errorf("%w: bad magic", ErrFormat)
	}
	if v := le.Uint32(mem[hdrVersion:]); v != Version {
		return layout{}, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	maxPeers := int(le.Uint32(mem[hdrMaxPeers:]))
	slots := int(le.Uint32(mem[hdrRingSlots:]))
	if maxPeers < 2 || maxPeers > MaxPeers || slots < 16 || slots > 4096 || slots&(slots-1) != 0 ||
		le.Uint32(mem[hdrSlotSize:]) != SlotSize {
		return layout{}, fmt.Errorf("%w: %d peers, %d slots", ErrFormat, maxPeers, slots)
	}
	l := newLayout(maxPeers, slots)
	if uint64(l.sectionSize) != le.Uint64(mem[hdrSectionSize:]) || uint64(l.sections) != le.Uint64(mem[hdrSections:]) || l.size() > len(mem) {
		return layout{}, fmt.Errorf("%w: geometry does not match a %d-byte window", ErrFormat, len(mem))
	}
	return l, nil
}
