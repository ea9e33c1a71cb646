package msg

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/popvmm/popvmm/internal/winmem"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// Doorbell interrupts peers and waits to be interrupted: eventfds on the
// host (ipi.Client), the window device's Doorbell register and interrupt in
// a guest, channels in tests.
type Doorbell interface {
	// Ring interrupts peer.
	Ring(peer int) error
	// Wait blocks until this node is rung or ctx ends.
	Wait(ctx context.Context) error
}

// Handler receives one message. payload is valid only during the call.
type Handler func(from int, payload []byte)

// PeerEvent reports a peer coming online or going away.
type PeerEvent struct {
	Peer  int
	Name  string
	State State // StateOnline, StateOffline or StateCrashed
	// Generation is the incarnation the event concerns: the peer's
	// generation when it checked in (see Node.Generation).
	Generation uint32
}

// Options tune a node.
type Options struct {
	// Budget is how many messages the receive loop takes before it
	// checks again whether to keep polling (NAPI's weight). Default 64.
	Budget int
	// Poll keeps the receiver polling and never arms doorbells: lowest
	// latency, one core busy.
	Poll bool
	// Heartbeat is how often the node bumps its heartbeat and scans the
	// peer table. Default 100 ms.
	Heartbeat time.Duration
	// PeerTimeout is how long a peer's heartbeat may stand still before it
	// is reported offline. Default 3 s.
	PeerTimeout time.Duration
	// MaxMessage bounds a message's size. Default 64 KiB, and at most what
	// one ring holds.
	MaxMessage int
	// Linger is how long the receive loop keeps polling after its last
	// message before it arms doorbells and sleeps: a conversation's next
	// message usually comes sooner than a doorbell's wake-up would.
	// Default 50 µs; negative disables it.
	Linger time.Duration
}

// Stats are a node's counters.
type Stats struct {
	Sent, Received uint64 // messages
	DoorbellsRung  uint64 // rings this node sent
	DoorbellsSaved uint64 // sends to a disarmed (polling) receiver: no ring
	Wakeups        uint64 // times this node woke from a doorbell
	RingFull       uint64 // sends refused: the destination ring was full
	ProtocolErrors uint64 // garbage seen in a sender's ring
	// DoorbellErrors counts doorbells that could not be rung (e.g. a peer
	// whose eventfds this node has not been told yet). The message is in
	// the ring all the same; the receiver finds it at its next heartbeat.
	DoorbellErrors uint64
}

// Errors from Send.
var (
	ErrRingFull    = errors.New("ring full")
	ErrPeerOffline = errors.New("peer offline")
	ErrTooLarge    = errors.New("message too large")
	ErrBadPeer     = errors.New("no such peer")
)

// Node is this peer's view of the window.
type Node struct {
	mem  []byte
	l    layout
	id   int
	gen  uint32 // this incarnation's generation
	bell Doorbell
	opt  Options

	handlers  [Services]atomic.Pointer[Handler]
	sendMu    []sync.Mutex // one producer per ring
	headCache []uint64     // per destination, under sendMu: last head read
	svcMu     sync.Mutex

	// Receive state, owned by the receive loop.
	broken   []bool   // senders whose ring held garbage, until they re-check-in
	gens     []uint32 // sender generation the receive state belongs to
	partial  []byte
	lastBeat []uint64
	lastSeen []time.Time
	known    []State  // the state last reported for each peer…
	knownGen []uint32 // …for this incarnation of it…
	names    []string // …under this name

	events   chan PeerEvent
	perPeer  []struct{ sent, received atomic.Uint64 }
	reserved atomic.Pointer[[]string] // names[i] belongs to peer i (Reserve)
	reqs     requests                 // requests awaiting replies (Ask)
	stats    struct {
		sent, received, rung, saved, wakeups, full, errors, bellErrors atomic.Uint64
	}
}

