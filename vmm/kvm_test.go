package vmm_test

// Tier-2 tests: freestanding guests (tests/guests, built by
// tests/guests/build.sh) under real KVM. Each calls testenv.RequireKVM
// first and has KVM in its name, so make test runs them in the lab.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vtty"
)

// guestTimeout bounds every wait on a guest: generous, because the lab
// runs KVM inside an emulator.
const guestTimeout = 60 * time.Second

// guestBin reads a built tier-2 guest.
func guestBin(t testing.TB, name string) []byte {
	t.Helper()
	path := filepath.Join("..", "tests", "guests", "out", name+".bin")
	b, err := os.ReadFile(path)
	if err != nil {
		testenv.Require(t, fmt.Errorf("tier-2 guest %s not built (run tests/guests/build.sh): %w", name, err))
	}
	return b
}

// console collects a guest's UART output and lets a test wait for text.
type console struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	notify chan struct{}
}

func newConsole() *console { return &console{notify: make(chan struct{}, 1)} }

const consoleMax = 1 << 20

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	if c.buf.Len() > consoleMax {
		// Keep the tail: tests look at recent output.
		tail := bytes.Clone(c.buf.Bytes()[c.buf.Len()-consoleMax/2:])
		c.buf.Reset()
		c.buf.Write(tail)
	}
	c.buf.Write(p)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// waitFor waits until cond holds for the output, or fails the test.
func (c *console) waitFor(t testing.TB, what string, cond func(string) bool) {
	t.Helper()
	deadline := time.NewTimer(guestTimeout)
	defer deadline.Stop()
	for !cond(c.String()) {
		select {
		case <-c.notify:
		case <-deadline.C:
			t.Fatalf("no %s on the guest's console after %v; console:\n%s", what, guestTimeout, c.tail())
		}
	}
}

func (c *console) waitText(t testing.TB, s string) {
	t.Helper()
	c.waitFor(t, strconv.Quote(s), func(out string) bool { return strings.Contains(out, s) })
}

func (c *console) tail() string {
	s := c.String()
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return s
}

// ticks is the highest "tick N" the hello guest printed (-1: none).
func ticks(out string) int {
	i := strings.LastIndex(out, "tick ")
	for i >= 0 {
		rest := out[i+5:]
		if j := strings.IndexByte(rest, '\n'); j > 0 {
			if n, err := strconv.Atoi(rest[:j]); err == nil {
				return n
			}
		}
		i = strings.LastIndex(out[:i], "tick ")
	}
	return -1
}

// ports records guest writes to a range of ports.
type ports struct {
	mu     sync.Mutex
	last   map[uint64]byte
	notify chan struct{}
}

func newPorts() *ports { return &ports{last: map[uint64]byte{}, notify: make(chan struct{}, 1)} }

func (p *ports) Read(_ uint64, d []byte) { clear(d) }
func (p *ports) Write(off uint64, d []byte) {
	p.mu.Lock()
	p.last[off] = d[0]
	p.mu.Unlock()
	select {
	case p.notify <- struct{}{}:
	default:
	}
}

func (p *ports) get(off uint64) (byte, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, ok := p.last[off]
	return v, ok
}

func (p *ports) wait(t testing.TB, off uint64, c *console) byte {
	t.Helper()
	deadline := time.NewTimer(guestTimeout)
	defer deadline.Stop()
	for {
		if v, ok := p.get(off); ok {
			return v
		}
		select {
		case <-p.notify:
		case <-deadline.C:
			t.Fatalf("no write to port offset %d after %v; console:\n%s", off, guestTimeout, c.tail())
		}
	}
}

// hostCPUs lists the cores for the tests' vCPUs (testenv.GuestCPUs).
func hostCPUs(t testing.TB) []int {
	cpus, err := testenv.GuestCPUs()
	if err != nil {
		t.Fatal(err)
	}
	return cpus
}

// cpusFor picks n host cores, reusing them when there are fewer.
func cpusFor(t testing.TB, n int) []int {
	all := hostCPUs(t)
	var cpus []int
	for i := range n {
		cpus = append(cpus, all[(len(all)-1-i%len(all))])
	}
	return cpus
}

