package ipi

import (
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	evfd "github.com/popvmm/popvmm/internal/eventfd"
	"github.com/popvmm/popvmm/internal/windowgeom"
)

// BellID names one doorbell: interrupt vector Vector of peer Peer. Each has
// one eventfd, shared by everyone who rings it or is rung through it.
type BellID struct{ Peer, Vector int }

// Doorbells holds the cluster's doorbell eventfds, one per (peer, vector):
// the kernels' are made here and live as long as the Doorbells (a kernel
// keeps its eventfds across reboots), the host peers' are the ivshmem
// server's, held here while the peer is connected. Every window device
// rings and is rung through them: a kernel's eventfd is an irqfd in its VM
// (or what the device's INTx watcher reads), and every VM has an ioeventfd
// on its Doorbell register signalling each bell's eventfd.
//
// Devices and the server subscribe to changes of the set of peers (host
// peers joining and leaving, kernels started and stopped) and re-wire.
type Doorbells struct {
	kernels, vectors int

	mu      sync.Mutex // serialises changes; subscribers run outside it
	kernel  []*eventfd // kernel k, vector v at k*vectors+v
	up      []bool     // kernels whose VM runs
	boots   []uint64   // per kernel: the boot token of its current (or last) VM
	hosts   map[int][]*eventfd
	subs    map[int]func()
	nextSub int
	closed  bool

	snap atomic.Pointer[bellTable]
}

// bellTable is an immutable snapshot of the bells: what the vCPU threads'
// doorbell path reads without a lock.
type bellTable struct {
	vectors int
	fds     []*eventfd // peer p, vector v at p*vectors+v; nil: no such bell
	hosts   []int      // connected host peers, sorted
	up      []bool     // kernels whose VM runs
}

func (t *bellTable) get(b BellID) *eventfd {
	if b.Vector < 0 || b.Vector >= t.vectors || b.Peer < 0 {
		return nil
	}
	i := b.Peer*t.vectors + b.Vector
	if b.Peer > maxPeerID || i >= len(t.fds) {
		return nil
	}
	return t.fds[i]
}

// NewDoorbells makes the eventfds of kernels kernels (peer ids 0 to
// kernels-1) with vectors vectors each, for a cluster that admits up to
// hostPeers host peers besides.
func NewDoorbells(kernels, hostPeers, vectors int) (*Doorbells, error) {
	switch {
	case vectors < 1 || vectors > MaxVectors:
		return nil, fmt.Errorf("doorbells: %d vectors, want 1-%d", vectors, MaxVectors)
	case kernels < 1 || hostPeers < 0 || kernels+hostPeers > maxPeerID+1:
		return nil, fmt.Errorf("doorbells: %d kernels and %d host peers", kernels, hostPeers)
	case (kernels+hostPeers)*vectors > windowgeom.MaxBells:
		return nil, fmt.Errorf("doorbells: %d peers × %d vectors is over %d doorbells (one KVM ioeventfd each in every VM)",
			kernels+hostPeers, vectors, windowgeom.MaxBells)
	}
	d := &Doorbells{kernels: kernels, vectors: vectors, up: make([]bool, kernels), boots: make([]uint64, kernels),
		hosts: map[int][]*eventfd{}, subs: map[int]func(){}}
	for range kernels * vectors {
		fd, err := evfd.New()
		if err != nil {
			d.Close()
			return nil, err
		}
		e := &eventfd{fd: fd}
		e.refs.Store(1)
		d.kernel = append(d.kernel, e)
	}
	d.publishLocked()
	return d, nil
}

// Kernels is the number of kernel peers (ids 0 to Kernels-1).
func (d *Doorbells) Kernels() int { return d.kernels }

// Vectors is the number of vectors per peer.
func (d *Doorbells) Vectors() int { return d.vectors }

// Close closes the kernels' eventfds (once every holder let go) and lets go
// of the host peers'. Safe to call twice.
func (d *Doorbells) Close() {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return
	}
	d.closed = true
	for _, e := range d.kernel {
		e.release()
	}
	for id, fds := range d.hosts {
		for _, e := range fds {
			e.release()
		}
		delete(d.hosts, id)
	}
	d.snap.Store(&bellTable{vectors: d.vectors})
	subs := d.subscribers()
	d.mu.Unlock()
	for _, f := range subs {
		f()
	}
}