// Join checks this node in as peer id of the formatted window mem: it bumps
// its generation, takes up every sender's ring where it stands (older
// messages to a previous incarnation are dropped), and goes online.
func Join(mem []byte, id int, name string, bell Doorbell, opt Options) (*Node, error) {
	l, err := readLayout(mem)
	if err != nil {
		return nil, err
	}
	if id < 0 || id >= l.maxPeers {
		return nil, fmt.Errorf("join window as peer %d: %w (window has %d)", id, ErrBadPeer, l.maxPeers)
	}
	if len(name) > nameLen {
		name = name[:nameLen]
	}
	if opt.Budget <= 0 {
		opt.Budget = 64
	}
	if opt.Heartbeat <= 0 {
		opt.Heartbeat = 100 * time.Millisecond
	}
	if opt.PeerTimeout <= 0 {
		opt.PeerTimeout = 3 * time.Second
	}
	if opt.Linger == 0 {
		opt.Linger = 50 * time.Microsecond
	}
	ringMax := min(SlotPayload+(l.slots-1)*SlotSize, maxLen)
	if opt.MaxMessage <= 0 {
		opt.MaxMessage = 64 << 10
	}
	opt.MaxMessage = min(opt.MaxMessage, ringMax)
	n := &Node{mem: mem, l: l, id: id, bell: bell, opt: opt,
		sendMu: make([]sync.Mutex, l.maxPeers), headCache: make([]uint64, l.maxPeers), broken: make([]bool, l.maxPeers), gens: make([]uint32, l.maxPeers),
		lastBeat: make([]uint64, l.maxPeers), lastSeen: make([]time.Time, l.maxPeers), known: make([]State, l.maxPeers),
		knownGen: make([]uint32, l.maxPeers), names: make([]string, l.maxPeers),
		events: make(chan PeerEvent, 4*l.maxPeers), perPeer: make([]struct{ sent, received atomic.Uint64 }, l.maxPeers)}

	sec := l.section(id)
	winmem.Store32(mem, sec+secState, uint32(StateBooting))
	var nb [nameLen]byte
	copy(nb[:], name)
	for i := 0; i < nameLen; i += 8 { // word stores: peers read it meanwhile
		winmem.Store64(mem, sec+secName+i, binary.LittleEndian.Uint64(nb[i:]))
	}
	clear(mem[sec+secServices : sec+secServices+Services/8])
	for p := range l.maxPeers {
		// Messages to this node's previous incarnation are not ours…
		n.takeUp(p, winmem.Load64(mem, l.ring(p, id)))
		// …and this incarnation's messages start where its rings stand.
		r := l.ring(id, p)
		winmem.Store64(mem, r+ringBase, winmem.Load64(mem, r))
	}
	winmem.Store32(mem, armedOff(id), 0)
	n.gen = winmem.Load32(mem, sec+secGeneration) + 1
	winmem.Store32(mem, sec+secGeneration, n.gen)
	winmem.Store32(mem, sec+secState, uint32(StateOnline))
	return n, nil
}

// takeUp starts reading sender from's ring at slot index head, for the
// sender's current generation. The generation is read before head's source:
// a sender writes its ring bases before it bumps its generation.
func (n *Node) takeUp(from int, head uint64) {
	n.gens[from] = winmem.Load32(n.mem, n.l.section(from)+secGeneration)
	winmem.Store64(n.mem, n.l.head(n.id, from), head)
	n.broken[from] = false
}

// ID is this node's peer id.
func (n *Node) ID() int { return n.id }

// Register sets the handler for service; nil removes it.
func (n *Node) Register(service uint8, h Handler) {
	if h == nil {
		n.handlers[service].Store(nil)
		return
	}
	n.handlers[service].Store(&h)
}

// Subscribe announces interest in service: Multicast reaches this node.
func (n *Node) Subscribe(service uint8) { n.setService(service, true) }

// Unsubscribe withdraws it.
func (n *Node) Unsubscribe(service uint8) { n.setService(service, false) }

func (n *Node) setService(service uint8, on bool) {
	off := n.l.section(n.id) + secServices + int(service/32)*4
	bit := uint32(1) << (service % 32)
	n.svcMu.Lock() // only this node writes its section; the lock orders its own callers
	defer n.svcMu.Unlock()
	v := winmem.Load32(n.mem, off) &^ bit
	if on {
		v |= bit
	}
	winmem.Store32(n.mem, off, v)
}

func (n *Node) subscribed(peer int, service uint8) bool {
	off := n.l.section(peer) + secServices + int(service/32)*4
	return winmem.Load32(n.mem, off)&(1<<(service%32)) != 0
}

// PeerState reads peer's state from the peer table.
func (n *Node) PeerState(peer int) State {
	if peer < 0 || peer >= n.l.maxPeers {
		return StateOffline
	}
	return State(winmem.Load32(n.mem, n.l.section(peer)+secState))
}

