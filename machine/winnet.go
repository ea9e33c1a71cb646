package machine

import (
	"fmt"
	"net/netip"

	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/winnet"
)

// Winnet is what a kernel's VM needs of the cluster's window network
// (docs/winnet.md) to get its device: the doorbells (the kernels' only),
// the supervisor's mapping of the window network's memfd, formatted, with
// its geometry, the protection flag and the subnet. It outlives every VM.
type Winnet struct {
	Bells    *ipi.Doorbells
	Mem      []byte
	Geometry winnet.Geometry
	Protect  bool
	Subnet   netip.Prefix
}

// Header values of the window network's function: ivshmem's vendor and
// device, told from the messaging window by its class (network
// controller, Ethernet) and subsystem id (docs/winnet.md).
const (
	WinnetClass     = 0x020000
	WinnetSubsystem = 0x1101
)

// winnetDev is one VM's window network device: an ivshmem-doorbell
// function whose BAR2 is the window network's window, and what status
// reads of the kernel's section there.
type winnetDev struct {
	*windowDev
	wn   *Winnet
	addr netip.Addr
}

// attachWinnet gives b's VM its window network device when the cluster
// has a window network: as attachWindow, with BAR2 (the window network's
// window) from the allocator's 64-bit window and mapped as the kernel's
// winnet.Slots.
func attachWinnet(b *builder) (device, error) {
	wn, k := b.cfg.Winnet, b.cfg.Kernel
	if wn == nil {
		return nil, nil
	}
	slots, err := winnet.Slots(uint64(len(wn.Mem)), wn.Geometry.MaxPeers, k.Index, wn.Protect)
	if err != nil {
		return nil, fmt.Errorf("window network device: %w", err)
	}
	wd, err := addIvshmem(b, ivshmemSpec{what: "window network device", bus: "winnet", mem: wn.Mem, bells: wn.Bells,
		slots: slots, protect: wn.Protect, class: WinnetClass, subsystem: WinnetSubsystem})
	if err != nil {
		return nil, err
	}
	return &winnetDev{windowDev: wd, wn: wn, addr: k.WinnetIP}, nil
}

func (d *winnetDev) name() string { return "winnet" }

// info is the device as status shows it: the kernel's address, its
// section's state and the device's counters (the per-peer counters are
// the supervisor's status, read from the window for every kernel).
func (d *winnetDev) info() []string {
	s := d.dev.Stats()
	st := winnet.ReadPeer(d.wn.Mem, d.wn.Geometry, d.peer)
	state := "down"
	if st.Up {
		state = "up"
	}
	return []string{
		fmt.Sprintf("win0 %s/%d %s", d.addr, d.wn.Subnet.Bits(), state),
		fmt.Sprintf("ivshmem-doorbell 1af4:1110 subsystem 1af4:%04x", WinnetSubsystem),
		fmt.Sprintf("pci 00:%02x.0", d.slot), fmt.Sprintf("intx gsi %d", d.gsi), fmt.Sprintf("bar2 %#x", d.window),
		fmt.Sprintf("soft doorbells %d, bad %d, refused writes %d, intx %d, wiring errors %d",
			s.SoftDoorbells, s.BadDoorbells, s.RefusedWrites, s.Interrupts, s.WiringErrors),
	}
}
