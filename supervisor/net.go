package supervisor

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vnet"
)

// networkLauncher is a Launcher whose kernels need the cluster's host
// network: the supervisor starts it before the first kernel boots and stops
// it after the last one is down.
type networkLauncher interface {
	startNetwork(cl *cluster.Cluster) (stop func(), err error)
}

// startNetwork brings up the cluster's host network if the launcher needs
// one; the returned function takes it down again.
func (s *Supervisor) startNetwork() (func(), error) {
	nl, ok := s.launcher.(networkLauncher)
	if !ok {
		return func() {}, nil
	}
	return nl.startNetwork(s.cl)
}

// BridgeOwner is the alias popvmm gives the bridge of cluster while a
// supervisor runs it from runDir: how the next `up` tells a bridge that a
// killed supervisor of the cluster left behind (deleted, then made
// afresh) from one that a live supervisor of a cluster of the same name,
// run from another run directory, still uses (refused), and from anyone
// else's (refused).
func BridgeOwner(cluster, runDir string) string {
	return bridgeOwnerPrefix(cluster) + " run " + runDir
}

func bridgeOwnerPrefix(cluster string) string { return "popvmm cluster " + cluster }

// staleBridge is upBridge's test of a bridge of the cluster's name found
// on the host (vnet.RemoveStaleBridge): nil when its owner is gone.
func staleBridge(cl *cluster.Cluster) func(alias string) error {
	prefix := bridgeOwnerPrefix(cl.Name)
	return func(alias string) error {
		dir, ours := strings.CutPrefix(alias, prefix+" run ")
		switch {
		case alias == prefix:
			return nil // an earlier popvmm's alias named no run directory
		case !ours:
			return fmt.Errorf("a bridge of that name exists and is not cluster %s's (its alias is %q); delete it (ip link del %s) or set another cluster.network.bridge",
				cl.Name, alias, cl.Network.Bridge)
		case dir == cl.RunDir:
			return nil // this supervisor holds that run directory
		}
		if pid, held := Held(dir); held {
			return fmt.Errorf("cluster %s, run from %s by supervisor pid %d, is up and uses it; bring that one down or set another cluster.network.bridge",
				cl.Name, dir, pid)
		}
		return nil
	}
}

// TapName is kernel k's tap in cluster cl.
func TapName(cl *cluster.Cluster, k *cluster.Kernel) string { return linkname.Tap(cl.Name, k.Index) }

// clusterNet is a cluster's host network while it is up: its bridge, with
// the host's address on it. Kernels' taps come and go on it.
type clusterNet struct {
	cl     *cluster.Cluster
	bridge *vnet.Bridge
}

// upBridge makes the cluster's bridge: a stale one of the same cluster
// (its supervisor was killed) is deleted first, so nothing of the earlier
// run survives; a link of that name that is not the cluster's is refused.
// No forwarding and no NAT: the host and the kernels share one subnet.
func upBridge(cl *cluster.Cluster, log *slog.Logger) (*clusterNet, error) {
	owner := BridgeOwner(cl.Name, cl.RunDir)
	name := cl.Network.Bridge
	stale, err := vnet.RemoveStaleBridge(name, staleBridge(cl))
	if err != nil {
		return nil, err
	}
	if stale {
		log.Warn("removed the bridge a killed supervisor of this cluster left behind", "bridge", name)
	}
	b, err := vnet.BridgeConfig{
		Name:  name,
		Addrs: []netip.Prefix{netip.PrefixFrom(cl.Network.Host, cl.Network.Subnet.Bits())},
		Owner: owner,
	}.Ensure()
	if err != nil {
		return nil, err
	}
	log.Info("bridge up", "bridge", name, "host", cl.Network.Host, "subnet", cl.Network.Subnet)
	return &clusterNet{cl: cl, bridge: b}, nil
}

func (n *clusterNet) down(log *slog.Logger) {
	if err := n.bridge.Remove(); err != nil {
		log.Error("remove bridge", "bridge", n.bridge.Name, "err", err)
		return
	}
	log.Info("bridge removed", "bridge", n.bridge.Name)
}

// kernelNIC is one kernel's network card: a virtio-net device on the
// modern PCI transport, backed by a non-persistent tap on the cluster's
// bridge.
type kernelNIC struct {
	tap  *vnet.Tap
	dev  *vnet.Net
	tr   *virtio.PCI
	slot int
	mac  string

	stopOnce sync.Once
}

