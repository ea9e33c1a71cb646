package ipi

import "fmt"

// PeerTable is the window's peer table as popvmm's own node sees it
// (*msg.Node implements it): the supervisor passes it to KernelStopped.
type PeerTable interface {
	// Generation names the incarnation of peer in the table now.
	Generation(peer int) uint32
	// MarkGone records that incarnation gen of peer has gone, and does
	// nothing (false) if a newer one has checked in.
	MarkGone(peer int, gen uint32, crashed bool) bool
}

// Boot is one run of a kernel's VM, from KernelStarted to KernelStopped.
type Boot struct {
	Kernel int
	token  uint64
}

// KernelStarted is called when kernel k's VM is about to run (its first
// boot or a reboot), before its vCPUs start. It empties k's eventfds (rings
// meant for the previous VM must not interrupt the new one) and announces
// k's eventfds to the host peers on the ivshmem socket, so they can ring it
// again. The kernel rejoins the peer table itself when its agent checks in
// (a new generation). It refuses a kernel whose previous boot was not
// stopped.
func (d *Doorbells) KernelStarted(k int) (Boot, error) {
	if k < 0 || k >= d.kernels {
		return Boot{}, fmt.Errorf("window: kernel %d: ids are 0-%d", k, d.kernels-1)
	}
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return Boot{}, fmt.Errorf("window: kernel %d: doorbells closed", k)
	}
	if d.up[k] {
		d.mu.Unlock()
		return Boot{}, fmt.Errorf("window: kernel %d started again before its VM stopped", k)
	}
	d.boots[k]++
	b := Boot{Kernel: k, token: d.boots[k]}
	d.drain(k)
	d.up[k] = true
	d.changedUnlock()
	return b, nil
}

// KernelStopped is called once boot b's VM has stopped for good — every
// vCPU out of KVM_RUN, so the kernel can no longer write the window —
// whether it crashed (crashed = true), powered off or was stopped. It marks
// the kernel's incarnation in the peer table gone at once (crashed or
// offline; the other peers see it without waiting for its heartbeat to
// time out), withdraws its eventfds from the host peers (they are told it
// left) and empties them. It reports false, and does nothing, for a boot
// that is not the kernel's current one (stopped already, or followed by a
// newer boot): a late report never touches the next incarnation.
//
// The mark is for whatever incarnation the table holds when KernelStopped
// runs: nobody else checks in under k's id while its VM is stopped, so that
// is the stopped VM's, or the one before if it never checked in.
func (d *Doorbells) KernelStopped(b Boot, table PeerTable, crashed bool) bool {
	k := b.Kernel
	if k < 0 || k >= d.kernels {
		return false
	}
	d.mu.Lock()
	if !d.up[k] || d.boots[k] != b.token {
		d.mu.Unlock()
		return false
	}
	if table != nil {
		table.MarkGone(k, table.Generation(k), crashed)
	}
	d.up[k] = false
	d.drain(k)
	d.changedUnlock()
	return true
}

// KernelUp reports whether kernel k's VM is running (between KernelStarted
// and KernelStopped).
func (d *Doorbells) KernelUp(k int) bool {
	t := d.snap.Load()
	return k >= 0 && k < len(t.up) && t.up[k]
}
