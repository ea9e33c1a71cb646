package vmm_test

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/boot"
	"github.com/popvmm/popvmm/vmm/kvm"
)

func find(es []kvm.CPUIDEntry, fn, idx uint32) kvm.CPUIDEntry {
	for _, e := range es {
		if e.Function == fn && e.Index == idx {
			return e
		}
	}
	return kvm.CPUIDEntry{}
}

func TestFilterCPUID(t *testing.T) {
	in := []kvm.CPUIDEntry{
		{Function: 0, Eax: 0x1f},
		{Function: 1, Eax: 0x806f8, Ebx: 0xaa_bb_08_00, Ecx: 0x1234, Edx: 1 << 28},
		{Function: 4, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex, Eax: 0xfc00_4121},
		{Function: 0xb, Index: 0, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: 0xb, Index: 1, Flags: kvm.CPUIDFlagSignificantIndex},
		{Function: 0xb, Index: 2, Flags: kvm.CPUIDFlagSignificantIndex, Eax: 9, Ebx: 9, Ecx: 9},
		{Function: 0x40000000, Eax: 0x40000001, Ebx: 0x4b4d564b, Ecx: 0x564b4d56, Edx: 0x4d},
		{Function: 0x40000001, Eax: 0x1_01ff},
		{Function: 0x8000001e, Eax: 7, Ebx: 0x0100, Ecx: 0x0101},
	}
	orig := append([]kvm.CPUIDEntry(nil), in...)
	out := vmm.FilterCPUID(in, 3, 4)
	if len(out) != len(in) {
		t.Fatalf("%d entries out of %d", len(out), len(in))
	}
	for i := range in {
		if in[i] != orig[i] {
			t.Fatalf("input entry %d modified", i)
		}
	}
	l1 := find(out, 1, 0)
	if l1.Ebx>>24 != 3 || (l1.Ebx>>16)&0xff != 4 || l1.Ebx&0xffff != 0x0800 {
		t.Errorf("leaf 1 EBX %#x: want APIC id 3, 4 logical CPUs, CLFLUSH kept", l1.Ebx)
	}
	if l1.Ecx&(1<<31) == 0 || l1.Ecx&0x1234 != 0x1234 {
		t.Errorf("leaf 1 ECX %#x: want hypervisor bit and the rest kept", l1.Ecx)
	}
	if l1.Edx&(1<<9) == 0 || l1.Edx&(1<<28) == 0 {
		t.Errorf("leaf 1 EDX %#x: want APIC and HTT", l1.Edx)
	}
	if one := find(vmm.FilterCPUID(in, 0, 1), 1, 0); one.Edx&(1<<28) != 0 || one.Ebx>>24 != 0 {
		t.Errorf("one vCPU: leaf 1 EBX %#x EDX %#x", one.Ebx, one.Edx)
	}
	smt, core, end := find(out, 0xb, 0), find(out, 0xb, 1), find(out, 0xb, 2)
	if smt.Edx != 3 || core.Edx != 3 || smt.Ebx != 1 || smt.Ecx != 0x100 {
		t.Errorf("leaf 0xB.0 %+v", smt)
	}
	if core.Eax != 2 || core.Ebx != 4 || core.Ecx != 0x201 {
		t.Errorf("leaf 0xB.1 %+v: want shift 2, 4 cores, core level", core)
	}
	if end.Eax != 0 || end.Ebx != 0 || end.Ecx != 2 {
		t.Errorf("leaf 0xB.2 %+v: want the invalid level", end)
	}
	if l4 := find(out, 4, 0); l4.Eax>>26 != 3 || (l4.Eax>>14)&0xfff != 0 || l4.Eax&0x3fff != 0x0121 {
		t.Errorf("leaf 4 EAX %#x", l4.Eax)
	}
	if kv := find(out, 0x40000000, 0); kv != in[6] {
		t.Errorf("KVM signature leaf changed: %+v", kv)
	}
	if kv := find(out, 0x40000001, 0); kv != in[7] {
		t.Errorf("KVM features leaf (kvmclock) changed: %+v", kv)
	}
	if amd := find(out, 0x8000001e, 0); amd.Eax != 3 || amd.Ebx&0xff00 != 0 || amd.Ecx&0x7ff != 0 {
		t.Errorf("leaf 0x8000001E %+v", amd)
	}
}

func TestSetupLINT(t *testing.T) {
	var l kvm.LAPICState
	le := binary.LittleEndian
	le.PutUint32(l.Regs[0x350:], 1<<16) // masked, as after reset
	le.PutUint32(l.Regs[0x360:], 1<<16)
	le.PutUint32(l.Regs[0x320:], 0x12345) // the timer LVT is left alone
	vmm.SetupLINT(&l)
	if v := le.Uint32(l.Regs[0x350:]); v != 0x700 {
		t.Errorf("LVT LINT0 %#x, want ExtINT unmasked (0x700)", v)
	}
	if v := le.Uint32(l.Regs[0x360:]); v != 0x400 {
		t.Errorf("LVT LINT1 %#x, want NMI unmasked (0x400)", v)
	}
	if v := le.Uint32(l.Regs[0x320:]); v != 0x12345 {
		t.Errorf("LVT timer %#x changed", v)
	}
}

