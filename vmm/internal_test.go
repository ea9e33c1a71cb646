package vmm

import (
	"slices"
	"strings"
	"testing"

	gokvm "github.com/bobuhiro11/gokvm/kvm"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm/kvm"
)

func TestPlanSlots(t *testing.T) {
	l, err := memmap.New(memmap.Spec{RAM: 5 * memmap.GiB, RAMAlign: 2 * memmap.MiB,
		Passthrough: []memmap.PassthroughSpec{{Name: "rom", GPA: 0x4_0000_0000, Size: 2 * memmap.MiB}}})
	if err != nil {
		t.Fatal(err)
	}
	pt := []Passthrough{{Path: "/x", Offset: 0x1000, GPA: 0x4_0000_0000, Size: 2 * memmap.MiB, ReadOnly: true}}
	plan, err := planSlots(l, pt)
	if err != nil {
		t.Fatal(err)
	}
	want := []slotPlan{
		{Slot: 0, GPA: 0, Size: 3 * memmap.GiB, Off: 0, Passthrough: -1},
		{Slot: 1, GPA: 4 * memmap.GiB, Size: 2 * memmap.GiB, Off: 3 * memmap.GiB, Passthrough: -1},
		{Slot: 2, GPA: 0x4_0000_0000, Size: 2 * memmap.MiB, Passthrough: 0, ReadOnly: true},
	}
	if len(plan) != len(want) {
		t.Fatalf("plan %+v", plan)
	}
	for i := range want {
		if plan[i] != want[i] {
			t.Errorf("slot %d: %+v, want %+v", i, plan[i], want[i])
		}
	}
	// RAM slots never cover the hole.
	for _, s := range plan {
		if (memmap.Range{Start: s.GPA, Size: s.Size}).Overlaps(memmap.Range{Start: memmap.HoleStart, Size: memmap.HoleEnd - memmap.HoleStart}) {
			t.Errorf("slot %d %#x+%#x in the PCI hole", s.Slot, s.GPA, s.Size)
		}
	}
	if _, err := planSlots(l, []Passthrough{{GPA: 0x4_0000_1000, Size: 2 * memmap.MiB}}); err == nil {
		t.Error("a passthrough region that is not the layout's was planned")
	}
	if _, err := planSlots(l, []Passthrough{{GPA: 0x4_0000_0000, Size: 2 * memmap.MiB, Offset: 12}}); err == nil {
		t.Error("an unaligned file offset was planned")
	}
}

func TestDefaultRoutes(t *testing.T) {
	rs := defaultRoutes()
	if len(rs) != 24+16 {
		t.Fatalf("%d routes, want 40 (KVM's default table)", len(rs))
	}
	seen := map[[3]uint32]bool{}
	for _, r := range rs {
		if r.MSI {
			t.Fatalf("MSI route %+v among the defaults", r)
		}
		seen[[3]uint32{r.GSI, r.Chip, r.Pin}] = true
	}
	for gsi := range uint32(24) {
		if !seen[[3]uint32{gsi, kvm.IRQChipIOAPIC, gsi}] {
			t.Errorf("GSI %d does not reach IOAPIC pin %d", gsi, gsi)
		}
	}
	if !seen[[3]uint32{4, kvm.IRQChipPICMaster, 4}] || !seen[[3]uint32{12, kvm.IRQChipPICSlave, 4}] {
		t.Error("ISA IRQs 4 and 12 do not reach the PICs")
	}
	v := &VM{msiRoutes: map[uint32]kvm.Route{30: {GSI: 30, MSI: true}, 25: {GSI: 25, MSI: true}}}
	all := v.routes()
	if len(all) != 42 || all[40].GSI != 25 || all[41].GSI != 30 {
		t.Errorf("routes with MSIs: %+v", all[40:])
	}
}

