// Package winnet is the window network's shared-memory layout
// (docs/winnet.md) as a Go reference: the geometry of a winnet window for a
// size and a peer count (For), its header (Format, Open), the slots a
// kernel maps it as under window.protect (Slots), one peer's endpoint with
// the send, receive and doorbell-mitigation rules the guest driver
// (images/drivers/winnet) follows (Port), and what `popvmm status` reads
// of each peer's section (ReadPeer). Everything read from another peer's
// section is bounded before use: garbage is dropped and counted.
package winnet

import (
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/popvmm/popvmm/internal/winmem"

	"github.com/popvmm/popvmm/internal/windowgeom"
)

// Layout constants (docs/winnet.md).
const (
	Magic   = 0x3154454E_57504F50 // "POPWNET1" little-endian
	Version = 1

	// PageSize is the geometry's granularity: the header page, every
	// section, ring and data area start on it.
	PageSize = 4096
	// LineSize is a cache line: frames in a data area start on it, and
	// each peer's block in a control page is one.
	LineSize = 64
	// MaxPeers bounds the peers of one winnet window: a control page holds
	// one LineSize block per possible peer after its first line.
	MaxPeers = windowgeom.MaxPeers
	// RingSlots is the number of descriptors of a ring (a power of two).
	RingSlots = 256
	// MinDataSize and MaxDataSize bound a ring's data area.
	MinDataSize = 32 << 10
	MaxDataSize = 16 << 20
	// MaxMTU is the largest MTU: what fits 64 KiB with headers.
	MaxMTU = 65000
	// EthHeader is the Ethernet header a frame carries before its payload.
	EthHeader = 14
)

// Header (page 0), written by popvmm only (Format).
const (
	hdrMagic       = 0
	hdrVersion     = 8
	hdrMaxPeers    = 12
	hdrSectionSize = 16
	hdrRingSize    = 24
	hdrDataSize    = 32
	hdrRingSlots   = 40
	hdrMTU         = 44
)

// Control page of a section (the section's first page).
const (
	ctlState     = 0  // u32: StateDown, StateUp
	ctlGen       = 4  // u32: incremented at every Up
	ctlHeartbeat = 8  // u64: incremented periodically while up
	ctlArmed     = 16 // u32: 1: the peer sleeps and wants a doorbell
	ctlArmSeq    = 20 // u32: incremented every time the peer arms
	ctlPeers     = 64 // a LineSize block per peer q, below

	// In peer q's block of peer p's control page: what p's receive path
	// writes, its own cache line per source.
	peerRxHead    = 0 // u64: slots of ring q→p that p consumed
	peerRxPackets = 8
	peerRxBytes   = 16
	peerRxDrops   = 24
)

// Ring p→d (in p's section): its first page holds the indexes and
// descriptors, its data area follows.
const (
	ringTail = 0 // u64: descriptors published
	ringBase = 8 // u64: the tail when the producer last came up
	// The producer's counters for this destination, in the tail's cache
	// line: its send path writes them with the tail, and nothing else
	// shares the line with the consumer's index.
	ringTxPackets = 16
	ringTxBytes   = 24
	ringTxDrops   = 32
	ringSlots     = 64 // RingSlots descriptors of 8 bytes: offset | len<<32
)

// Peer states in a section's control page.
const (
	StateDown = 0
	StateUp   = 1
)

// Geometry says where everything of a winnet window lies, in bytes from
// its start: the header page, then MaxPeers sections of SectionSize bytes;
// a section is a control page then one ring per possible destination
// (the ring to itself stays unused, and untouched), RingSize bytes each:
// a page of indexes and descriptors, then DataSize bytes of frames.
type Geometry struct {
	MaxPeers    int
	SectionSize uint64
	RingSize    uint64
	DataSize    uint64
	MTU         int
	// Size is the bytes the layout uses; the window's rest is unused.
	Size uint64
}

// For is the geometry of a window of size bytes for maxPeers peers: the
// largest page-multiple data area (at most MaxDataSize) that fits, and the
// MTU that lets a ring hold four of the largest frames (at most MaxMTU).
func For(size uint64, maxPeers int) (Geometry, error) {
	if maxPeers < 2 || maxPeers > MaxPeers {
		return Geometry{}, fmt.Errorf("winnet: %d peers, want 2-%d", maxPeers, MaxPeers)
	}
	n := uint64(maxPeers)
	if size < PageSize {
		return Geometry{}, fmt.Errorf("winnet: window of %d bytes has no room for its header", size)
	}
	sec := (size - PageSize) / n &^ (PageSize - 1)
	var data uint64
	if ring := (sec - min(sec, PageSize)) / n &^ (PageSize - 1); ring > PageSize {
		data = min(ring-PageSize, MaxDataSize)
	}
	if data < MinDataSize {
		return Geometry{}, fmt.Errorf("winnet: a window of %d bytes is too small for %d peers (%d rings of at least %d KiB)",
			size, maxPeers, maxPeers*maxPeers, (PageSize+MinDataSize)>>10)
	}
	g := Geometry{MaxPeers: maxPeers, DataSize: data, RingSize: PageSize + data}
	g.SectionSize = PageSize + n*g.RingSize
	g.Size = PageSize + n*g.SectionSize
	g.MTU = int(min(MaxMTU, data/4-LineSize))
	return g, nil
}

