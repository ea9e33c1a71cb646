package ipi_test

import (
	"net"
	"slices"
	"testing"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/ipitest"
	"github.com/popvmm/popvmm/ipi/msg"
)

// hasBells reports whether VM v has an ioeventfd for every vector of peer.
func hasBells(v *vm, peer, vectors int) bool {
	n := 0
	for _, e := range v.dev.Ioeventfds() {
		if e.Bell.Peer == peer {
			n++
		}
	}
	return n == vectors
}

// TestHostPeerSharesEventfds: a host peer on popvmm's ivshmem socket rings
// a kernel through the kernel's own eventfd, which is the VM's irqfd, and
// is rung by the kernel's ioeventfd (and by the Doorbell write that reaches
// popvmm) through its own; it learns of the kernel's VM stopping and
// starting; when it leaves, the VMs' ioeventfds for it go, and the next
// peer with its id gets new ones without a collision.
func TestHostPeerSharesEventfds(t *testing.T) {
	const vectors = 2
	bells := newBells(t, 2, 4, vectors)
	sock, srv := ipitest.Serve(t, 1<<20, 0, ipi.ServerConfig{Vectors: vectors, FirstID: 2, MaxPeers: 4, Doorbells: bells})
	k0 := newVM(t, bells, 0, 1<<20, nil)
	k0.enableMSIX(t, vectors)
	boot, err := bells.KernelStarted(0)
	if err != nil {
		t.Fatal(err)
	}

	c := dial(t, sock, vectors)
	if peers := c.Peers(); !slices.Contains(peers, 0) || slices.Contains(peers, 1) {
		t.Errorf("client's peers %v: want kernel 0 (running), not kernel 1 (not started)", peers)
	}
	// Host → kernel: the client writes the kernel's eventfd; VM 0's irqfd
	// for that vector is that eventfd.
	if err := c.Ring(0, 1); err != nil {
		t.Fatal(err)
	}
	fd, ok := k0.kvm.irqfd(1)
	if !ok {
		t.Fatal("VM 0 has no irqfd for vector 1")
	}
	if got := waitEventfd(t, fd); got != 1 {
		t.Errorf("VM 0's irqfd saw %d doorbells, want 1", got)
	}
	// Kernel → host: VM 0's ioeventfd for the client's bell.
	waitFor(t, "VM 0's ioeventfds for the new host peer", func() bool { return hasBells(k0, c.ID, vectors) })
	k0.kvm.guestWrite(k0.regs()+ipi.RegDoorbell, ipi.DoorbellValue(c.ID, 1))
	if _, err := c.Wait(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	if n := k0.kvm.exitCount(); n != 0 {
		t.Errorf("%d exits for a doorbell to a host peer", n)
	}
	// The same write, reaching popvmm (say, before the ioeventfds were
	// registered), rings the same eventfd.
	k0.dev.Write(ipi.RegDoorbell, le(uint64(ipi.DoorbellValue(c.ID, 0)), 4))
	if _, err := c.Wait(ctxT(t), 0); err != nil {
		t.Fatal(err)
	}
	if st := k0.dev.Stats(); st.SoftDoorbells != 1 {
		t.Errorf("stats %+v, want 1 software doorbell", st)
	}

	// Kernel 0's VM stops, and starts again.
	if !bells.KernelStopped(boot, nil, true) {
		t.Fatal("KernelStopped of the current boot = false")
	}
	waitEvent(t, c, ipi.PeerEvent{ID: 0, Joined: false})
	if _, err := bells.KernelStarted(0); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, c, ipi.PeerEvent{ID: 0, Joined: true})
	if err := c.Ring(0, 0); err != nil {
		t.Errorf("ring the restarted kernel: %v", err)
	}

	// The client leaves: its bells go from VM 0. A new client takes the id.
	id := c.ID
	c.Close()
	waitFor(t, "VM 0's ioeventfds for the departed host peer removed", func() bool { return hasBells(k0, id, 0) })
	// The id is free once the server has finished the departure, after
	// the ioeventfds went (a new client meanwhile gets the next id).
	waitPeers(t, srv, func(ids []int) bool { return !slices.Contains(ids, id) })
	c2 := dial(t, sock, vectors)
	if c2.ID != id {
		t.Fatalf("new client got id %d, want %d", c2.ID, id)
	}
	waitFor(t, "VM 0's ioeventfds for the id's new holder", func() bool { return hasBells(k0, id, vectors) })
	k0.kvm.guestWrite(k0.regs()+ipi.RegDoorbell, ipi.DoorbellValue(id, 1))
	if _, err := c2.Wait(ctxT(t), 1); err != nil {
		t.Fatal(err)
	}
	if st := k0.dev.Stats(); st.WiringErrors != 0 {
		t.Errorf("stats %+v: wiring errors (an ioeventfd collision?)", st)
	}
}