func TestHugeFlags(t *testing.T) {
	if hugeFlags(0) != 0 {
		t.Error("no huge pages asked, flags set")
	}
	if got, want := hugeFlags(2*memmap.MiB), 0x4|21<<26; got != want {
		t.Errorf("2 MiB: %#x, want %#x (MFD_HUGETLB|MFD_HUGE_2MB)", got, want)
	}
	if got, want := hugeFlags(memmap.GiB), 0x4|30<<26; got != want {
		t.Errorf("1 GiB: %#x, want %#x", got, want)
	}
}

func TestPlatformPorts(t *testing.T) {
	var got []Ending
	exit := func(a Ending, _ string) { got = append(got, a) }
	kbd, pp := &i8042{exit: exit}, &pvpanic{exit: exit}
	b := []byte{0xff}
	kbd.Read(0, b)
	if b[0] != 0x01 {
		t.Errorf("i8042 status %#x, want 0x01 (output buffer full, so Linux finds no controller at once; input buffer empty, so a reboot's kb_wait does not wait)", b[0])
	}
	kbd.Write(0, []byte{0xd1})
	kbd.Write(0, []byte{0xfe})
	pp.Read(0, b)
	if b[0] != 3 {
		t.Errorf("pvpanic features %#x", b[0])
	}
	pp.Write(0, []byte{2}) // crash kernel loaded: not a panic
	pp.Write(0, []byte{1})
	if len(got) != 2 || got[0] != EndingReset || got[1] != EndingCrash {
		t.Errorf("actions %v, want [reset crash]", got)
	}
}

func TestResetHooksInOrder(t *testing.T) {
	v := &VM{}
	var got []int
	for i := range 3 {
		v.OnReset(func() { got = append(got, i) })
	}
	v.runResetHooks()
	v.runResetHooks()
	if want := []int{0, 1, 2, 0, 1, 2}; !slices.Equal(got, want) {
		t.Errorf("hooks ran as %v, want %v", got, want)
	}
}

// TestEndBeforeStart: a VM stopped or crashed by the host before Start
// says so in Status.Ending, not only in its reason text.
func TestEndBeforeStart(t *testing.T) {
	for _, tc := range []struct {
		end   func(*VM)
		state State
		want  Ending
	}{
		{(*VM).Stop, StateStopped, EndingHostStop},
		{func(v *VM) { v.Crash("backend died") }, StateCrashed, EndingCrash},
	} {
		v := &VM{state: StateCreated, done: make(chan struct{}), cfg: Config{Layout: &memmap.Layout{}}}
		tc.end(v)
		<-v.Done()
		if st := v.Status(); st.State != tc.state || st.Ending != tc.want {
			t.Errorf("state %s, ending %q, want %s, %q", st.State, st.Ending, tc.state, tc.want)
		}
	}
}

// TestCrashReportParts: the pieces a triple fault's reason is made of.
func TestCrashReportParts(t *testing.T) {
	for in, want := range map[string]string{
		"a\nb\n":                     "b",
		"a\r\nMPTABLE: Processor #0": "MPTABLE: Processor #0",
		"x\n\n  \n":                  "x",
		"\x1b[0mcolour\n":            "[0mcolour",
		"":                           "",
	} {
		if got := lastLine([]byte(in)); got != want {
			t.Errorf("lastLine(%q) = %q, want %q", in, got, want)
		}
	}
	if got := lastLine([]byte(strings.Repeat("x", 300))); len(got) != 200 {
		t.Errorf("lastLine of 300 bytes kept %d", len(got))
	}
	var e kvm.Events
	if s := eventsString(&e); s != "" {
		t.Errorf("no events: %q", s)
	}
	e.E = gokvm.Exception{Inject: 1, Nr: 14, HadErrorCode: 1, ErrorCode: 2}
	e.N.Pending = 1
	if got, want := eventsString(&e), "exception 14 (error 0x2) injected, nmi pending"; got != want {
		t.Errorf("events %q, want %q", got, want)
	}
}
