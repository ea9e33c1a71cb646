// Package kvm is popvmm's typed handle layer over the Linux KVM API: a
// System (/dev/kvm), a VM and a VCPU are distinct types over their file
// descriptors, so a vCPU fd can never be passed where a VM fd belongs. It
// calls github.com/bobuhiro11/gokvm's kvm package for the ioctls that
// package gets right (VM and vCPU creation, registers, CPUID, MP state,
// LAPIC, MSRs, irqchip, TSS and identity-map addresses) and issues the
// rest itself with golang.org/x/sys/unix: memory slots with flags
// (read-only), KVM_IRQ_LINE, KVM_CREATE_PIT2 with the speaker port,
// KVM_IOEVENTFD, KVM_IRQFD, KVM_SET_GSI_ROUTING, KVM_SIGNAL_MSI, KVM_RUN
// (EINTR reported, not hidden) and the kvm_run page with immediate_exit.
// Kernel ABI structs are mirrored in abi.go; every use of unsafe is in
// *_unsafe.go.
package kvm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"os"
	"runtime"
	"slices"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"golang.org/x/sys/unix"
)

// Device is the KVM device node.
const Device = "/dev/kvm"

// Types shared with gokvm, re-exported so callers need not import it.
type (
	Regs       = gokvm.Regs
	Sregs      = gokvm.Sregs
	Segment    = gokvm.Segment
	Descriptor = gokvm.Descriptor
	CPUIDEntry = gokvm.CPUIDEntry2
	LAPICState = gokvm.LAPICState
	// Events mirrors struct kvm_vcpu_events (KVM_GET_VCPU_EVENTS): the
	// exception, interrupt and NMI a vCPU has pending or being injected.
	Events     = gokvm.VCPUEvents
	Capability = gokvm.Capability
)

// Capabilities popvmm checks (KVM_CAP_*).
const (
	CapIRQChip      = gokvm.CapIRQChip
	CapUserMemory   = gokvm.CapUserMemory
	CapSetTSSAddr   = gokvm.CapSetTSSAddr
	CapNRVCPUs      = gokvm.CapNRVCPUS
	CapNRMemSlots   = gokvm.CapNRMemSlots
	CapIRQRouting   = gokvm.CapIRQRouting
	CapIRQFD        = gokvm.CapIRQFD
	CapPIT2         = gokvm.CapPIT2
	CapIOEventFD    = gokvm.CapIOEventFD
	CapImmediateExt = Capability(136) // KVM_CAP_IMMEDIATE_EXIT
	CapReadOnlyMem  = Capability(81)  // KVM_CAP_READONLY_MEM
	CapSignalMSI    = Capability(77)  // KVM_CAP_SIGNAL_MSI
	CapTSCDeadline  = Capability(72)  // KVM_CAP_TSC_DEADLINE_TIMER
)

// MP states (KVM_MP_STATE_*).
const (
	MPStateRunnable      = gokvm.MPStateRunnable
	MPStateUninitialized = gokvm.MPStateUninitialized
	MPStateHalted        = gokvm.MPStateHalted
)

// CPUID entry flags (KVM_CPUID_FLAG_*).
const CPUIDFlagSignificantIndex = 1

// IRQ chips for GSI routes (KVM_IRQCHIP_*).
const (
	IRQChipPICMaster = 0
	IRQChipPICSlave  = 1
	IRQChipIOAPIC    = 2
)

