package vmm

import (
	"encoding/binary"
	"math/bits"
	"slices"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/kvm"
)

// CPUID bits popvmm sets or clears.
const (
	cpuid1ECXHypervisor  = 1 << 31
	cpuid1ECXTSCDeadline = 1 << 24
	cpuid1EDXHTT         = 1 << 28
	cpuid1EDXAPIC        = 1 << 9
)

// AddTSCDeadline sets the TSC-deadline timer bit (leaf 1, ECX bit 24;
// Intel SDM vol. 2A, CPUID) in e, in place: a guest then arms its LAPIC
// timer with one write of IA32_TSC_DEADLINE and needs no LAPIC timer
// calibration at boot. QEMU, Firecracker and Cloud Hypervisor set it
// where KVM has KVM_CAP_TSC_DEADLINE_TIMER, which older KVMs do not
// report in their supported CPUID.
func AddTSCDeadline(e []kvm.CPUIDEntry) {
	for i := range e {
		if e[i].Function == 1 {
			e[i].Ecx |= cpuid1ECXTSCDeadline
		}
	}
}

// FilterCPUID turns KVM's supported CPUID into what vCPU apicID of a
// ncpu-vCPU VM reports: its APIC id in leaf 1 (EBX 31:24), 0xB and 0x1F
// (x2APIC id, one thread per core and ncpu cores per package) and
// 0x8000001E; the logical processor count in leaf 1; the hypervisor bit.
// KVM's own leaves (0x40000000-0x400000FF: the "KVMKVMKVM" signature and
// kvmclock features) are kept as KVM reports them, so the guest finds
// kvmclock and needs no PIT calibration. The input is not modified.
func FilterCPUID(supported []kvm.CPUIDEntry, apicID, ncpu int) []kvm.CPUIDEntry {
	out := slices.Clone(supported)
	coreBits := uint32(bits.Len(uint(max(ncpu, 1) - 1)))
	for i := range out {
		e := &out[i]
		switch e.Function {
		case 1:
			e.Ebx = e.Ebx&0x0000ffff | uint32(apicID)<<24 | uint32(min(ncpu, 255))<<16
			e.Ecx |= cpuid1ECXHypervisor
			e.Edx |= cpuid1EDXAPIC
			if ncpu > 1 {
				e.Edx |= cpuid1EDXHTT
			} else {
				e.Edx &^= cpuid1EDXHTT
			}
		case 0xb, 0x1f:
			// Topology: level 0 is SMT (one thread), level 1 the cores.
			e.Edx = uint32(apicID)
			switch e.Index {
			case 0:
				e.Eax, e.Ebx, e.Ecx = 0, 1, 1<<8|0
			case 1:
				e.Eax, e.Ebx, e.Ecx = coreBits, uint32(ncpu), 2<<8|1
			default:
				e.Eax, e.Ebx, e.Ecx = 0, 0, e.Index
			}
		case 0x8000001e:
			e.Eax = uint32(apicID)
			e.Ebx &^= 0xff00 // threads per core - 1 = 0
			e.Ecx &^= 0x7ff  // one node, id 0
		case 4:
			// Deterministic cache parameters: ncpu cores per package,
			// each cache private to its core.
			e.Eax = e.Eax&^(0x3f<<26|0xfff<<14) | uint32(min(ncpu, 64)-1)<<26
		}
	}
	return out
}

// Local APIC register offsets and LVT delivery modes.
const (
	apicLVT0        = 0x350
	apicLVT1        = 0x360
	apicModeExtINT  = 0x7 << 8
	apicModeNMI     = 0x4 << 8
	apicLVTModeMask = 0x7 << 8
	apicLVTMasked   = 1 << 16
)

// SetupLINT programs a LAPIC's local interrupt pins the way a PC BIOS
// leaves them and Linux's MP-table boot expects: LINT0 in ExtINT mode
// (the 8259 PIC's output, "virtual wire"), LINT1 NMI.
func SetupLINT(l *kvm.LAPICState) {
	le := binary.LittleEndian
	lvt0 := le.Uint32(l.Regs[apicLVT0:])
	le.PutUint32(l.Regs[apicLVT0:], lvt0&^(apicLVTModeMask|apicLVTMasked)|apicModeExtINT)
	lvt1 := le.Uint32(l.Regs[apicLVT1:])
	le.PutUint32(l.Regs[apicLVT1:], lvt1&^(apicLVTModeMask|apicLVTMasked)|apicModeNMI)
}

// Control register and EFER bits for the boot modes.
const (
	cr0PE   = 1 << 0
	cr0ET   = 1 << 4
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// BootRegs sets the boot vCPU's registers for entry e: flat code and data
// segments from the boot GDT, long mode with the identity page tables
// (Long64) or protected mode without paging (Protected32).
func BootRegs(e boot.Entry, s *kvm.Sregs, r *kvm.Regs) {
	code := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: boot.SelectorCode, Typ: 0xb,
		Present: 1, S: 1, G: 1, DB: 1}
	data := kvm.Segment{Base: 0, Limit: 0xffffffff, Selector: boot.SelectorData, Typ: 0x3,
		Present: 1, S: 1, G: 1, DB: 1}
	s.GDT = kvm.Descriptor{Base: e.GDTBase, Limit: e.GDTLimit}
	s.IDT = kvm.Descriptor{Base: memmap.IDTAddr, Limit: 0}
	switch e.Mode {
	case boot.Long64:
		code.L, code.DB = 1, 0
		s.CR0 = cr0PE | cr0ET | cr0PG
		s.CR3 = e.CR3
		s.CR4 = cr4PAE
		s.EFER = eferLME | eferLMA
	case boot.Protected32:
		s.CR0 = cr0PE | cr0ET
		s.CR3, s.CR4, s.EFER = 0, 0, 0
	}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	*r = kvm.Regs{RIP: e.RIP, RSI: e.RSI, RBX: e.RBX, RSP: e.RSP, RBP: e.RSP, RFLAGS: 2}
}
