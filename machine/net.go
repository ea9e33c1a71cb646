package machine

import (
	"errors"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/virtio"
	"github.com/popvmm/popvmm/vnet"
)

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

// attachNIC gives b's VM its virtio-net function when the cluster's
// network is up: the tap (named from cluster and kernel index), the device
// with the kernel's MAC, BAR0 in the 64-bit PCI window mapped on the MMIO
// bus, one MSI-X vector per queue plus configuration through msiRoutes,
// and one ioeventfd goroutine per queue. On error everything is undone
// but what the PCI host's Close releases.
func attachNIC(b *builder) (_ device, err error) {
	n, k, h := b.cfg.Network, b.cfg.Kernel, b.pci
	if n == nil {
		b.log.Warn("no cluster network: the kernel gets no NIC")
		return nil, nil
	}
	tap, err := vnet.OpenTap(linkname.Tap(n.Cluster, k.Index), n.Bridge)
	if err != nil {
		return nil, fmt.Errorf("network card: %w", err)
	}
	nic := &kernelNIC{tap: tap, mac: k.MAC.String()}
	defer func() {
		if err != nil {
			nic.stop()
			err = fmt.Errorf("network card: %w", err)
		}
	}()
	if nic.dev, err = vnet.NewNet(vnet.NetConfig{MAC: k.MAC, Tap: tap.File, Log: b.log}); err != nil {
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
		Mem: b.vm.Memory(), BARAddr: addr, Router: router, Mover: mover, Log: b.log,
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
	b.log.Info("virtio-net attached", "tap", tap.Name, "mac", nic.mac, "pci", fmt.Sprintf("00:%02x.0", nic.slot), "bar0", fmt.Sprintf("%#x", addr))
	return nic, nil
}

func (nic *kernelNIC) name() string { return "net0" }

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