// eintr calls f again while it fails with EINTR: a KVM ioctl other than
// KVM_RUN that a signal interrupts (the Go runtime's preemption signals
// among them; seen: KVM_CREATE_VM) has done nothing and is restarted.
func eintr[T any](f func() (T, error)) (T, error) {
	for {
		v, err := f()
		if !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
}

// signalsBlocked runs f on this goroutine's thread with every signal
// blocked, for an ioctl that a signal would interrupt again each time it is
// retried. KVM_CREATE_VM registers an MMU notifier, which takes every lock
// of the process's address space (mm_take_all_locks) and gives up with
// EINTR when a signal is pending; in a large Go process under a slow CPU
// that takes longer than the 10 ms after which the Go runtime sends
// SIGURG to preempt the goroutine, so retrying alone livelocked (seen in
// the lab: the supervisor spun holding the mm's locks and everything that
// faulted in it, the running kernels included, stalled). Blocked signals
// stay pending and are delivered when f returns.
func signalsBlocked(f func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var all, old unix.Sigset_t
	for i := range all.Val {
		all.Val[i] = ^uint64(0)
	}
	if err := unix.PthreadSigmask(unix.SIG_BLOCK, &all, &old); err != nil {
		return f()
	}
	defer unix.PthreadSigmask(unix.SIG_SETMASK, &old, nil)
	return f()
}

// eintr0 is eintr for an ioctl that returns only an error.
func eintr0(f func() error) error {
	_, err := eintr(func() (struct{}, error) { return struct{}{}, f() })
	return err
}

func ioctlErr(name string, err error) error {
	if err == nil {
		return nil
	}
	return os.NewSyscallError(name, err)
}

// System is an open /dev/kvm.
type System struct{ fd int }

// Open opens /dev/kvm and checks the API version (12).
func Open() (*System, error) {
	fd, err := unix.Open(Device, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", Device, err)
	}
	s := &System{fd: fd}
	v, err := eintr(func() (uintptr, error) { return gokvm.GetAPIVersion(uintptr(fd)) })
	if err != nil || v != 12 {
		s.Close()
		return nil, fmt.Errorf("%s: API version %d (%v), want 12", Device, v, err)
	}
	return s, nil
}

// Close closes /dev/kvm; VMs created from it stay valid. Calling it twice
// is harmless.
func (s *System) Close() error {
	if s.fd < 0 {
		return nil
	}
	err := unix.Close(s.fd)
	s.fd = -1
	return err
}

// Extension reports KVM_CHECK_EXTENSION for c (0: not supported).
func (s *System) Extension(c Capability) (int, error) {
	r, err := eintr(func() (uintptr, error) { return gokvm.CheckExtension(uintptr(s.fd), c) })
	return int(r), ioctlErr("KVM_CHECK_EXTENSION", err)
}

// SupportedCPUID returns KVM_GET_SUPPORTED_CPUID: every leaf this host's
// KVM can give a guest, with the features it can virtualise.
func (s *System) SupportedCPUID() ([]CPUIDEntry, error) {
	const max = 256
	c := &gokvm.CPUID{Nent: max, Entries: make([]CPUIDEntry, max)}
	if err := eintr0(func() error { return gokvm.GetSupportedCPUID(uintptr(s.fd), c) }); err != nil {
		return nil, ioctlErr("KVM_GET_SUPPORTED_CPUID", err)
	}
	return slices.Clone(c.Entries[:min(int(c.Nent), len(c.Entries))]), nil
}

// CreateVM makes a VM (KVM_CREATE_VM).
func (s *System) CreateVM() (*VM, error) {
	size, err := eintr(func() (uintptr, error) { return gokvm.GetVCPUMMmapSize(uintptr(s.fd)) })
	if err != nil {
		return nil, ioctlErr("KVM_GET_VCPU_MMAP_SIZE", err)
	}
	var fd uintptr
	err = signalsBlocked(func() (err error) {
		fd, err = eintr(func() (uintptr, error) { return gokvm.CreateVM(uintptr(s.fd)) })
		return err
	})
	if err != nil {
		return nil, ioctlErr("KVM_CREATE_VM", err)
	}
	return &VM{fd: int(fd), runSize: int(size)}, nil
}

// VM is a KVM virtual machine.
type VM struct {
	fd      int
	runSize int
}

// Close closes the VM fd; the kernel frees the VM once its vCPUs are
// closed too. Calling it twice is harmless.
func (v *VM) Close() error {
	if v.fd < 0 {
		return nil
	}
	err := unix.Close(v.fd)
	v.fd = -1
	return err
}

// CreateIRQChip creates the in-kernel PIC pair, IOAPIC and LAPICs
// (KVM_CREATE_IRQCHIP), with KVM's default GSI routing: GSI 0-15 to both
// PICs and IOAPIC pins 0-15, GSI 16-23 to IOAPIC pins 16-23.
func (v *VM) CreateIRQChip() error {
	return ioctlErr("KVM_CREATE_IRQCHIP", eintr0(func() error { return gokvm.CreateIRQChip(uintptr(v.fd)) }))
}

// CreatePIT2 creates the in-kernel i8254 PIT on GSI 0 together with the
// port 0x61 speaker/gate register (KVM_PIT_SPEAKER_DUMMY).
func (v *VM) CreatePIT2() error {
	return v.createPIT2(kvmPITConfig{Flags: pitSpeakerDummy})
}

// SetTSSAddr places the three pages KVM needs for real-mode emulation on
// Intel (KVM_SET_TSS_ADDR); they must not hold guest RAM.
func (v *VM) SetTSSAddr(addr uint32) error {
	return ioctlErr("KVM_SET_TSS_ADDR", eintr0(func() error { return gokvm.SetTSSAddr(uintptr(v.fd), addr) }))
}

// SetIdentityMapAddr places the identity-map page KVM needs on Intel
// (KVM_SET_IDENTITY_MAP_ADDR); called before any vCPU is created.
func (v *VM) SetIdentityMapAddr(addr uint32) error {
	return ioctlErr("KVM_SET_IDENTITY_MAP_ADDR", eintr0(func() error { return gokvm.SetIdentityMapAddr(uintptr(v.fd), addr) }))
}

// SetMemory maps host memory mem at guest-physical gpa as memory slot
// slot with flags (MemReadOnly: guest writes exit as MMIO).
func (v *VM) SetMemory(slot, flags uint32, gpa uint64, mem []byte) error {
	if len(mem) == 0 {
		return fmt.Errorf("memory slot %d at %#x: empty", slot, gpa)
	}
	r := kvmUserspaceMemoryRegion{Slot: slot, Flags: flags, GuestPhysAddr: gpa,
		MemorySize: uint64(len(mem)), UserspaceAddr: addrOf(mem)}
	if err := v.setUserMemoryRegion(&r); err != nil {
		return fmt.Errorf("memory slot %d at %#x size %#x: %w", slot, gpa, len(mem), err)
	}
	return nil
}

// DeleteMemory removes memory slot slot.
func (v *VM) DeleteMemory(slot uint32) error {
	return v.setUserMemoryRegion(&kvmUserspaceMemoryRegion{Slot: slot})
}

// IRQLine sets the level of GSI irq (KVM_IRQ_LINE); an edge is a raise
// followed by a lower.
func (v *VM) IRQLine(irq uint32, level bool) error {
	l := kvmIRQLevel{IRQ: irq}
	if level {
		l.Level = 1
	}
	return v.irqLine(&l)
}

// IRQFD makes a write to eventfd fd inject GSI gsi (KVM_IRQFD).
func (v *VM) IRQFD(fd int, gsi uint32) error {
	return v.irqfd(&kvmIRQFD{FD: uint32(fd), GSI: gsi})
}

// RemoveIRQFD undoes IRQFD.
func (v *VM) RemoveIRQFD(fd int, gsi uint32) error {
	return v.irqfd(&kvmIRQFD{FD: uint32(fd), GSI: gsi, Flags: irqfdDeassign})
}

// IOEvent describes an ioeventfd: a guest write of Len bytes at Addr (a
// port when PIO) signals eventfd FD inside KVM without an exit; with Match
// only writes of the value Data do.
type IOEvent struct {
	FD    int
	Addr  uint64
	Len   uint32 // 0 (any), 1, 2, 4 or 8
	PIO   bool
	Match bool
	Data  uint64
}

func (e IOEvent) raw(deassign bool) kvmIOEventFD {
	r := kvmIOEventFD{Datamatch: e.Data, Addr: e.Addr, Len: e.Len, FD: int32(e.FD)}
	if e.PIO {
		r.Flags |= ioeventfdPIO
	}
	if e.Match {
		r.Flags |= ioeventfdDatamatch
	}
	if deassign {
		r.Flags |= ioeventfdDeassign
	}
	return r
}

// IOEventFD registers e (KVM_IOEVENTFD).
func (v *VM) IOEventFD(e IOEvent) error {
	r := e.raw(false)
	return v.ioeventfd(&r)
}

// RemoveIOEventFD unregisters e, given as registered.
func (v *VM) RemoveIOEventFD(e IOEvent) error {
	r := e.raw(true)
	return v.ioeventfd(&r)
}

// Route is one GSI routing entry: to an irqchip pin, or an MSI.
type Route struct {
	GSI uint32
	MSI bool
	// Chip and Pin for an irqchip route (IRQChipPICMaster, ...).
	Chip, Pin uint32
	// Addr and Data for an MSI route.
	Addr uint64
	Data uint32
}

// encodeRouting lays out struct kvm_irq_routing with its entries.
func encodeRouting(routes []Route) []byte {
	le := binary.LittleEndian
	const hdr, entry = 8, 48
	b := make([]byte, hdr+entry*len(routes))
	le.PutUint32(b[0:], uint32(len(routes)))
	for i, r := range routes {
		e := b[hdr+i*entry:]
		le.PutUint32(e[0:], r.GSI)
		if r.MSI {
			le.PutUint32(e[4:], routingMSI)
			le.PutUint32(e[16:], uint32(r.Addr))
			le.PutUint32(e[20:], uint32(r.Addr>>32))
			le.PutUint32(e[24:], r.Data)
		} else {
			le.PutUint32(e[4:], routingIRQChip)
			le.PutUint32(e[16:], r.Chip)
			le.PutUint32(e[20:], r.Pin)
		}
	}
	return b
}

// SetGSIRouting replaces the whole GSI routing table (KVM_SET_GSI_ROUTING).
func (v *VM) SetGSIRouting(routes []Route) error {
	return v.setGSIRouting(encodeRouting(routes))
}

// SignalMSI injects an MSI (KVM_SIGNAL_MSI).
func (v *VM) SignalMSI(addr uint64, data uint32) error {
	return v.signalMSI(&kvmMSI{AddressLo: uint32(addr), AddressHi: uint32(addr >> 32), Data: data})
}

// CreateVCPU makes vCPU id (its APIC id) and maps its kvm_run page.
func (v *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := eintr(func() (uintptr, error) { return gokvm.CreateVCPU(uintptr(v.fd), id) })
	if err != nil {
		return nil, ioctlErr("KVM_CREATE_VCPU", err)
	}
	run, err := unix.Mmap(int(fd), 0, v.runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mmap kvm_run of vCPU %d: %w", id, err)
	}
	return &VCPU{fd: int(fd), id: id, run: run}, nil
}

// VCPU is one virtual CPU with its mapped kvm_run page.
type VCPU struct {
	fd  int
	id  int
	run []byte
}

// ID is the vCPU's id (its APIC id).
func (c *VCPU) ID() int { return c.id }

// RunData is the kvm_run page: vmm.HandleExit decodes it.
func (c *VCPU) RunData() []byte { return c.run }

// Close unmaps kvm_run and closes the vCPU fd. Calling it twice is harmless.
func (c *VCPU) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Munmap(c.run)
	c.run = nil
	err = errors.Join(err, unix.Close(c.fd))
	c.fd = -1
	return err
}