// Send puts one message for service on peer's ring and rings peer if it is
// armed. It does not block: a full ring is ErrRingFull.
func (n *Node) Send(peer int, service uint8, payload []byte) error {
	if peer < 0 || peer >= n.l.maxPeers || peer == n.id {
		return fmt.Errorf("send to %d: %w", peer, ErrBadPeer)
	}
	if len(payload) > n.opt.MaxMessage {
		return fmt.Errorf("send %d bytes: %w (max %d)", len(payload), ErrTooLarge, n.opt.MaxMessage)
	}
	if n.PeerState(peer) != StateOnline {
		return fmt.Errorf("send to %d: %w", peer, ErrPeerOffline)
	}
	chunks := slotsFor(len(payload))

	n.sendMu[peer].Lock()
	r := n.l.ring(n.id, peer)
	tail := winmem.Load64(n.mem, r)
	// The receiver's head is read only when the last value read leaves too
	// little room: each read pulls the receiver's cache line over.
	head := n.headCache[peer]
	if fits := func() bool { return tail-head <= uint64(n.l.slots) && uint64(n.l.slots)-(tail-head) >= uint64(chunks) }; !fits() {
		head = winmem.Load64(n.mem, n.l.head(peer, n.id))
		n.headCache[peer] = head
		if !fits() {
			n.sendMu[peer].Unlock()
			n.stats.full.Add(1)
			return fmt.Errorf("send to %d: %w", peer, ErrRingFull)
		}
	}
	// The first slot carries the header and SlotPayload bytes; the rest
	// of the message fills the following slots whole, written as runs of
	// contiguous ring memory (two when it wraps).
	s0 := n.l.slot(r, int(tail))
	first := min(len(payload), SlotPayload)
	copy(n.mem[s0+slotHeader:s0+SlotSize], payload[:first])
	n.copyOut(r, tail+1, payload[first:])
	hdr := uint64(uint32(tail+1)) | uint64(len(payload))<<32 | uint64(service)<<56
	winmem.Store64(n.mem, s0, hdr)                // the header last: the message is complete
	winmem.Store64(n.mem, r, tail+uint64(chunks)) // publish
	n.sendMu[peer].Unlock()
	n.stats.sent.Add(1)
	n.perPeer[peer].sent.Add(1)

	// Store tail, then swap armed; the receiver stores armed, then loads
	// tail. Both are sequentially consistent, so at least one side sees
	// the other: no message is left without a doorbell. Only the sender
	// that disarms the receiver rings it.
	// A plain load first: while the receiver polls, the armed word stays
	// 0 and its cache line shared, so a busy sender does no atomic
	// read-modify-write on it.
	if winmem.Load32(n.mem, armedOff(peer)) == 0 || !winmem.CAS32(n.mem, armedOff(peer), 1, 0) {
		n.stats.saved.Add(1)
		return nil
	}
	n.stats.rung.Add(1)
	if err := n.bell.Ring(peer); err != nil {
		// The message is published: failing the send would invite a
		// duplicate. The receiver, disarmed now, wakes at its next
		// heartbeat and finds it.
		n.stats.bellErrors.Add(1)
	}
	return nil
}

// Multicast sends to every online peer subscribed to service and returns
// how many it reached; failures are joined into the error.
func (n *Node) Multicast(service uint8, payload []byte) (int, error) {
	var errs []error
	sent := 0
	for p := range n.l.maxPeers {
		if p == n.id || n.PeerState(p) != StateOnline || !n.subscribed(p, service) {
			continue
		}
		if err := n.Send(p, service, payload); err != nil {
			errs = append(errs, err)
			continue
		}
		sent++
	}
	return sent, errors.Join(errs...)
}

// Events reports peers coming online and going away, from the peer table
// and heartbeats. It is never closed; a slow reader loses events.
func (n *Node) Events() <-chan PeerEvent { return n.events }

// Armed reports whether this node's doorbells are armed (it is idle and
// wants to be rung).
func (n *Node) Armed() bool { return winmem.Load32(n.mem, armedOff(n.id)) == 1 }

// Stats returns the node's counters.
func (n *Node) Stats() Stats {
	return Stats{Sent: n.stats.sent.Load(), Received: n.stats.received.Load(), DoorbellsRung: n.stats.rung.Load(),
		DoorbellsSaved: n.stats.saved.Load(), Wakeups: n.stats.wakeups.Load(), RingFull: n.stats.full.Load(),
		ProtocolErrors: n.stats.errors.Load(), DoorbellErrors: n.stats.bellErrors.Load()}
}