func layout(t testing.TB, ram uint64) *memmap.Layout {
	t.Helper()
	l, err := memmap.New(memmap.Spec{RAM: ram, RAMAlign: memmap.PageSize})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type testVM struct {
	*vmm.VM
	con  *console
	uart *vtty.UART
}

// startGuest boots a tier-2 guest with a UART on COM1 (IRQ 4) and
// returns it running; the VM is closed at the end of the test, and its
// console printed if the test failed.
func startGuest(t testing.TB, name string, ncpu int, tweak func(*vmm.Config)) *testVM {
	t.Helper()
	cfg := vmm.Config{Name: "t-" + name, Layout: layout(t, 16*memmap.MiB), CPUs: cpusFor(t, ncpu),
		NUMANode: -1, Boot: vmm.Boot{Format: vmm.FormatFlat, Image: guestBin(t, name)}}
	if tweak != nil {
		tweak(&cfg)
	}
	v, err := vmm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tv := &testVM{VM: v, con: newConsole()}
	tv.uart = vtty.NewUART(tv.con, v.IRQLine(4))
	if err := v.PIO().Insert(tv.uart, "com1", 0x3f8, 8); err != nil {
		v.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := v.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
		if t.Failed() {
			t.Logf("%s console:\n%s", name, tv.con.tail())
		}
	})
	return tv
}

func (tv *testVM) start(t testing.TB) {
	t.Helper()
	if err := tv.Start(); err != nil {
		t.Fatal(err)
	}
}

func waitDone(t testing.TB, tv *testVM) {
	t.Helper()
	select {
	case <-tv.Done():
	case <-time.After(guestTimeout):
		t.Fatalf("%s still %s after %v; console:\n%s", tv.Name(), tv.Status().State, guestTimeout, tv.con.tail())
	}
}

func TestKVMUARTOutput(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "hello", 1, nil)
	g.start(t)
	g.con.waitText(t, "popvmm-guest: hello\n")
	g.con.waitFor(t, "tick 100", func(s string) bool { return ticks(s) >= 100 })
	st := g.Status()
	if st.State != vmm.StateRunning || st.Exits["io"] == 0 || st.Uptime <= 0 {
		t.Errorf("status %+v", st)
	}
}

func TestKVMUARTInterruptInput(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "echo", 1, nil)
	g.start(t)
	g.con.waitText(t, "popvmm-guest: echo ready\n")
	if n := g.uart.Receive([]byte("ping")); n != 4 {
		t.Fatalf("UART took %d bytes", n)
	}
	g.con.waitText(t, "ready\nPING")
	// A second burst: the edge-triggered IOAPIC pin must fire again.
	g.uart.Receive([]byte("pong"))
	g.con.waitText(t, "PINGPONG")
}

func TestKVMSecondVCPU(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "smp", 2, nil)
	rec := newPorts()
	if err := g.PIO().Insert(rec, "apic-ids", 0x510, 2); err != nil {
		t.Fatal(err)
	}
	g.start(t)
	if id := rec.wait(t, 0, g.con); id != 0 {
		t.Errorf("boot vCPU reports APIC id %d, want 0", id)
	}
	if id := rec.wait(t, 1, g.con); id != 1 {
		t.Errorf("second vCPU reports APIC id %d, want 1", id)
	}
	g.con.waitText(t, "sipi sent")
	if st := g.Status(); st.State != vmm.StateRunning {
		t.Errorf("state %s (%s)", st.State, st.Reason)
	}
}

func TestKVMTripleFaultIsolated(t *testing.T) {
	testenv.RequireKVM(t)
	good := startGuest(t, "hello", 1, nil)
	var badCon *console
	bad := startGuest(t, "triple", 1, func(c *vmm.Config) {
		c.ConsoleTail = func() []byte { return []byte(badCon.String()) }
	})
	badCon = bad.con
	good.start(t)
	good.con.waitText(t, "popvmm-guest: hello")
	bad.start(t)
	waitDone(t, bad)
	st := bad.Status()
	if st.State != vmm.StateCrashed || st.Ending != vmm.EndingCrash || !strings.Contains(st.Reason, "triple fault") {
		t.Errorf("faulting VM: state %s, ending %q, reason %q", st.State, st.Ending, st.Reason)
	}
	// The crash report says where the guest was: its last port access
	// (the UART's transmit register) and the console's last line.
	for _, want := range []string{"last exit: io ", `console: "popvmm-guest: triple fault now"`} {
		if !strings.Contains(st.Reason, want) {
			t.Errorf("crash report %q lacks %q", st.Reason, want)
		}
	}
	if !strings.Contains(bad.con.String(), "triple fault now") {
		t.Errorf("faulting VM's console lost: %q", bad.con.String())
	}
	if st.Exits["shutdown"] != 1 {
		t.Errorf("exits %v, want one shutdown", st.Exits)
	}
	// The neighbour keeps printing and running.
	at := ticks(good.con.String())
	good.con.waitFor(t, fmt.Sprintf("ticks after %d", at), func(s string) bool { return ticks(s) >= at+200 })
	if st := good.Status(); st.State != vmm.StateRunning {
		t.Errorf("neighbour: state %s (%s)", st.State, st.Reason)
	}
}