// Run enters the guest (KVM_RUN) until an exit that needs userspace. It
// returns unix.EINTR when a signal or immediate_exit kicked the vCPU out,
// a normal event; the exit is then not in kvm_run.
func (c *VCPU) Run() error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), gokvm.IIO(nrRun), 0)
	if e != 0 {
		return e
	}
	return nil
}

// SetImmediateExit sets or clears kvm_run.immediate_exit; it may be
// called from any thread while the vCPU runs. Set, the next KVM_RUN (or
// the current one, once a signal interrupts it) returns EINTR.
func (c *VCPU) SetImmediateExit(on bool) { setImmediateExit(c.run, on) }

// Regs reads the general-purpose registers.
func (c *VCPU) Regs() (*Regs, error) {
	r, err := eintr(func() (*Regs, error) { return gokvm.GetRegs(uintptr(c.fd)) })
	return r, ioctlErr("KVM_GET_REGS", err)
}

// SetRegs writes the general-purpose registers.
func (c *VCPU) SetRegs(r *Regs) error {
	return ioctlErr("KVM_SET_REGS", eintr0(func() error { return gokvm.SetRegs(uintptr(c.fd), r) }))
}

// Sregs reads the segment and control registers.
func (c *VCPU) Sregs() (*Sregs, error) {
	s, err := eintr(func() (*Sregs, error) { return gokvm.GetSregs(uintptr(c.fd)) })
	return s, ioctlErr("KVM_GET_SREGS", err)
}

