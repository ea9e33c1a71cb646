package machine

import (
	"errors"
	"fmt"
	"sync"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/vblk"
	"github.com/popvmm/popvmm/vmm/bus"
	"github.com/popvmm/popvmm/vmm/virtio"
)

// kernelDisk is one of a kernel's disks: a virtio-blk device on the modern
// PCI transport over the disk's file, open and locked while the VM runs.
type kernelDisk struct {
	plan  cluster.Disk
	index int // in the kernel's disks: the guest's vda, vdb, ...
	disk  *vblk.Disk
	dev   *vblk.Block
	slot  int

	stopOnce sync.Once
	stopErr  error
}

// attachDisks gives b's VM the kernel's disks, in the plan's order (the
// guest names them vda, vdb, ... by the order of their PCI functions):
// each opened and locked (vblk.OpenDisk: a disk another process holds
// writable is refused, naming it), a virtio-blk function with BAR0 in the
// 64-bit PCI window, MSI-X through msiRoutes and an ioeventfd per queue.
func attachDisks(b *builder) ([]device, error) {
	var disks []device
	for i, d := range b.cfg.Kernel.Disks {
		kd, err := attachDisk(b, i, d)
		if err != nil {
			for _, a := range disks {
				a.stop()
			}
			return nil, fmt.Errorf("disk %s (%s): %w", cluster.DeviceName(i), d.Field, err)
		}
		disks = append(disks, kd)
	}
	return disks, nil
}

func attachDisk(b *builder, i int, d cluster.Disk) (_ *kernelDisk, err error) {
	h := b.pci
	disk, err := vblk.OpenDisk(d.Path, d.ReadOnly)
	if err != nil {
		return nil, err
	}
	kd := &kernelDisk{plan: d, index: i, disk: disk}
	defer func() {
		if err != nil {
			kd.stop()
		}
	}()
	serial := d.Serial
	if serial == "" {
		serial = cluster.DeviceName(i)
	}
	if kd.dev, err = vblk.New(vblk.Config{Backend: disk, ReadOnly: d.ReadOnly, Serial: serial, Log: b.log.With("disk", cluster.DeviceName(i))}); err != nil {
		return nil, err
	}
	name := "virtio-blk-" + cluster.DeviceName(i)
	addr, err := h.alloc.Alloc(virtio.BARSize, true)
	if err != nil {
		return nil, err
	}
	nq := len(kd.dev.QueueMax())
	router, err := h.newMSIRouter(name, nq+1)
	if err != nil {
		return nil, err
	}
	mover := h.newBARMover(name, nil, virtio.BARSize)
	tr, err := virtio.NewPCI(kd.dev, virtio.PCIConfig{Mem: b.vm.Memory(), BARAddr: addr, Router: router, Mover: mover, Log: b.log})
	if err != nil {
		return nil, err
	}
	mover.dev = tr
	for q := range nq {
		a, length := tr.NotifyAddr(q)
		nt, err := h.notify(a, length, func() { tr.Kick(q) })
		if err != nil {
			return nil, fmt.Errorf("queue %d: %w", q, err)
		}
		mover.notifiers = append(mover.notifiers, nt)
		mover.offsets = append(mover.offsets, a-addr)
	}
	if kd.slot, err = h.AddFunction(name, tr, map[int]bus.Device{virtio.BARIndex: tr}); err != nil {
		return nil, err
	}
	b.log.Info("virtio-blk attached", "disk", cluster.DeviceName(i), "path", d.Path, "read_only", d.ReadOnly,
		"role", d.Role, "pci", fmt.Sprintf("00:%02x.0", kd.slot), "bar0", fmt.Sprintf("%#x", addr))
	return kd, nil
}

func (kd *kernelDisk) name() string { return cluster.DeviceName(kd.index) }

// stop ends the device's goroutines (before guest memory goes), flushes a
// writable disk and closes it, which drops its lock. Calling it again is
// harmless.
func (kd *kernelDisk) stop() error {
	kd.stopOnce.Do(func() {
		var errs []error
		if kd.dev != nil {
			errs = append(errs, kd.dev.Close())
		}
		errs = append(errs, kd.disk.Close())
		kd.stopErr = errors.Join(errs...)
	})
	return kd.stopErr
}

// info is the disk as status shows it.
func (kd *kernelDisk) info() []string {
	s := kd.dev.Stats()
	mode := "read-write"
	if kd.plan.ReadOnly {
		mode = "read-only"
	}
	return []string{
		"virtio-blk", string(kd.plan.Role), kd.plan.Path, mode, fmt.Sprintf("pci 00:%02x.0", kd.slot),
		fmt.Sprintf("read %d requests %d bytes", s.Reads, s.ReadBytes),
		fmt.Sprintf("write %d requests %d bytes", s.Writes, s.WriteBytes),
		fmt.Sprintf("flush %d, discard %d", s.Flushes, s.Discards),
		fmt.Sprintf("io errors %d, refused %d", s.Errors, s.Refused),
	}
}