func TestBootRegs(t *testing.T) {
	e := boot.Entry{Mode: boot.Long64, RIP: 0x1000200, RSI: memmap.ZeroPageAddr, RSP: memmap.BootStackTop,
		CR3: memmap.PML4Addr, GDTBase: memmap.GDTAddr, GDTLimit: 31}
	var s kvm.Sregs
	var r kvm.Regs
	vmm.BootRegs(e, &s, &r)
	if r.RIP != e.RIP || r.RSI != e.RSI || r.RSP != e.RSP || r.RFLAGS != 2 {
		t.Errorf("regs %+v", r)
	}
	if s.CR0&1 == 0 || s.CR0&(1<<31) == 0 || s.CR4&(1<<5) == 0 || s.EFER != 0x500 || s.CR3 != memmap.PML4Addr {
		t.Errorf("long mode: cr0 %#x cr4 %#x efer %#x cr3 %#x", s.CR0, s.CR4, s.EFER, s.CR3)
	}
	if s.CS.L != 1 || s.CS.DB != 0 || s.CS.Selector != boot.SelectorCode || s.DS.Selector != boot.SelectorData ||
		s.SS.Selector != boot.SelectorData || s.GDT.Base != memmap.GDTAddr || s.GDT.Limit != 31 {
		t.Errorf("segments: cs %+v ds %+v gdt %+v", s.CS, s.DS, s.GDT)
	}

	e = boot.Entry{Mode: boot.Protected32, RIP: 0x1000000, RBX: memmap.PVHInfoAddr, RSP: memmap.BootStackTop,
		GDTBase: memmap.GDTAddr, GDTLimit: 31}
	vmm.BootRegs(e, &s, &r)
	if r.RBX != memmap.PVHInfoAddr || r.RIP != e.RIP {
		t.Errorf("PVH regs %+v", r)
	}
	if s.CR0&(1<<31) != 0 || s.CR0&1 == 0 || s.EFER != 0 || s.CR4 != 0 || s.CS.L != 0 || s.CS.DB != 1 {
		t.Errorf("protected mode: cr0 %#x efer %#x cr4 %#x cs %+v", s.CR0, s.EFER, s.CR4, s.CS)
	}
}

func TestThreadName(t *testing.T) {
	for _, c := range []struct {
		kernel  string
		n       int
		comm    string
		full    string
		comment string
	}{
		{"primary", 0, "primary/vcpu0", "popvmm/primary/vcpu0", "fits"},
		{"secondary", 1, "secondary/vcpu1", "popvmm/secondary/vcpu1", "exactly 15 bytes"},
		{"secondary", 12, "secondar/vcpu12", "popvmm/secondary/vcpu12", "kernel name cut"},
		{"a-long-kernel-name", 3, "a-long-ke/vcpu3", "popvmm/a-long-kernel-name/vcpu3", "long name cut"},
		{"k", 123456789012, "/vcpu123456789012"[2:], "popvmm/k/vcpu123456789012", "absurd vCPU number keeps its tail"},
	} {
		comm, full := vmm.ThreadName(c.kernel, c.n)
		if comm != c.comm || full != c.full || len(comm) > 15 {
			t.Errorf("%s: ThreadName(%q, %d) = %q, %q; want %q, %q", c.comment, c.kernel, c.n, comm, full, c.comm, c.full)
		}
	}
}

func TestConfigChecked(t *testing.T) {
	l := layout(t, 16*memmap.MiB)
	for _, c := range []struct {
		cfg  vmm.Config
		want string
	}{
		{vmm.Config{Layout: l, CPUs: []int{0}, Boot: vmm.Boot{Image: []byte{1}}}, "empty name"},
		{vmm.Config{Name: "k", CPUs: []int{0}, Boot: vmm.Boot{Image: []byte{1}}}, "no memory layout"},
		{vmm.Config{Name: "k", Layout: l, Boot: vmm.Boot{Image: []byte{1}}}, "0 vCPUs"},
		{vmm.Config{Name: "k", Layout: l, CPUs: []int{-1}, Boot: vmm.Boot{Image: []byte{1}}}, "host core -1"},
		{vmm.Config{Name: "k", Layout: l, CPUs: []int{0}}, "no kernel image"},
		{vmm.Config{Name: "k", Layout: l, CPUs: []int{0}, HugePageSize: 4096, Boot: vmm.Boot{Image: []byte{1}}}, "huge page size"},
		{vmm.Config{Name: "k", Layout: l, CPUs: []int{0}, HugePageSize: memmap.GiB, Boot: vmm.Boot{Image: []byte{1}}}, "not aligned to 1 GiB"},
		{vmm.Config{Name: "k", Layout: l, CPUs: []int{0}, Boot: vmm.Boot{Image: []byte{1}},
			Passthrough: []vmm.Passthrough{{Path: "/dev/zero", GPA: 8 * memmap.GiB, Size: memmap.MiB}}}, "1 passthrough regions for a layout with 0"},
	} {
		_, err := vmm.New(c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: error %v, want %q", c.cfg, err, c.want)
		}
	}
}

func TestAddTSCDeadline(t *testing.T) {
	e := []kvm.CPUIDEntry{{Function: 0, Eax: 0x1f}, {Function: 1, Ecx: 0x1234}, {Function: 7, Ecx: 0}}
	vmm.AddTSCDeadline(e)
	if e[1].Ecx != 0x1234|1<<24 {
		t.Errorf("leaf 1 ECX %#x: want bit 24 (TSC deadline) set and the rest kept", e[1].Ecx)
	}
	if e[0].Eax != 0x1f || e[2].Ecx != 0 {
		t.Errorf("other leaves changed: %+v", e)
	}
}