// SetSregs writes the segment and control registers.
func (c *VCPU) SetSregs(s *Sregs) error {
	return ioctlErr("KVM_SET_SREGS", eintr0(func() error { return gokvm.SetSregs(uintptr(c.fd), s) }))
}

// SetCPUID sets what CPUID returns in the guest (KVM_SET_CPUID2).
func (c *VCPU) SetCPUID(entries []CPUIDEntry) error {
	cp := &gokvm.CPUID{Nent: uint32(len(entries)), Entries: entries}
	return ioctlErr("KVM_SET_CPUID2", eintr0(func() error { return gokvm.SetCPUID2(uintptr(c.fd), cp) }))
}

// MPState reads the vCPU's multiprocessing state (KVM_MP_STATE_*).
func (c *VCPU) MPState() (uint32, error) {
	var s gokvm.MPState
	err := eintr0(func() error { return gokvm.GetMPState(uintptr(c.fd), &s) })
	return s.State, ioctlErr("KVM_GET_MP_STATE", err)
}

// SetMPState sets the vCPU's multiprocessing state.
func (c *VCPU) SetMPState(state uint32) error {
	return ioctlErr("KVM_SET_MP_STATE", eintr0(func() error { return gokvm.SetMPState(uintptr(c.fd), &gokvm.MPState{State: state}) }))
}