// Run receives until ctx ends: it drains every ring up to the budget with
// doorbells disarmed, keeps polling while there is work, and when the rings
// are empty arms doorbells, checks once more, and sleeps on the doorbell.
// It also bumps this node's heartbeat and watches the peer table. When it
// returns the node is offline, unless a newer incarnation of its id has
// checked in meanwhile: that one's entry is left alone.
func (n *Node) Run(ctx context.Context) error {
	defer func() {
		if n.setGone(n.id, n.gen, StateOffline) {
			winmem.Store32(n.mem, armedOff(n.id), 0)
		}
	}()
	next := time.Now()
	var lastWork time.Time
	for {
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		if !now.Before(next) {
			n.maintain(now)
			next = now.Add(n.opt.Heartbeat)
		}
		got := n.poll(n.opt.Budget)
		if got > 0 {
			lastWork = now
		}
		if got > 0 || n.opt.Poll || now.Sub(lastWork) < n.opt.Linger {
			if got == 0 || got >= n.opt.Budget {
				runtime.Gosched()
			}
			continue
		}
		winmem.Store32(n.mem, armedOff(n.id), 1)
		if n.pending() {
			winmem.Store32(n.mem, armedOff(n.id), 0)
			continue
		}
		wctx, cancel := context.WithDeadline(ctx, next)
		err := n.bell.Wait(wctx)
		cancel()
		winmem.Store32(n.mem, armedOff(n.id), 0)
		switch {
		case err == nil:
			n.stats.wakeups.Add(1)
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded):
			// heartbeat time
		default:
			return fmt.Errorf("wait for doorbell: %w", err)
		}
	}
}

// Poll delivers up to budget waiting messages in the caller's goroutine and
// returns how many; for callers that poll themselves instead of calling
// Run (never both at once).
func (n *Node) Poll(budget int) int { return n.poll(budget) }

// pending reports whether any ring to this node holds a message.
func (n *Node) pending() bool {
	for from := range n.l.maxPeers {
		if from != n.id && !n.broken[from] && n.published(from, winmem.Load64(n.mem, n.l.head(n.id, from))) {
			return true
		}
	}
	return false
}

// published reports whether the slot at index head of from's ring to this
// node starts a published message: its header's seq is head+1. The sender
// stores the header last, so a matching seq means the whole message is
// there; the slot's previous occupant carries seq head+1-slots.
func (n *Node) published(from int, head uint64) bool {
	return uint32(winmem.Load64(n.mem, n.l.slot(n.l.ring(from, n.id), int(head)))) == uint32(head+1)
}

// poll takes up to budget messages from all rings, round-robin by sender.
func (n *Node) poll(budget int) int {
	got := 0
	for from := range n.l.maxPeers {
		if from == n.id || n.broken[from] {
			continue
		}
		if g := winmem.Load32(n.mem, n.l.section(from)+secGeneration); g != n.gens[from] {
			// The sender checked in anew: read from where its new
			// incarnation started (it may have sent already).
			n.takeUp(from, winmem.Load64(n.mem, n.l.ring(from, n.id)+ringBase))
		}
		got += n.drain(from, budget-got)
		if got >= budget {
			break
		}
	}
	return got
}

// drain delivers up to budget complete messages from sender from. Anything
// inconsistent in the sender's ring marks it broken: its messages are
// ignored until it checks in again. Nothing read from the window is used as
// an index without being bounded first.
func (n *Node) drain(from, budget int) int {
	r := n.l.ring(from, n.id)
	headOff := n.l.head(n.id, from)
	head := winmem.Load64(n.mem, headOff)
	got := 0
	for got < budget && n.published(from, head) {
		msg, service, used, ok := n.assemble(r, head)
		if !ok {
			n.fail(from)
			return got
		}
		if winmem.Load32(n.mem, n.l.section(from)+secGeneration) != n.gens[from] {
			// The sender checked in anew while this was read: the
			// message may be its new incarnation's, and must not be
			// taken as the old one's (a reply counts only from the
			// incarnation asked). poll takes the new one up.
			return got
		}
		head += used
		winmem.Store64(n.mem, headOff, head) // slots free for the sender again
		got++
		n.stats.received.Add(1)
		n.perPeer[from].received.Add(1)
		if h := n.handlers[service].Load(); h != nil {
			(*h)(from, msg)
		}
	}
	return got
}

