package supervisor

import (
	"fmt"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/machine"
	"github.com/popvmm/popvmm/winnet"
)

// winnetHost is the cluster's window network (docs/winnet.md) as the
// supervisor runs it: its own memfd, formatted by package winnet, and its
// own doorbells, the kernels' only (no host peer joins it).
type winnetHost struct {
	win   *ipi.Window
	mem   []byte
	bells *ipi.Doorbells
	g     winnet.Geometry
	cfg   machine.Winnet
}

// startWinnet makes the window network's window when the cluster enables
// it (nil, nil otherwise).
func (s *Supervisor) startWinnet() (_ *winnetHost, err error) {
	cl := s.cl
	if !cl.Winnet.Enabled || len(cl.Kernels) == 0 {
		return nil, nil
	}
	w := &winnetHost{}
	defer func() {
		if err != nil {
			w.stop()
		}
	}()
	if w.win, err = ipi.NewWindow(cl.Name+"-winnet", int64(cl.Winnet.Size)); err != nil {
		return nil, err
	}
	if w.mem, err = w.win.Map(); err != nil {
		return nil, err
	}
	if w.g, err = winnet.Format(w.mem, cl.WinnetPeers()); err != nil {
		return nil, err
	}
	if w.bells, err = ipi.NewDoorbells(len(cl.Kernels), 0, 1); err != nil {
		return nil, err
	}
	w.cfg = machine.Winnet{Bells: w.bells, Mem: w.mem, Geometry: w.g, Protect: cl.Window.Protect,
		Subnet: cl.Winnet.Subnet}
	s.log.Info("window network ready", "size", cl.Winnet.Size, "subnet", cl.Winnet.Subnet, "mtu", w.g.MTU, "ring", w.g.DataSize)
	return w, nil
}

// stop releases the window network; safe on a half-built winnetHost and
// on nil. The VMs are gone.
func (w *winnetHost) stop() {
	if w == nil {
		return
	}
	if w.bells != nil {
		w.bells.Close()
	}
	if w.mem != nil {
		ipi.Unmap(w.mem)
	}
	if w.win != nil {
		w.win.Close()
	}
}

// winnetTable is the window network's peer states as the doorbells'
// KernelStopped marks them: a kernel whose VM stopped is marked down in
// its section at once, so senders drop frames for it instead of filling
// its rings until its heartbeat goes stale.
type winnetTable struct{ w *winnetHost }

func (t winnetTable) Generation(int) uint32 { return 0 }

func (t winnetTable) MarkGone(peer int, _ uint32, _ bool) bool {
	winnet.MarkDown(t.w.mem, t.w.g, peer)
	return true
}

// started tells the window network's doorbells that kernel k's VM is
// about to run (its eventfds are emptied).
func (w *winnetHost) started(k int) (ipi.Boot, error) {
	b, err := w.bells.KernelStarted(k)
	if err != nil {
		return ipi.Boot{}, fmt.Errorf("window network: %w", err)
	}
	return b, nil
}

// stopped ends boot b: the kernel is marked down in its section.
func (w *winnetHost) stopped(b ipi.Boot) {
	w.bells.KernelStopped(b, winnetTable{w}, false)
}

// status is the window network for Status, read from the window (each
// kernel's section as it wrote it); nil when there is none.
func (w *winnetHost) status(cl *cluster.Cluster) *WinnetStatus {
	if w == nil {
		return nil
	}
	st := &WinnetStatus{Subnet: cl.Winnet.Subnet.String(), Size: cl.Winnet.Size, MTU: w.g.MTU, Ring: w.g.DataSize}
	name := func(p int) string {
		if p < len(cl.Kernels) {
			return cl.Kernels[p].Name
		}
		return fmt.Sprintf("peer %d", p)
	}
	for _, k := range cl.Kernels {
		ps := winnet.ReadPeer(w.mem, w.g, k.Index)
		wk := WinnetKernel{Name: k.Name, Address: k.WinnetIP.String(), Up: ps.Up, Generation: ps.Generation, Heartbeat: ps.Heartbeat}
		for _, c := range ps.Peers {
			wk.Peers = append(wk.Peers, WinnetCounts{Peer: name(c.Peer), RxPackets: c.RxPackets, RxBytes: c.RxBytes,
				RxDrops: c.RxDrops, TxPackets: c.TxPackets, TxBytes: c.TxBytes, TxDrops: c.TxDrops})
		}
		st.Kernels = append(st.Kernels, wk)
	}
	return st
}