// attachNIC gives the VM its virtio-net function on h: the tap (named
// from cluster and kernel index), the device with the kernel's MAC, BAR0 in
// the 64-bit PCI window mapped on the MMIO bus, one MSI-X vector per queue
// plus configuration through GSI routes and irqfds, and one ioeventfd
// goroutine per queue. On error everything is undone but what h.Close
// releases.
func attachNIC(v *vmm.VM, h *pciHost, n *clusterNet, k *cluster.Kernel, log *slog.Logger) (_ *kernelNIC, err error) {
	tap, err := vnet.OpenTap(TapName(n.cl, k), n.bridge)
	if err != nil {
		return nil, err
	}
	nic := &kernelNIC{tap: tap, mac: k.MAC.String()}
	defer func() {
		if err != nil {
			nic.stop()
		}
	}()
	if nic.dev, err = vnet.NewNet(vnet.NetConfig{MAC: k.MAC, Tap: tap.File, Log: log}); err != nil {
		return nil, err
	}
	addr, err := h.alloc.Alloc(virtio.BARSize, true)
	if err != nil {
		return nil, fmt.Errorf("virtio-net: %w", err)
	}
	nq := len(nic.dev.QueueMax())
	router, err := h.newMSIRouter("virtio-net", nq+1)
	if err != nil {
		return nil, err
	}
	mover := h.newBARMover("virtio-net", nil, virtio.BARSize)
	nic.tr, err = virtio.NewPCI(nic.dev, virtio.PCIConfig{
		Mem: v.Memory(), BARAddr: addr, Router: router, Mover: mover, Log: log,
	})
	if err != nil {
		return nil, err
	}
	mover.dev = nic.tr
	for q := range nq {
		a, length := nic.tr.NotifyAddr(q)
		nt, err := h.notify(a, length, func() { nic.tr.Kick(q) })
		if err != nil {
			return nil, fmt.Errorf("virtio-net queue %d: %w", q, err)
		}
		mover.notifiers = append(mover.notifiers, nt)
		mover.offsets = append(mover.offsets, a-addr)
	}
	if nic.slot, err = h.AddFunction("virtio-net", nic.tr, map[int]bus.Device{virtio.BARIndex: nic.tr}); err != nil {
		return nil, err
	}
	log.Info("virtio-net attached", "tap", tap.Name, "mac", nic.mac, "pci", fmt.Sprintf("00:%02x.0", nic.slot), "bar0", fmt.Sprintf("%#x", addr))
	return nic, nil
}

// stop ends the device's rx/tx goroutines (before guest memory goes) and
// closes the tap, which removes it. Calling it again is harmless.
func (nic *kernelNIC) stop() error {
	var errs []error
	nic.stopOnce.Do(func() {
		if nic.dev != nil {
			errs = append(errs, nic.dev.Close())
		}
		errs = append(errs, nic.tap.Close())
	})
	return errors.Join(errs...)
}

// info is the NIC as status shows it.
func (nic *kernelNIC) info() []string {
	s := nic.dev.Stats()
	return []string{
		"virtio-net", "tap " + nic.tap.Name, "mac " + nic.mac, fmt.Sprintf("pci 00:%02x.0", nic.slot),
		fmt.Sprintf("tx %d frames %d bytes %d dropped", s.TxFrames, s.TxBytes, s.TxDropped),
		fmt.Sprintf("rx %d frames %d bytes %d dropped", s.RxFrames, s.RxBytes, s.RxDropped),
	}
}

// netState is the launcher's hold on the cluster's network.
type netState struct {
	mu  sync.Mutex
	net *clusterNet // nil: no network up, kernels get no NIC
}

// startNetwork implements networkLauncher: the bridge, until stop.
func (l *vmLauncher) startNetwork(cl *cluster.Cluster) (func(), error) {
	n, err := upBridge(cl, l.log)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	l.net.mu.Lock()
	l.net.net = n
	l.net.mu.Unlock()
	return func() {
		l.net.mu.Lock()
		l.net.net = nil
		l.net.mu.Unlock()
		n.down(l.log)
	}, nil
}

// vmDevices is what the launcher attached to one VM besides the UART.
type vmDevices struct {
	pci *pciHost
	nic *kernelNIC // nil without a network
	win *windowDev // nil without a window (windowdev.go)
}

// attachDevices gives v its PCI bus and, with the cluster's network up,
// its NIC. On error nothing of it is left attached but what v.Close drops.
func (l *vmLauncher) attachDevices(v *vmm.VM, k *cluster.Kernel) (_ *vmDevices, err error) {
	log := l.log.With("kernel", k.Name)
	h, err := newPCIHost(v, k.Layout, log)
	if err != nil {
		return nil, err
	}
	d := &vmDevices{pci: h}
	l.net.mu.Lock()
	n := l.net.net
	l.net.mu.Unlock()
	if n == nil {
		log.Warn("no cluster network: the kernel gets no NIC")
		return d, nil
	}
	if d.nic, err = attachNIC(v, h, n, k, log); err != nil {
		h.Close()
		return nil, fmt.Errorf("network card: %w", err)
	}
	return d, nil
}

// stop stops v, then the devices (their goroutines touch guest memory),
// then closes v and releases what the devices registered. d may be nil.
func (d *vmDevices) stop(v *vmm.VM) error {
	v.Stop()
	var errs []error
	if d != nil && d.nic != nil {
		errs = append(errs, d.nic.stop())
	}
	errs = append(errs, v.Close())
	if d != nil {
		d.pci.Close()
	}
	return errors.Join(errs...)
}

// info is the devices as status shows them.
func (d *vmDevices) info() map[string][]string {
	if d == nil || d.nic == nil {
		return nil
	}
	return map[string][]string{"net0": d.nic.info()}
}