// assemble reads the published message starting at slot index head.
func (n *Node) assemble(r int, head uint64) (msg []byte, service uint8, used uint64, ok bool) {
	s0 := n.l.slot(r, int(head))
	hdr := winmem.Load64(n.mem, s0)
	ln, svc := int(hdr>>32&0xffffff), uint8(hdr>>56)
	if ln > n.opt.MaxMessage {
		return nil, 0, 0, false
	}
	k := uint64(slotsFor(ln))
	if k > uint64(n.l.slots) {
		return nil, 0, 0, false
	}
	if cap(n.partial) < ln {
		n.partial = make([]byte, ln)
	}
	n.partial = n.partial[:ln]
	copy(n.partial, n.mem[s0+slotHeader:s0+slotHeader+min(ln, SlotPayload)])
	if ln > SlotPayload {
		n.copyIn(r, head+1, n.partial[SlotPayload:])
	}
	return n.partial, svc, k, true
}

// slotsFor is how many slots a message of ln bytes takes.
func slotsFor(ln int) int {
	if ln <= SlotPayload {
		return 1
	}
	return 1 + (ln-SlotPayload+SlotSize-1)/SlotSize
}

// ringRuns calls f with the ring-memory runs that hold len bytes starting
// at whole slot idx: one run, or two when the ring wraps.
func (n *Node) ringRuns(r int, idx uint64, length int, f func(off, from, size int)) {
	done := 0
	for done < length {
		i := int(idx) & (n.l.slots - 1)
		room := (n.l.slots - i) * SlotSize
		size := min(room, length-done)
		f(n.l.slot(r, i), done, size)
		done += size
		idx += uint64((size + SlotSize - 1) / SlotSize)
	}
}

func (n *Node) copyOut(r int, idx uint64, p []byte) {
	n.ringRuns(r, idx, len(p), func(off, from, size int) { copy(n.mem[off:off+size], p[from:from+size]) })
}

func (n *Node) copyIn(r int, idx uint64, p []byte) {
	n.ringRuns(r, idx, len(p), func(off, from, size int) { copy(p[from:from+size], n.mem[off:off+size]) })
}

func (n *Node) fail(from int) {
	n.broken[from] = true
	n.stats.errors.Add(1)
}

// maintain bumps the heartbeat and reports peer table changes.
func (n *Node) maintain(now time.Time) {
	sec := n.l.section(n.id)
	winmem.Store64(n.mem, sec+secHeartbeat, winmem.Load64(n.mem, sec+secHeartbeat)+1)
	for p := range n.l.maxPeers {
		if p == n.id {
			continue
		}
		gen := n.Generation(p)
		st := n.PeerState(p)
		beat := winmem.Load64(n.mem, n.l.section(p)+secHeartbeat)
		if gen != n.knownGen[p] {
			// A new incarnation checked in: the one reported online
			// has gone, whatever the table says now, and the new one's
			// heartbeat is watched from now on.
			if n.known[p] == StateOnline {
				n.emit(PeerEvent{Peer: p, Name: n.names[p], State: StateOffline, Generation: n.knownGen[p]})
			}
			n.known[p], n.knownGen[p] = StateOffline, gen
			n.lastBeat[p], n.lastSeen[p] = beat, now
		}
		if beat != n.lastBeat[p] || (st == StateOnline && n.lastSeen[p].IsZero()) {
			n.lastBeat[p], n.lastSeen[p] = beat, now
		}
		if st == StateOnline && !n.lastSeen[p].IsZero() && now.Sub(n.lastSeen[p]) > n.opt.PeerTimeout {
			st = StateOffline // silent too long: gone, whatever the table says
		}
		if st == StateBooting {
			continue
		}
		if st != n.known[p] && (st == StateOnline || n.known[p] == StateOnline) {
			if st == StateOnline {
				n.names[p] = n.peerName(p)
			}
			n.emit(PeerEvent{Peer: p, Name: n.names[p], State: st, Generation: gen})
		}
		n.known[p] = st
	}
}

// PeerInfo is one row of the peer table.
type PeerInfo struct {
	ID         int    `json:"id"`
	Name       string `json:"name"`
	State      string `json:"state"`
	Generation uint32 `json:"generation"`
	Heartbeat  uint64 `json:"heartbeat"`
	// Sent and Received count the messages this node exchanged with the
	// peer.
	Sent     uint64 `json:"sent"`
	Received uint64 `json:"received"`
	// Impostor: the peer's section claims a name reserved for another
	// peer id (Reserve), e.g. a host process calling itself a kernel.
	Impostor bool `json:"impostor,omitempty"`
}