// publishLocked replaces the snapshot after a change.
func (d *Doorbells) publishLocked() {
	t := &bellTable{vectors: d.vectors, up: slices.Clone(d.up)}
	n := d.kernels
	for id := range d.hosts {
		t.hosts = append(t.hosts, id)
		n = max(n, id+1)
	}
	slices.Sort(t.hosts)
	t.fds = make([]*eventfd, n*d.vectors)
	copy(t.fds, d.kernel)
	for id, fds := range d.hosts {
		copy(t.fds[id*d.vectors:], fds)
	}
	d.snap.Store(t)
}

func (d *Doorbells) subscribers() []func() {
	subs := make([]func(), 0, len(d.subs))
	for _, f := range d.subs {
		subs = append(subs, f)
	}
	return subs
}

// subscribe calls f after every change of the peer set (from the goroutine
// that made the change, outside the Doorbells' lock; f reads the new state
// itself, so calls may overlap and the last one wins). It returns the
// cancel function.
func (d *Doorbells) subscribe(f func()) (cancel func()) {
	d.mu.Lock()
	defer d.mu.Unlock()
	id := d.nextSub
	d.nextSub++
	d.subs[id] = f
	return func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.subs, id)
	}
}

// changed publishes the state and tells the subscribers, d.mu held on entry
// and released on return.
func (d *Doorbells) changedUnlock() {
	d.publishLocked()
	subs := d.subscribers()
	d.mu.Unlock()
	for _, f := range subs {
		f()
	}
}

// Peers lists the peers that can be rung: every kernel (a stopped kernel's
// doorbells count for its next boot) and the connected host peers.
func (d *Doorbells) Peers() []int {
	t := d.snap.Load()
	ids := make([]int, 0, d.kernels+len(t.hosts))
	for k := range d.kernels {
		ids = append(ids, k)
	}
	return append(ids, t.hosts...)
}

// Ring signals b's eventfd, as a guest's Doorbell write or a host peer's
// Ring does; false when there is no such bell (an unknown peer or vector).
// It never blocks, and is safe against the bell's peer leaving meanwhile.
func (d *Doorbells) Ring(b BellID) bool {
	e := d.snap.Load().get(b)
	if e == nil || !e.tryHold() {
		return false
	}
	signal(e.fd)
	e.release()
	return true
}

// signal adds one to an eventfd's counter. A full counter (2^64-2 rings
// nobody read) changes nothing for the reader; a closed fd is a bell
// whose holder is gone.
func signal(fd int) { evfd.Signal(fd) }

// hold returns b's eventfd held (release it when done), or nil.
func (d *Doorbells) hold(b BellID) *eventfd {
	e := d.snap.Load().get(b)
	if e == nil || !e.tryHold() {
		return nil
	}
	return e
}

// KernelFd is the eventfd of kernel k's vector v (-1 if there is none),
// owned by the Doorbells: valid until Close.
func (d *Doorbells) KernelFd(k, v int) int {
	if k < 0 || k >= d.kernels || v < 0 || v >= d.vectors {
		return -1
	}
	return d.kernel[k*d.vectors+v].fd
}

// hostJoined records a host peer's eventfds (held until it leaves).
func (d *Doorbells) hostJoined(id int, fds []*eventfd) {
	d.mu.Lock()
	if d.closed || id < d.kernels {
		d.mu.Unlock()
		return
	}
	if old := d.hosts[id]; old != nil {
		for _, e := range old {
			e.release()
		}
	}
	held := make([]*eventfd, len(fds))
	for i, e := range fds {
		held[i] = e.hold()
	}
	d.hosts[id] = held
	d.changedUnlock()
}

// hostLeft forgets a host peer's eventfds; devices remove their
// ioeventfds for it before the last reference closes them.
func (d *Doorbells) hostLeft(id int) {
	d.mu.Lock()
	fds, ok := d.hosts[id]
	if !ok {
		d.mu.Unlock()
		return
	}
	delete(d.hosts, id)
	d.changedUnlock()
	for _, e := range fds {
		e.release()
	}
}

// drain empties kernel k's eventfds: rings meant for a VM that is gone.
func (d *Doorbells) drain(k int) {
	for v := range d.vectors {
		evfd.Drain(d.kernel[k*d.vectors+v].fd)
	}
}
