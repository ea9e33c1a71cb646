package ipi

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/popvmm/popvmm/internal/windowgeom"
)

// Ioeventfd is one KVM_IOEVENTFD: in VM (a kernel's peer id), a Len-byte
// MMIO write of Data at GPA signals the eventfd of Bell, inside KVM.
type Ioeventfd struct {
	VM   int
	GPA  uint64
	Len  uint32
	Data uint64
	Bell BellID
}

// Irqfd is one KVM irqfd: in VM, the eventfd of Bell injects MSI-X vector
// Vector of the window device (a GSI the VMM routes to that vector's
// message). While the vector is masked or MSI-X is off, the VMM deassigns
// it (pci.MSIRouter's contract), and with MSI-X off the device's INTx
// watcher reads the eventfd instead.
type Irqfd struct {
	VM     int
	Bell   BellID
	Vector int
}

// DoorbellPlan is the KVM wiring of a cluster's doorbells.
type DoorbellPlan struct {
	Ioeventfds []Ioeventfd
	Irqfds     []Irqfd
}

// VMRegs is what the doorbell plan needs of one VM: its kernel's peer id and
// where its window device's BAR0 is.
type VMRegs struct {
	VM   int
	Regs uint64 // BAR0's guest-physical address
}

// PlanIoeventfds is VM vm's ioeventfds with its BAR0 at regs: one per bell
// (every peer in peers, every vector), on the Doorbell register with the
// bell's doorbell value as datamatch, in peer then vector order. A peer id
// the register cannot name (over 16 bits) gets none.
func PlanIoeventfds(vm int, regs uint64, peers []int, vectors int) []Ioeventfd {
	out := make([]Ioeventfd, 0, len(peers)*vectors)
	for _, p := range sortedPeers(peers) {
		if p < 0 || p > maxPeerID {
			continue
		}
		for v := range vectors {
			out = append(out, Ioeventfd{VM: vm, GPA: regs + RegDoorbell, Len: 4,
				Data: uint64(DoorbellValue(p, v)), Bell: BellID{p, v}})
		}
	}
	return out
}

// PlanIrqfds is VM vm's irqfds: its own bells, vector v injecting MSI-X
// vector v.
func PlanIrqfds(vm, vectors int) []Irqfd {
	out := make([]Irqfd, vectors)
	for v := range vectors {
		out[v] = Irqfd{VM: vm, Bell: BellID{vm, v}, Vector: v}
	}
	return out
}

// PlanDoorbells is the whole cluster's wiring: for every VM, an ioeventfd
// per bell of every peer (kernels and host peers alike), and an irqfd per
// vector of its own. A doorbell from any VM to any peer then never leaves
// KVM: the writer's ioeventfd signals the eventfd that is the target's
// irqfd (or a host peer's eventfd, which it waits on).
func PlanDoorbells(vms []VMRegs, peers []int, vectors int) DoorbellPlan {
	var p DoorbellPlan
	for _, vm := range vms {
		p.Ioeventfds = append(p.Ioeventfds, PlanIoeventfds(vm.VM, vm.Regs, peers, vectors)...)
		p.Irqfds = append(p.Irqfds, PlanIrqfds(vm.VM, vectors)...)
	}
	return p
}

func sortedPeers(peers []int) []int {
	s := slices.Clone(peers)
	slices.Sort(s)
	return slices.Compact(s)
}

// Slot is one KVM memory slot of the window BAR (windowgeom.Slots).
type Slot = windowgeom.Slot

// VMSlot is one slot of the window in one VM, at its guest-physical
// address.
type VMSlot struct {
	VM  int
	GPA uint64
	Slot
}

// VMWindow is what the slot plan needs of one VM: its kernel's peer id and
// where its window BAR is.
type VMWindow struct {
	VM     int
	Window uint64 // BAR2's guest-physical address
}

// PlanWindow is the cluster's window slots: windowgeom.Slots for every VM,
// placed at its BAR2, in VM then address order.
func PlanWindow(vms []VMWindow, windowSize uint64, maxPeers int, protect bool) ([]VMSlot, error) {
	var out []VMSlot
	for _, vm := range vms {
		slots, err := windowgeom.Slots(windowSize, maxPeers, vm.VM, protect)
		if err != nil {
			return nil, fmt.Errorf("kernel %d: %w", vm.VM, err)
		}
		for _, s := range slots {
			out = append(out, VMSlot{VM: vm.VM, GPA: vm.Window + s.Offset, Slot: s})
		}
	}
	slices.SortStableFunc(out, func(a, b VMSlot) int { return cmp.Compare(a.VM, b.VM) })
	return out, nil
}