// LAPIC reads the in-kernel local APIC's registers.
func (c *VCPU) LAPIC() (*LAPICState, error) {
	var l LAPICState
	err := eintr0(func() error { return gokvm.GetLocalAPIC(uintptr(c.fd), &l) })
	return &l, ioctlErr("KVM_GET_LAPIC", err)
}

// SetLAPIC writes the in-kernel local APIC's registers.
func (c *VCPU) SetLAPIC(l *LAPICState) error {
	return ioctlErr("KVM_SET_LAPIC", eintr0(func() error { return gokvm.SetLocalAPIC(uintptr(c.fd), l) }))
}

// Events reads the vCPU's pending and injected events
// (KVM_GET_VCPU_EVENTS).
func (c *VCPU) Events() (*Events, error) {
	var e Events
	err := eintr0(func() error { return gokvm.GetVCPUEvents(uintptr(c.fd), &e) })
	return &e, ioctlErr("KVM_GET_VCPU_EVENTS", err)
}

// SetMSRs writes model-specific registers, index to value.
func (c *VCPU) SetMSRs(msrs map[uint32]uint64) error {
	m := &gokvm.MSRS{NMSRs: uint32(len(msrs))}
	for _, i := range slices.Sorted(maps.Keys(msrs)) {
		m.Entries = append(m.Entries, gokvm.MSREntry{Index: i, Data: msrs[i]})
	}
	return ioctlErr("KVM_SET_MSRS", eintr0(func() error { return gokvm.SetMSRs(uintptr(c.fd), m) }))
}