// cpusAllowed reads a thread's Cpus_allowed_list and name from /proc.
func threadProc(t *testing.T, tid int) (cpus, comm string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		t.Fatalf("thread %d: %v", tid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
			cpus = strings.TrimSpace(v)
		}
	}
	c, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/comm", tid))
	if err != nil {
		t.Fatal(err)
	}
	return cpus, strings.TrimSpace(string(c))
}

func TestKVMVCPUAffinity(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "hello", 2, func(c *vmm.Config) { c.Name = "affinity-test-kernel" })
	g.start(t)
	g.con.waitText(t, "popvmm-guest: hello")
	st := g.Status()
	if len(st.VCPUs) != 2 {
		t.Fatalf("%d vCPUs in status", len(st.VCPUs))
	}
	want := cpusFor(t, 2)
	for i, vc := range st.VCPUs {
		if vc.TID == 0 {
			t.Fatalf("vCPU %d has no thread", i)
		}
		cpus, comm := threadProc(t, vc.TID)
		if cpus != strconv.Itoa(want[i]) {
			t.Errorf("vCPU %d (tid %d): Cpus_allowed_list %q, want %d", i, vc.TID, cpus, want[i])
		}
		if !slices.Equal(vc.Affinity, []int{want[i]}) || vc.HostCPU != want[i] {
			t.Errorf("vCPU %d: status affinity %v host cpu %d, want %d", i, vc.Affinity, vc.HostCPU, want[i])
		}
		wantComm, wantFull := vmm.ThreadName("affinity-test-kernel", i)
		if comm != wantComm || vc.Comm != wantComm || vc.Thread != wantFull {
			t.Errorf("vCPU %d: comm %q, status %q/%q, want %q/%q", i, comm, vc.Comm, vc.Thread, wantComm, wantFull)
		}
	}
}

// resources counts this process's fds, and the mappings that belong to a
// VM (guest RAM memfds, kvm_run pages).
func resources(t *testing.T) (fds, vmMaps int, maps string) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "memfd:popvmm") || strings.Contains(l, "kvm-vcpu") {
			vmMaps++
		}
	}
	return len(ents), vmMaps, string(b)
}

func TestKVMStopCloseReleases(t *testing.T) {
	testenv.RequireKVM(t)
	// Warm up whatever the runtime opens once (epoll, /dev/kvm checks).
	w := startGuest(t, "hello", 1, nil)
	w.Close()
	fds0, maps0, _ := resources(t)
	if maps0 != 0 {
		t.Fatalf("%d VM mappings before the test", maps0)
	}

	g := startGuest(t, "hello", 2, nil) // vCPU 1 waits for SIPI inside KVM_RUN
	g.start(t)
	g.con.waitText(t, "popvmm-guest: hello")
	fds1, maps1, _ := resources(t)
	if fds1 <= fds0 || maps1 == 0 {
		t.Errorf("a running VM: %d fds (before %d), %d VM mappings", fds1, fds0, maps1)
	}
	var tids []int
	for _, vc := range g.Status().VCPUs {
		tids = append(tids, vc.TID)
	}
	g.Stop()
	if st := g.Status(); st.State != vmm.StateStopped || st.Ending != vmm.EndingHostStop || st.Reason != "stopped by the host" {
		t.Errorf("after Stop: %s, ending %q (%s)", st.State, st.Ending, st.Reason)
	}
	for _, vc := range g.Status().VCPUs {
		if vc.TID != 0 {
			t.Errorf("vCPU %d still has thread %d", vc.Index, vc.TID)
		}
	}
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	if err := g.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	g.IRQLine(4).Set(true) // a no-op once closed

	fds2, maps2, maps := resources(t)
	if fds2 != fds0 || maps2 != 0 {
		t.Errorf("after Close: %d fds (before %d), %d VM mappings:\n%s", fds2, fds0, maps2, maps)
	}
	// Each vCPU thread exits with its goroutine (it never unlocks the
	// OS thread); the exit itself is asynchronous, and slow in the lab.
	deadline := time.Now().Add(30 * time.Second)
	for _, tid := range tids {
		for {
			task := fmt.Sprintf("/proc/self/task/%d", tid)
			_, err := os.Stat(task)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if time.Now().After(deadline) {
				stat, _ := os.ReadFile(task + "/stat")
				wchan, _ := os.ReadFile(task + "/wchan")
				stack, _ := os.ReadFile(task + "/stack")
				t.Fatalf("vCPU thread %d still exists 30 s after Close: stat %s, wchan %s, kernel stack:\n%s", tid, bytes.TrimSpace(stat), wchan, stack)
			}
			time.Sleep(10 * time.Millisecond) // polling a thread's exit, bounded by the deadline
		}
	}
}