// Section is the offset of peer p's section.
func (g Geometry) Section(p int) uint64 { return PageSize + uint64(p)*g.SectionSize }

// Ring is the offset of ring p→d, in p's section.
func (g Geometry) Ring(p, d int) uint64 { return g.Section(p) + PageSize + uint64(d)*g.RingSize }

// Data is the offset of ring p→d's data area.
func (g Geometry) Data(p, d int) uint64 { return g.Ring(p, d) + PageSize }

// MaxFrame is the largest frame a ring carries: the MTU and an Ethernet
// header.
func (g Geometry) MaxFrame() int { return g.MTU + EthHeader }

// peerBlock is the offset of q's block in p's control page.
func (g Geometry) peerBlock(p, q int) uint64 { return g.Section(p) + ctlPeers + uint64(q)*LineSize }

// Errors of Open.
var ErrFormat = errors.New("not a winnet window")

// Format writes the header of a winnet window for maxPeers peers over mem
// (zeroed, as a new memfd is), the magic last.
func Format(mem []byte, maxPeers int) (Geometry, error) {
	g, err := For(uint64(len(mem)), maxPeers)
	if err != nil {
		return Geometry{}, err
	}
	le := binary.LittleEndian
	le.PutUint32(mem[hdrVersion:], Version)
	le.PutUint32(mem[hdrMaxPeers:], uint32(maxPeers))
	le.PutUint64(mem[hdrSectionSize:], g.SectionSize)
	le.PutUint64(mem[hdrRingSize:], g.RingSize)
	le.PutUint64(mem[hdrDataSize:], g.DataSize)
	le.PutUint32(mem[hdrRingSlots:], RingSlots)
	le.PutUint32(mem[hdrMTU:], uint32(g.MTU))
	winmem.Store64(mem, hdrMagic, Magic)
	return g, nil
}

// Open reads and checks the header of a formatted window: every field
// must be the one For gives the window's size and peer count, as a guest
// driver checks it before it trusts it.
func Open(mem []byte) (Geometry, error) {
	if len(mem) < PageSize {
		return Geometry{}, fmt.Errorf("%w: %d bytes", ErrFormat, len(mem))
	}
	le := binary.LittleEndian
	if m := winmem.Load64(mem, hdrMagic); m != Magic {
		return Geometry{}, fmt.Errorf("%w: magic %#x", ErrFormat, m)
	}
	if v := le.Uint32(mem[hdrVersion:]); v != Version {
		return Geometry{}, fmt.Errorf("%w: version %d, want %d", ErrFormat, v, Version)
	}
	peers := le.Uint32(mem[hdrMaxPeers:])
	if peers > MaxPeers {
		return Geometry{}, fmt.Errorf("%w: %d peers", ErrFormat, peers)
	}
	g, err := For(uint64(len(mem)), int(peers))
	if err != nil {
		return Geometry{}, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	if le.Uint64(mem[hdrSectionSize:]) != g.SectionSize || le.Uint64(mem[hdrRingSize:]) != g.RingSize ||
		le.Uint64(mem[hdrDataSize:]) != g.DataSize || le.Uint32(mem[hdrRingSlots:]) != RingSlots ||
		le.Uint32(mem[hdrMTU:]) != uint32(g.MTU) {
		return Geometry{}, fmt.Errorf("%w: header does not match the geometry of %d bytes for %d peers", ErrFormat, len(mem), peers)
	}
	return g, nil
}

// Slots is how kernel peer maps a winnet window of size bytes formatted
// for maxPeers: with protect off one writable slot; with protect on its
// own section writable and everything else (header page, the other
// sections, the unused rest) read-only, adjacent slots of a kind merged.
func Slots(size uint64, maxPeers, peer int, protect bool) ([]windowgeom.Slot, error) {
	if size == 0 || size%PageSize != 0 {
		return nil, fmt.Errorf("winnet slots: %d bytes is not a positive multiple of the page size", size)
	}
	if !protect {
		return []windowgeom.Slot{{Offset: 0, Size: size}}, nil
	}
	g, err := For(size, maxPeers)
	if err != nil {
		return nil, fmt.Errorf("winnet slots: %w", err)
	}
	if peer < 0 || peer >= g.MaxPeers {
		return nil, fmt.Errorf("winnet slots: peer %d has no section (%d peers)", peer, g.MaxPeers)
	}
	own := g.Section(peer)
	parts := []windowgeom.Slot{
		{Offset: 0, Size: own, ReadOnly: true},
		{Offset: own, Size: g.SectionSize},
		{Offset: own + g.SectionSize, Size: size - own - g.SectionSize, ReadOnly: true},
	}
	var out []windowgeom.Slot
	for _, s := range parts {
		if s.Size > 0 {
			out = append(out, s)
		}
	}
	return out, nil
}