// Reserve gives names to the first len(names) peer ids: names[i] belongs
// to peer i whatever any section says (the kernels, whose ids follow their
// VMs). From then on PeerByName resolves a reserved name to its own id
// only, and a peer whose section claims a name reserved for another id is
// an impostor: Peers flags it and PeerByName never returns it.
func (n *Node) Reserve(names []string) {
	names = append([]string(nil), names...)
	n.reserved.Store(&names)
}

// ReservedFor returns the peer id name is reserved for, if any.
func (n *Node) ReservedFor(name string) (int, bool) {
	if r := n.reserved.Load(); r != nil {
		for id, rn := range *r {
			if rn == name && name != "" {
				return id, true
			}
		}
	}
	return 0, false
}

// Peers reads the peer table: every peer that has ever checked in.
func (n *Node) Peers() []PeerInfo {
	var out []PeerInfo
	for p := range n.l.maxPeers {
		sec := n.l.section(p)
		gen := winmem.Load32(n.mem, sec+secGeneration)
		if gen == 0 {
			continue
		}
		name := n.peerName(p)
		owner, reserved := n.ReservedFor(name)
		out = append(out, PeerInfo{ID: p, Name: name, State: n.PeerState(p).String(), Generation: gen,
			Heartbeat: winmem.Load64(n.mem, sec+secHeartbeat), Sent: n.perPeer[p].sent.Load(), Received: n.perPeer[p].received.Load(),
			Impostor: reserved && owner != p})
	}
	return out
}

// PeerByName returns the id of an online peer (other than this node) that
// checked in under name. A name given to an id by Reserve resolves to that
// id only (found while that peer is online), never to a peer claiming it.
func (n *Node) PeerByName(name string) (int, bool) {
	if id, ok := n.ReservedFor(name); ok {
		return id, id != n.id && n.PeerState(id) == StateOnline
	}
	for _, p := range n.Peers() {
		if p.Name == name && p.State == StateOnline.String() && p.ID != n.id && !p.Impostor {
			return p.ID, true
		}
	}
	return 0, false
}

// Generation is peer's generation in the peer table: bumped at every
// check-in, so it names one incarnation of the peer.
func (n *Node) Generation(peer int) uint32 {
	if peer < 0 || peer >= n.l.maxPeers {
		return 0
	}
	return winmem.Load32(n.mem, n.l.section(peer)+secGeneration)
}

// MarkGone records that popvmm saw incarnation gen of peer leave or crash
// (its VM stopped, its host process disconnected): the peer table says so
// from now on. gen is the peer's Generation read when it was known to have
// gone (before its id could be given to anyone else); a departure noticed
// late then cannot touch a newer incarnation that has checked in under the
// same id: MarkGone leaves that one alone and reports false.
func (n *Node) MarkGone(peer int, gen uint32, crashed bool) bool {
	if peer < 0 || peer >= n.l.maxPeers || peer == n.id {
		return false
	}
	st := StateOffline
	if crashed {
		st = StateCrashed
	}
	return n.setGone(peer, gen, st)
}

// setGone sets peer's state to st if its generation is still gen. State
// and generation share one 64-bit word (state low, generation high, the
// window being little-endian), so the check and the store are one atomic
// step: a check-in bumps the generation before it goes online, and either
// comes first. A peer rewriting its own entry without end only makes this
// give up.
func (n *Node) setGone(peer int, gen uint32, st State) bool {
	off := n.l.section(peer) + secState
	for range 64 {
		w := winmem.Load64(n.mem, off)
		if uint32(w>>32) != gen {
			return false
		}
		if winmem.CAS64(n.mem, off, w, uint64(gen)<<32|uint64(st)) {
			return true
		}
	}
	return false
}

func (n *Node) emit(e PeerEvent) {
	select {
	case n.events <- e:
	default:
	}
}

func (n *Node) peerName(p int) string {
	off := n.l.section(p) + secName
	b := make([]byte, 0, nameLen)
	for i := 0; i < nameLen; i += 8 { // word loads: the peer may write it meanwhile
		b = binary.LittleEndian.AppendUint64(b, winmem.Load64(n.mem, off+i))
	}
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