func TestKVMResetPolicy(t *testing.T) {
	testenv.RequireKVM(t)
	t.Run("never", func(t *testing.T) {
		g := startGuest(t, "reset", 1, nil)
		g.start(t)
		waitDone(t, g)
		st := g.Status()
		if st.State != vmm.StateCrashed || st.Ending != vmm.EndingReset || !strings.Contains(st.Reason, "reset") || st.Resets != 0 {
			t.Errorf("state %s, ending %q, reason %q, resets %d", st.State, st.Ending, st.Reason, st.Resets)
		}
	})
	t.Run("always", func(t *testing.T) {
		g := startGuest(t, "reset", 1, func(c *vmm.Config) { c.Restart = vmm.RestartAlways })
		g.start(t)
		g.con.waitFor(t, "three boots", func(s string) bool { return strings.Count(s, "popvmm-guest: boot") >= 3 })
		g.Stop()
		st := g.Status()
		if st.State != vmm.StateStopped || st.Ending != vmm.EndingHostStop || st.Resets < 2 {
			t.Errorf("state %s, ending %q (%s), resets %d", st.State, st.Ending, st.Reason, st.Resets)
		}
	})
}

// TestKVMResetHooks checks OnReset's contract on a guest that resets at
// once: hooks run in order at every reboot, before guest RAM is cleared (a
// marker a hook writes is gone by the next reset).
func TestKVMResetHooks(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "reset", 1, func(c *vmm.Config) { c.Restart = vmm.RestartAlways })
	const marker = 8 * memmap.MiB // free RAM: the flat guest and its stack are below
	var mu sync.Mutex
	var order []string
	var stale []uint32
	g.OnReset(func() {
		mu.Lock()
		defer mu.Unlock()
		v, err := g.Memory().ReadU32(marker)
		if err != nil {
			t.Error(err)
		}
		stale = append(stale, v)
		order = append(order, "first")
		if err := g.Memory().WriteU32(marker, 0x5eb00715); err != nil {
			t.Error(err)
		}
	})
	g.OnReset(func() {
		mu.Lock()
		defer mu.Unlock()
		order = append(order, "second")
	})
	g.start(t)
	g.con.waitFor(t, "three boots", func(s string) bool { return strings.Count(s, "popvmm-guest: boot") >= 3 })
	g.Stop()
	mu.Lock()
	defer mu.Unlock()
	if len(order) < 4 || len(order)%2 != 0 {
		t.Fatalf("hooks ran %v, want first/second pairs for at least two reboots", order)
	}
	for i := 0; i < len(order); i += 2 {
		if order[i] != "first" || order[i+1] != "second" {
			t.Errorf("hooks ran %v, want first then second at every reboot", order)
			break
		}
	}
	for i, v := range stale {
		if v != 0 {
			t.Errorf("reboot %d: the marker of the reboot before survived (%#x): RAM was cleared before the hooks ran", i, v)
		}
	}
}

