package machine

// Tier 2: the window device wired into real KVM VMs by the launcher's own
// code (attachWindow on a pciHost), two freestanding guests
// (tests/guests/window.c) and a Go host peer. Runs where /dev/kvm runs
// guests (the lab here): KVM_RUN=TestKVMWindow scripts/test-kvm.sh.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/internal/windowgeom"
	"github.com/popvmm/popvmm/ipi"
	"github.com/popvmm/popvmm/ipi/msg"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vtty"
)

// guestWait bounds every wait on a guest: generous, for KVM inside an
// emulator.
const guestWait = 2 * time.Minute

// lines is a guest's console as timestamped lines.
type lines struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	lines  []string
	at     []time.Time
	notify chan struct{}
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	l.buf.Write(p)
	for {
		i := bytes.IndexByte(l.buf.Bytes(), '\n')
		if i < 0 {
			break
		}
		l.lines = append(l.lines, string(l.buf.Next(i + 1)[:i]))
		l.at = append(l.at, time.Now())
	}
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
	return len(p), nil
}

// wait returns the first line starting with prefix, and when it came.
func (l *lines) wait(t *testing.T, who, prefix string) (string, time.Time) {
	t.Helper()
	return l.waitFor(t, who, prefix, guestWait)
}

func (l *lines) waitFor(t *testing.T, who, prefix string, d time.Duration) (string, time.Time) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		for i, s := range l.lines {
			if strings.HasPrefix(s, prefix) {
				at := l.at[i]
				l.mu.Unlock()
				return s, at
			}
		}
		all := strings.Join(l.lines, "\n")
		l.mu.Unlock()
		select {
		case <-l.notify:
		case <-deadline.C:
			t.Fatalf("%s: no line %q within %v; console:\n%s", who, prefix, d, all)
		}
	}
}

// number is the integer after prefix in the line starting with it.
func (l *lines) number(t *testing.T, who, prefix string) uint64 {
	t.Helper()
	s, _ := l.wait(t, who, prefix)
	n, err := strconv.ParseUint(strings.TrimSpace(strings.TrimPrefix(s, prefix)), 10, 64)
	if err != nil {
		t.Fatalf("%s: %q: %v", who, s, err)
	}
	return n
}

type windowGuest struct {
	vm   *vmm.VM
	win  *windowDev
	con  *lines
	boot ipi.Boot
}

// Window parameters in the common page (tests/guests/window.c).
const (
	paramsOff   = 4096 + 2048
	mailboxOff  = 2048
	winGuestGPA = 0xfe000000
)