// TestServerRefusesMismatchedDoorbells: the server's vectors and kernel
// ids must be the doorbells'.
func TestServerRefusesMismatchedDoorbells(t *testing.T) {
	bells := newBells(t, 2, 2, 2)
	win, err := ipi.NewWindow("t", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer win.Close()
	for _, cfg := range []ipi.ServerConfig{
		{Vectors: 1, FirstID: 2, MaxPeers: 2, Doorbells: bells},
		{Vectors: 2, FirstID: 1, MaxPeers: 2, Doorbells: bells},
	} {
		if _, err := ipi.NewServer(win, cfg, quiet); err == nil {
			t.Errorf("NewServer(%+v) accepted", cfg)
		}
	}
}

// TestKernelLifecycle: a kernel's VM stopping marks the incarnation in the
// peer table gone at once; a report for a boot that is not the current one
// (repeated, or late after a reboot) touches nothing; a rebooted kernel
// rejoins; doorbells meant for a stopped VM do not reach the next one.
func TestKernelLifecycle(t *testing.T) {
	win, err := ipi.NewWindow("life", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { win.Close() })
	mem, err := win.Map()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipi.Unmap(mem) })
	if _, err := msg.Format(mem, 3); err != nil {
		t.Fatal(err)
	}
	popvmm, err := msg.Join(mem, 2, "popvmm", nopBell{}, msg.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bells := newBells(t, 2, 1, 1)

	boot, err := bells.KernelStarted(0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bells.KernelStarted(0); err == nil {
		t.Error("KernelStarted twice without a stop: no error")
	}
	if _, err := msg.Join(mem, 0, "kernel0", nopBell{}, msg.Options{}); err != nil { // its agent checks in
		t.Fatal(err)
	}
	if st := popvmm.PeerState(0); st != msg.StateOnline {
		t.Fatalf("kernel 0 is %v, want online", st)
	}
	if bells.KernelStopped(ipi.Boot{Kernel: 0}, popvmm, true) {
		t.Error("KernelStopped of a boot that never was = true")
	}
	if !bells.KernelStopped(boot, popvmm, true) {
		t.Fatal("KernelStopped of the current boot = false")
	}
	if st := popvmm.PeerState(0); st != msg.StateCrashed {
		t.Errorf("after the crash kernel 0 is %v, want crashed at once", st)
	}
	if bells.KernelStopped(boot, popvmm, false) {
		t.Error("KernelStopped twice = true")
	}

	// Rung while stopped: the next VM does not get it.
	bells.Ring(ipi.BellID{Peer: 0, Vector: 0})
	boot2, err := bells.KernelStarted(0)
	if err != nil {
		t.Fatal(err)
	}
	if n := eventfdCount(bells.KernelFd(0, 0)); n != 0 {
		t.Errorf("the restarted VM's eventfd holds %d doorbells for the old one", n)
	}
	if _, err := msg.Join(mem, 0, "kernel0", nopBell{}, msg.Options{}); err != nil { // rejoins
		t.Fatal(err)
	}
	if bells.KernelStopped(boot, popvmm, true) {
		t.Error("a late report of the first boot's stop = true")
	}
	if st := popvmm.PeerState(0); st != msg.StateOnline {
		t.Errorf("after a late report for the old boot, the rejoined kernel 0 is %v, want online", st)
	}
	if !bells.KernelStopped(boot2, popvmm, false) || popvmm.PeerState(0) != msg.StateOffline {
		t.Errorf("clean stop of the second boot: kernel 0 is %v, want offline", popvmm.PeerState(0))
	}
	if _, err := bells.KernelStarted(2); err == nil {
		t.Error("KernelStarted of a host peer id: no error")
	}
}

// TestDoorbellsLimits: NewDoorbells refuses what KVM could not register.
func TestDoorbellsLimits(t *testing.T) {
	for _, c := range []struct{ kernels, hosts, vectors int }{
		{0, 1, 1}, {1, 0, 0}, {1, 0, ipi.MaxVectors + 1}, {50, 8, 64}, {1, -1, 1},
	} {
		if b, err := ipi.NewDoorbells(c.kernels, c.hosts, c.vectors); err == nil {
			b.Close()
			t.Errorf("NewDoorbells(%d, %d, %d) accepted", c.kernels, c.hosts, c.vectors)
		}
	}
	b := newBells(t, 2, 0, 1)
	for _, bell := range []ipi.BellID{{Peer: 2}, {Peer: -1}, {Peer: 0, Vector: 1}, {Peer: 1 << 20}} {
		if b.Ring(bell) {
			t.Errorf("Ring(%+v) = true for a bell that does not exist", bell)
		}
	}
	b.Close()
	b.Close()
	if b.Ring(ipi.BellID{}) {
		t.Error("Ring after Close = true")
	}
}

// TestHostileClientsLeaveNoBells: raw clients that talk, vanish or never
// read, joining and leaving in a burst while kernels start and stop, leave
// every VM with exactly the kernels' ioeventfds once they are gone, and no
// wiring error (no collision, no removal of what was not registered).
func TestHostileClientsLeaveNoBells(t *testing.T) {
	const vectors = 2
	bells := newBells(t, 2, 4, vectors)
	sock, srv := ipitest.Serve(t, 1<<20, 0, ipi.ServerConfig{Vectors: vectors, FirstID: 2, MaxPeers: 4, Doorbells: bells})
	k0 := newVM(t, bells, 0, 1<<20, nil)
	k1 := newVM(t, bells, 1, 1<<20, nil)
	var conns []net.Conn
	var boot ipi.Boot
	for i := range 40 {
		if i%10 == 0 {
			bells.KernelStopped(boot, nil, true) // the first time: no boot yet
			var err error
			if boot, err = bells.KernelStarted(1); err != nil {
				t.Fatal(err)
			}
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		switch i % 4 {
		case 0:
			c.Close() // vanishes
		case 1:
			c.Write([]byte("garbage")) // talks
			conns = append(conns, c)
		case 2:
			conns = append(conns, c) // never reads
		case 3:
			buf := make([]byte, 64)
			c.Read(buf) // reads a bit, then vanishes
			c.Close()
		}
		if i%10 == 9 {
			for _, c := range conns {
				c.Close()
			}
			conns = nil
			waitPeers(t, srv, func(ids []int) bool { return len(ids) == 0 })
			bells.KernelStopped(ipi.Boot{Kernel: 1}, nil, false) // stale: ignored
		}
	}
	waitPeers(t, srv, func(ids []int) bool { return len(ids) == 0 })
	for k, v := range []*vm{k0, k1} {
		waitFor(t, "only the kernels' bells", func() bool { return len(v.dev.Ioeventfds()) == 2*vectors })
		for _, e := range v.dev.Ioeventfds() {
			if e.Bell.Peer >= 2 {
				t.Errorf("VM %d: ioeventfd for departed host peer %d", k, e.Bell.Peer)
			}
		}
		if st := v.dev.Stats(); st.WiringErrors != 0 {
			t.Errorf("VM %d: %+v", k, st)
		}
	}
	c := dial(t, sock, vectors)
	waitFor(t, "bells for the new peer", func() bool { return hasBells(k1, c.ID, vectors) })
}