func TestKVMSetupFailureUndone(t *testing.T) {
	testenv.RequireKVM(t)
	fds0, _, _ := resources(t)
	// A host core that does not exist: Start fails pinning, nothing runs.
	cfg := vmm.Config{Name: "badcpu", Layout: layout(t, 16*memmap.MiB), CPUs: []int{1000}, NUMANode: -1,
		Boot: vmm.Boot{Format: vmm.FormatFlat, Image: guestBin(t, "hello")}}
	v, err := vmm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Start(); err == nil {
		t.Error("Start pinned a vCPU to core 1000")
	}
	if st := v.Status(); st.State != vmm.StateCreated {
		t.Errorf("state %s after a failed start", st.State)
	}
	v.Close()
	// A kernel that does not fit: New fails half-way and leaves nothing.
	cfg.CPUs = cpusFor(t, 1)
	cfg.Boot.Image = make([]byte, 32*memmap.MiB)
	if _, err := vmm.New(cfg); err == nil {
		t.Error("New loaded a 32 MiB flat image into 16 MiB")
	}
	if fds, maps, _ := resources(t); fds != fds0 || maps != 0 {
		t.Errorf("after failures: %d fds (before %d), %d VM mappings", fds, fds0, maps)
	}
}

func TestKVMHostCrash(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "hello", 1, nil)
	g.start(t)
	g.con.waitText(t, "popvmm-guest: hello")
	g.Crash("guest panic: Kernel panic - not syncing: test")
	st := g.Status()
	if st.State != vmm.StateCrashed || st.Ending != vmm.EndingCrash || st.Reason != "guest panic: Kernel panic - not syncing: test" {
		t.Errorf("state %s, ending %q, reason %q", st.State, st.Ending, st.Reason)
	}
	g.Stop() // already ended: no change
	if st := g.Status(); st.State != vmm.StateCrashed || st.Ending != vmm.EndingCrash {
		t.Errorf("Stop after Crash: state %s, ending %q", st.State, st.Ending)
	}
}

// TestKVMXSETBVSeen: a guest's XSETBV reaches KVM, and the CPUID popvmm
// gives says so (issue 20). The xcr0 guest sets XCR0 to what CPUID 0xD.0
// offers of x87, SSE and AVX, and reports what XGETBV says right after and
// again after exits to popvmm (when KVM has put back the XCR0 it knows
// of), and CPUID 0xD.0 EBX, which KVM recomputes from that XCR0 over the
// leaf popvmm set (SDM vol. 2A, CPUID leaf 0DH; arch/x86/kvm/cpuid.c).
//
// In the lab this is known to go wrong, and not in KVM or popvmm: QEMU
// TCG's SVM emulation (Debian 12's QEMU 7.2) does not take the XSETBV
// intercept, so a nested guest's XSETBV changes the emulated XCR0 behind
// KVM's back; KVM still holds XCR0 = x87, reports the x87+SSE size and
// loads x87 back on every entry. Every kernel in the lab, popvmm's and
// QEMU's alike, prints "XSAVE consistency problem" for it and runs
// without XSAVE (docs/lab.md). Inside the lab (POPVMM_IN_LAB=1) the test
// takes exactly that outcome too, and says so; anything else fails.
func TestKVMXSETBVSeen(t *testing.T) {
	testenv.RequireKVM(t)
	g := startGuest(t, "xcr0", 1, nil)
	g.start(t)
	const prefix = "popvmm-guest: xcr0 "
	var report string
	g.con.waitFor(t, "the xcr0 report", func(out string) bool {
		i := strings.Index(out, prefix)
		if i < 0 || !strings.Contains(out[i:], "\n") {
			return false
		}
		report = out[i : i+strings.Index(out[i:], "\n")]
		return true
	})
	var set, get, size, wantSize, after uint32
	if _, err := fmt.Sscanf(report, "popvmm-guest: xcr0 set=%d get=%d size=%d want-size=%d after-exits=%d",
		&set, &get, &size, &wantSize, &after); err != nil {
		t.Fatalf("parsing %q: %v", report, err)
	}
	t.Logf("XCR0 set %#x, XGETBV %#x, after exits %#x; CPUID 0xD.0 EBX %d (want %d)", set, get, after, size, wantSize)
	if get != set || after != set || size != wantSize {
		if os.Getenv("POPVMM_IN_LAB") == "1" && get == set && after == 1 && size == 576 {
			t.Logf("the lab's known emulator fault (docs/lab.md): KVM did not see the XSETBV, as with every nested guest under QEMU TCG's SVM")
			return
		}
		t.Errorf("the guest's XSETBV to %#x was not seen by KVM: XGETBV after exits %#x, CPUID 0xD.0 EBX %d, want %d",
			set, after, size, wantSize)
	}
}