// windowRounds is the ping-pong length: POPVMM_WINDOW_ROUNDS for a
// benchmark run (bench/window-doorbell.sh), else enough to tell one exit
// per doorbell from none.
func windowRounds() int {
	if n, err := strconv.Atoi(os.Getenv("POPVMM_WINDOW_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 2000
}

// TestKVMWindowDoorbells: two guests exchange ROUNDS messages through the
// window, each waking the other by doorbell, and no doorbell leaves KVM
// (no soft doorbell, MMIO exits far below the doorbell count); with
// window.protect a write to the other kernel's section and to the header
// page is refused while the common page and its own section take writes;
// a host peer on the ivshmem server and a guest ring each other.
func TestKVMWindowDoorbells(t *testing.T) {
	testenv.RequireKVM(t)
	image, err := os.ReadFile(filepath.Join("..", "tests", "guests", "out", "window.bin"))
	if err != nil {
		testenv.Require(t, fmt.Errorf("tier-2 guest window not built (tests/guests/build.sh): %w", err))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	const size = 1 << 20
	const kernels, hosts = 2, 2
	maxPeers := kernels + hosts
	rounds := windowRounds()

	win, err := ipi.NewWindow("tier2", size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { win.Close() })
	mem, err := win.Map()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ipi.Unmap(mem) })
	if _, err := msg.Format(mem, maxPeers); err != nil {
		t.Fatal(err)
	}
	g, _ := windowgeom.For(size, maxPeers)
	le := binary.LittleEndian
	le.PutUint32(mem[paramsOff:], uint32(rounds))
	headerWord := le.Uint32(mem[32:])

	bells, err := ipi.NewDoorbells(kernels, hosts, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(bells.Close)
	srv, err := ipi.NewServer(win, ipi.ServerConfig{Vectors: 1, FirstID: kernels, MaxPeers: hosts, Doorbells: bells}, log)
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "window.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	sctx, stop := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { srv.Serve(sctx, ln); close(served) }()
	t.Cleanup(func() { stop(); <-served })

	cpus := lastCPUs(t, kernels)
	guests := make([]*windowGuest, kernels)
	for k := range kernels {
		l, err := memmap.New(memmap.Spec{RAM: 16 * memmap.MiB, RAMAlign: memmap.PageSize, WindowSize: size})
		if err != nil {
			t.Fatal(err)
		}
		kern := &cluster.Kernel{Index: k, Name: fmt.Sprintf("w%d", k), Layout: l}
		v, err := vmm.New(vmm.Config{Name: kern.Name, Layout: l, CPUs: []int{cpus[k]}, NUMANode: -1, Log: log,
			Boot: vmm.Boot{Format: vmm.FormatFlat, Image: image}})
		if err != nil {
			t.Fatal(err)
		}
		gst := &windowGuest{vm: v, con: &lines{notify: make(chan struct{}, 1)}}
		guests[k] = gst
		if err := v.PIO().Insert(vtty.NewUART(gst.con, v.IRQLine(com1IRQ)), "com1", com1Port, 8); err != nil {
			t.Fatal(err)
		}
		h, err := newPCIHost(v, l, log)
		if err != nil {
			t.Fatal(err)
		}
		b := &builder{cfg: Config{Kernel: kern, Window: &Window{Bells: bells, Mem: mem, MaxPeers: maxPeers, Protect: true}}, vm: v, pci: h, log: log}
		d, err := attachWindow(b)
		if err != nil {
			t.Fatal(err)
		}
		gst.win = d.(*windowDev)
		if gst.boot, err = bells.KernelStarted(k); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			v.Stop()
			bells.KernelStopped(gst.boot, nil, false)
			v.Close()
			h.Close()
		})
	}

	host, err := ipi.Dial(ctxFor(t), sock, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { host.Close() })
	le.PutUint32(mem[paramsOff+8:], uint32(host.ID))

	for k, gst := range guests {
		if err := gst.vm.Start(); err != nil {
			t.Fatalf("start guest %d: %v", k, err)
		}
	}
	for k, gst := range guests {
		gst.con.wait(t, fmt.Sprint("guest ", k), fmt.Sprintf("window: ready, peer %d", k))
	}

	// Ping-pong: every round trip is two doorbells, one each way.
	_, t0 := guests[0].con.wait(t, "guest 0", "window: pingpong start")
	// Up to 20 ms a round trip: KVM in a loaded emulator.
	budget := guestWait + time.Duration(rounds)*20*time.Millisecond
	_, t1 := guests[0].con.waitFor(t, "guest 0", "window: pingpong done", budget)
	guests[1].con.wait(t, "guest 1", "window: pingpong done")
	el := t1.Sub(t0)
	t.Logf("guest↔guest doorbell round trip through popvmm's device: %d rounds in %v, %.2f µs a round trip",
		rounds, el, float64(el.Nanoseconds())/float64(rounds)/1e3)
	for k, gst := range guests {
		irqs := gst.con.number(t, fmt.Sprint("guest ", k), "window: interrupts ")
		st, exits := gst.win.dev.Stats(), gst.vm.Status().Exits
		t.Logf("guest %d: %d interrupts taken, exits %v, device %+v", k, irqs, exits, st)
		if st.SoftDoorbells != 0 || st.BadDoorbells != 0 || st.WiringErrors != 0 {
			t.Errorf("guest %d: device %+v: a doorbell reached popvmm", k, st)
		}
		if irqs == 0 {
			t.Errorf("guest %d took no doorbell interrupt", k)
		}
		// The guest's LAPIC timer wakes it every ~50 ms: a wait it ended
		// with the echo already there is a doorbell that never arrived.
		if lost := gst.con.number(t, fmt.Sprint("guest ", k), "window: lost doorbells "); lost != 0 {
			t.Errorf("guest %d: %d of %d doorbells never interrupted it (woken by its watchdog timer)", k, lost, rounds)
		}
		// Setup (BAR0 and MSI-X table accesses) and the protection probe
		// exit; rounds doorbells must not.
		if m := exits["mmio"]; m > uint64(rounds)/20 || m > 100 {
			t.Errorf("guest %d: %d MMIO exits for %d doorbells", k, m, rounds)
		}
	}

	// Protection, as guest 1 saw it and as the memory holds it.
	c1 := guests[1].con
	sec0 := g.Section(0) + mailboxOff
	want := map[string]uint64{
		"window: other section after write: ": 0,
		"window: header after write: ":        uint64(headerWord),
		"window: common after write: ":        4242,
		"window: own section after write: ":   4343,
	}
	for prefix, w := range want {
		if got := c1.number(t, "guest 1", prefix); got != w {
			t.Errorf("guest 1: %s%d, want %d", prefix, got, w)
		}
	}
	if got := le.Uint32(mem[sec0+8:]); got != 0 {
		t.Errorf("kernel 0's section holds %#x after kernel 1 wrote it", got)
	}
	if got := le.Uint32(mem[g.Section(1)+mailboxOff+8:]); got != 4343 {
		t.Errorf("kernel 1's own section holds %d, want 4343", got)
	}
	if st := guests[1].win.dev.Stats(); st.RefusedWrites < 2 {
		t.Errorf("guest 1: %d refused writes, want 2 (other section, header)", st.RefusedWrites)
	}
	if st := guests[0].win.dev.Stats(); st.RefusedWrites != 0 {
		t.Errorf("guest 0: %d refused writes, want none", st.RefusedWrites)
	}

	// A host peer and guest 0 ring each other.
	const hostRounds = 200
	start := time.Now()
	for r := uint32(1); r <= hostRounds; r++ {
		le.PutUint32(mem[paramsOff+4:], r)
		if err := host.Ring(0, 0); err != nil {
			t.Fatalf("host peer rings kernel 0: %v", err)
		}
		for le.Uint32(mem[sec0+4:]) != 2*r { // kernel 0's reply word
			if _, err := host.Wait(ctxFor(t), 0); err != nil {
				t.Fatalf("host peer: round %d: no doorbell from kernel 0: %v (reply %d)", r, err, le.Uint32(mem[sec0+4:]))
			}
		}
	}
	el = time.Since(start)
	t.Logf("host peer↔guest doorbell round trip: %d rounds, %.2f µs each", hostRounds, float64(el.Nanoseconds())/hostRounds/1e3)
	if st := guests[0].win.dev.Stats(); st.SoftDoorbells != 0 {
		t.Errorf("guest 0 after the host rounds: %+v", st)
	}
}

// lastCPUs is n host cores for vCPUs (testenv.GuestCPUs), from the top,
// reused when there are fewer.
func lastCPUs(t testing.TB, n int) []int {
	cpus, err := testenv.GuestCPUs()
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for i := range n {
		out = append(out, cpus[len(cpus)-1-i%len(cpus)])
	}
	return out
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), guestWait)
	t.Cleanup(cancel)
	return ctx
}
