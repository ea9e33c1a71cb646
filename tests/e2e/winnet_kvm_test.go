package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/winnet"
)

// TestKVMWinnet is the window network's tier-3 test (docs/winnet.md): two
// kernels with [cluster.winnet] each get win0 with their address (the
// driver loaded by the initramfs) and every kernel's name in /etc/hosts;
// one sshes to the other over win0 with the kernels' own key;
// the agents still take the messaging window (msg ping); they ping each
// other over win0 and move a TCP stream across it (busybox httpd and wget,
// the file's checksum compared on both sides); status shows both up with
// their per-peer counters. With window.protect on, no doorbell reaches
// popvmm and no kernel writes outside its own section. The secondary,
// crashed on purpose, is seen down by the primary and in status; booted
// again, it is reachable over win0 again.
func TestKVMWinnet(tt *testing.T) {
	testenv.RequireRoot(tt)
	c := newKVMCluster(tt, "e2ewin",
		kvmKernel{"primary", "light", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "up"})
	t := c.t
	enableWinnet(t, c, "")
	t.Log(c.must("up", "-d", c.config))
	st := c.status()
	t.Cleanup(func() { c.killAll(st) })
	addr := map[string]string{"primary": "10.200.0.1", "secondary": "10.200.0.2"}
	for name, a := range addr {
		c.waitConsole(name, "popvmm-init: win0 "+a+"/24", bootDeadline)
	}
	c.waitSSHD("primary")
	c.waitSSHD("secondary")
	if out := c.mustSSH("primary", "cat", "/etc/hosts"); !strings.Contains(out, "10.200.0.2\tsecondary") {
		t.Errorf("primary's /etc/hosts does not name the secondary on win0:\n%s", out)
	}
	// The agents took the messaging window's function, not this one.
	for _, k := range []string{"primary", "secondary"} {
		t.Logf("msg ping %s: %s", k, strings.TrimSpace(c.retry(agentDeadline, "msg", "ping", "-c", c.config, k)))
	}

	// Kernel to kernel over win0 with the kernels' own key, each host key
	// known beforehand (dbclient refuses an unknown one without a terminal).
	if out := c.mustSSH("primary", "dbclient", addr["secondary"], "hostname"); !strings.Contains(out, "secondary") {
		t.Errorf("primary's ssh to the secondary over win0 ran hostname as %q", out)
	}

	// Each pings the other over win0.
	out := c.mustSSH("primary", "ping", "-c", "3", "-w", "60", addr["secondary"])
	t.Logf("primary pings secondary over win0:\n%s", out)
	out = c.mustSSH("secondary", "ping", "-c", "3", "-w", "60", addr["primary"])
	t.Logf("secondary pings primary over win0:\n%s", out)

	// A TCP stream: 8 MiB from the secondary's httpd to the primary's wget.
	sum := c.mustSSH("secondary", "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1M count=8 2>/dev/null && "+
		"httpd -p 8080 -h /tmp/www && md5sum /tmp/www/blob")
	before := c.status()
	start := time.Now()
	got := c.mustSSH("primary", "wget -q -O /tmp/blob http://"+addr["secondary"]+":8080/blob && md5sum /tmp/blob")
	if strings.Fields(sum)[0] != strings.Fields(got)[0] {
		t.Fatalf("the stream over win0 arrived as %q, sent %q", got, sum)
	}
	t.Logf("8 MiB over win0 in %v (lab: emulated), md5 %s", time.Since(start).Round(time.Millisecond), strings.Fields(got)[0])

	st = c.status()
	for _, k := range st.Kernels {
		// VM exits to popvmm during the stream, by reason: the window
		// network adds none (its doorbells go through KVM).
		t.Logf("%s: exits to popvmm during the stream: %v", k.Name, exitDelta(before.Kernel(k.Name), &k))
	}
	if st.Winnet == nil || len(st.Winnet.Kernels) != 2 {
		t.Fatalf("status has no window network: %+v", st.Winnet)
	}
	for _, k := range st.Winnet.Kernels {
		if !k.Up || k.Address != addr[k.Name] || len(k.Peers) != 1 || k.Peers[0].RxPackets == 0 || k.Peers[0].TxPackets == 0 {
			t.Errorf("status: %s on the window network: %+v", k.Name, k)
		}
	}
	p := st.Winnet.Kernels[0].Peers[0]
	if p.RxBytes < 8<<20 {
		t.Errorf("status: primary received %d bytes from the secondary over win0, want the 8 MiB stream", p.RxBytes)
	}
	t.Logf("status: primary from secondary: %+v", p)
	t.Log(c.must("status", "-c", c.config))
	// Every doorbell went through KVM (ioeventfd -> irqfd), and no kernel
	// wrote outside its own section.
	for _, k := range st.Kernels {
		if d := winnetInfo(k); !strings.Contains(d, "soft doorbells 0, bad 0, refused writes 0") {
			t.Errorf("%s's window network device: %s", k.Name, d)
		}
	}

	// A hostile writer: garbage in the secondary's ring to the primary
	// (indexes, descriptors), written through the window's memfd as the
	// secondary's kernel could write it. The primary drops and counts it,
	// runs on, and traffic resumes.
	drops := st.Winnet.Kernels[0].Peers[0].RxDrops
	scribble(t, st.PID, "popvmm-window-e2ewin-winnet")
	out = c.mustSSH("primary", "ping", "-c", "3", "-w", "60", addr["secondary"])
	t.Logf("after the garbage, primary pings secondary over win0:\n%s", out)
	st = c.status()
	if p := st.Winnet.Kernels[0].Peers[0]; p.RxDrops < drops+2 {
		t.Errorf("primary's drops from the secondary after the garbage: %d (before: %d), want the bad descriptors and index counted", p.RxDrops, drops)
	} else {
		t.Logf("primary's drops from the secondary: %d before the garbage, %d after", drops, p.RxDrops)
	}
	if k := st.Kernel("primary"); k.State != supervisor.StateRunning {
		t.Errorf("primary is %s after the garbage", k.State)
	}
	c.waitConsole("primary", "bad descriptor", time.Minute)

	// The secondary crashes on purpose: the primary sees it down, its
	// status says so; booted again, it is reachable over win0 again.
	c.mustSSH("secondary", "(sleep 1; "+crashCmd+") </dev/null >/dev/null 2>&1 &") // after the session ends
	c.waitState("secondary", supervisor.StateCrashed, time.Minute)
	c.waitConsole("primary", "win0: peer 1 down", time.Minute)
	if k := c.status().Winnet.Kernels[1]; k.Up {
		t.Errorf("status after the secondary's crash: %+v, want it down", k)
	}
	c.must("boot", "-c", c.config, "secondary")
	c.waitConsoleCount("secondary", "popvmm-init: win0 "+addr["secondary"]+"/24", 2, bootDeadline)
	out = c.mustSSH("primary", "ping", "-c", "3", "-w", "60", addr["secondary"])
	t.Logf("after the secondary's reboot, primary pings it over win0:\n%s", out)
	if k := c.status().Winnet.Kernels[1]; !k.Up || k.Generation != 2 {
		t.Errorf("status after the secondary's reboot: %+v, want it up, its second incarnation", k)
	}

	c.must("down", "-c", c.config)
	checkGone(t, c, st)
}

// winnetInfo is the kernel's window network device as status shows it.
func winnetInfo(k supervisor.KernelStatus) string {
	if k.Machine == nil {
		return ""
	}
	return strings.Join(k.Machine.Devs["winnet"], ", ")
}

// scribble maps the window network's memfd (name) of the supervisor pid
// through /proc and writes garbage into peer 1's ring to peer 0: first a
// tail 4 ahead over descriptors that point outside the data area or are too
// long, then a tail far out of range.
func scribble(t testing.TB, pid int, name string) {
	t.Helper()
	fds, _ := filepath.Glob(fmt.Sprintf("/proc/%d/fd/*", pid))
	var path string
	for _, fd := range fds {
		if target, err := os.Readlink(fd); err == nil && strings.Contains(target, name) {
			path = fd
			break
		}
	}
	if path == "" {
		t.Fatalf("supervisor %d holds no memfd %q", pid, name)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	g, err := winnet.Open(mem)
	if err != nil {
		t.Fatal(err)
	}
	ring := g.Ring(1, 0)
	le := binary.LittleEndian
	tail := le.Uint64(mem[ring:])
	bad := []uint64{uint64(g.DataSize) | 64<<32, 0 | uint64(g.MaxFrame()+1)<<32, 0, (g.DataSize - 8) | 1000<<32}
	for i, d := range bad {
		le.PutUint64(mem[ring+64+8*((tail+uint64(i))%winnet.RingSlots):], d)
	}
	le.PutUint64(mem[ring:], tail+uint64(len(bad)))
	time.Sleep(2 * time.Second) // the primary's timer polls within 100 ms
	le.PutUint64(mem[ring:], tail+1<<40)
	time.Sleep(2 * time.Second)
}

// checkWinnetExits fails t when the kernels took more VM exits to
// popvmm's userspace from status a to status b (a transfer over win0 that
// took d) than twice their idle rate (per second) allows, plus 100, or
// when a doorbell of the window network went through popvmm: its frames
// and doorbells never leave KVM. Frames through popvmm one by one would be
// thousands of exits per GiB.
func checkWinnetExits(t testing.TB, idleRate float64, a, b *supervisor.Status, d time.Duration) {
	t.Helper()
	for _, k := range b.Kernels {
		t.Logf("%s's exits to popvmm by reason over %.1f s: %v (idle, both kernels: %.1f/s)", k.Name, d.Seconds(), exitDelta(a.Kernel(k.Name), &k), idleRate)
		if info := winnetInfo(k); !strings.Contains(info, "soft doorbells 0,") {
			t.Errorf("%s's window network device: %s, want no doorbell through popvmm", k.Name, info)
		}
	}
	if n, bound := exitsBetween(a, b), 2*idleRate*d.Seconds()+100; float64(n) > bound {
		t.Errorf("%d VM exits to popvmm's userspace during the transfer over win0 (%.1f s), over the %.0f the kernels' idle rate allows", n, d.Seconds(), bound)
	}
}

// exitsBetween is how many VM exits to popvmm's userspace every kernel
// took together from status a to status b.
func exitsBetween(a, b *supervisor.Status) uint64 {
	var n uint64
	for _, k := range b.Kernels {
		for _, v := range exitDelta(a.Kernel(k.Name), &k) {
			n += v
		}
	}
	return n
}

// exitDelta is what a kernel's VM exits to popvmm, by reason, grew by from
// a to b.
func exitDelta(a, b *supervisor.KernelStatus) map[string]uint64 {
	d := map[string]uint64{}
	if a == nil || b == nil || a.Machine == nil || b.Machine == nil {
		return d
	}
	for r, n := range b.Machine.Exits {
		if n > a.Machine.Exits[r] {
			d[r] = n - a.Machine.Exits[r]
		}
	}
	return d
}

// enableWinnet turns c's cluster into one with a window network (16 MiB)
// and window.protect on (each kernel may write only its own section of the
// window network's window too), every kernel booting root (none: the
// initramfs).
func enableWinnet(t testing.TB, c *kvmCluster, root string) {
	t.Helper()
	if root != "" {
		c.bootRoot(root)
	}
	toml, err := os.ReadFile(c.config)
	if err != nil {
		t.Fatal(err)
	}
	toml = bytes.Replace(toml, []byte("[cluster.window]\n"), []byte("[cluster.window]\nprotect = true\n"), 1)
	toml = fmt.Appendf(toml, "[cluster.winnet]\nenabled = true\nsize = \"16M\"\n")
	if err := os.WriteFile(c.config, toml, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestKVMWinnetMPI: a full and a light kernel booted into the Debian root
// image, with a window network and the project's MPI programs on a
// read-only disk (make mpi): mpirun on the first starts one rank on each
// kernel, launched over ssh between the kernels with their own key (OpenSSH
// in the image), hydra's connections and the ranks' traffic over win0. The
// ranks run hostname, then hello, ping-pong (every 1 MiB message checked)
// and allreduce (every sum checked); the window network's counters show
// the ping-pong's megabytes went over win0. Root in the secondary then
// scribbles on its own ring to the primary through the PCI resource
// (winnet-scribble): the primary drops and counts it and runs on. Last,
// 1 GiB over win0
// (iperf3) takes no VM exit to popvmm beyond the kernels' idle rate and
// no doorbell through popvmm.
func TestKVMWinnetMPI(tt *testing.T) {
	testenv.RequireRoot(tt)
	disk := mpiDisk(requireMPIImage(tt))
	c := newKVMClusterExtra(tt, "e2empi", map[string]string{"primary": disk, "secondary": disk},
		kvmKernel{"primary", "full", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "up"})
	t := c.t
	enableWinnet(t, c, requireRootImage(tt))
	t.Log(c.must("up", "-d", c.config))
	st := c.status()
	t.Cleanup(func() { c.killAll(st) })
	for _, k := range c.kernels {
		c.waitConsole(k, "popvmm-init: root: popvmm Debian root image", bootDeadline)
		c.waitSSHD(k)
		c.mustSSH(k, mountMPI)
	}
	out := c.mustSSH("primary", "ssh", "-o", "BatchMode=yes", "10.200.0.2", "hostname")
	if !strings.Contains(out, "secondary") {
		t.Fatalf("OpenSSH from the primary to the secondary over win0 ran hostname as %q", out)
	}
	out = c.mustSSH("primary", mpirun("win0", winHosts, "hostname"))
	t.Logf("mpirun over win0:\n%s", out)
	if !strings.Contains(out, "primary") || !strings.Contains(out, "secondary") {
		t.Errorf("mpirun -n 2 over two kernels printed %q, want both kernels' names", out)
	}
	out = c.mustSSH("primary", mpirun("win0", winHosts, mpiBin+"/hello"))
	t.Logf("hello over win0:\n%s", out)
	for _, want := range []string{"rank 0 of 2 on primary", "rank 1 of 2 on secondary"} {
		if !strings.Contains(out, want) {
			t.Errorf("hello printed %q, want %q", out, want)
		}
	}

	before := c.status().Winnet.Kernels[0].Peers[0]
	out = c.mustSSH("primary", mpirun("win0", winHosts, mpiBin+"/pingpong 200 20"))
	t.Logf("ping-pong over win0:\n%s", out)
	pp, err := parsePingPong(out)
	if err != nil {
		t.Fatal(err)
	}
	after := c.status().Winnet.Kernels[0].Peers[0]
	// 20 round trips of 1 MiB: 20 MiB each way, and ranks' traffic only
	// on win0 (UCX_NET_DEVICES).
	if rx, tx := after.RxBytes-before.RxBytes, after.TxBytes-before.TxBytes; rx < 20<<20 || tx < 20<<20 {
		t.Errorf("the ping-pong moved %d bytes in and %d out of the primary over win0, want 20 MiB each way", rx, tx)
	}
	t.Logf("ping-pong over win0: %.1f µs one way (8 B), %.1f MB/s (1 MiB)", pp.latencyUS, pp.bandwidthMBs)

	out = c.mustSSH("primary", mpirun("win0", winHosts, mpiBin+"/allreduce 1024 100"))
	t.Logf("allreduce over win0:\n%s", out)
	if !strings.Contains(out, "allreduce: 2 ranks, 1024 doubles") || !strings.Contains(out, "sums right") {
		t.Errorf("allreduce printed %q, want 2 ranks and sums right", out)
	}

	// A hostile writer inside a kernel: root in the secondary maps its
	// window network function's BAR2 through sysfs and scribbles on its own
	// ring to the primary (images/mpi/winnet-scribble.c: bad descriptors, a
	// tail far out of range, a whole ring of random descriptors). The
	// primary drops and counts, runs on, and its traffic resumes: the
	// iperf3 below runs after it.
	drops := c.status().Winnet.Kernels[0].Peers[0].RxDrops
	out = c.mustSSH("secondary", mpiBin+"/winnet-scribble 1 0")
	t.Logf("winnet-scribble in the secondary:\n%s", out)
	c.waitConsole("primary", "bad descriptor", time.Minute)
	c.waitConsole("primary", "ring index out of range", time.Minute)
	// The Debian image has no ping: OpenSSH over win0 shows traffic back.
	if out = c.mustSSH("primary", "ssh", "-o", "BatchMode=yes", "10.200.0.2", "hostname"); !strings.Contains(out, "secondary") {
		t.Errorf("after the garbage, OpenSSH from the primary to the secondary over win0 ran hostname as %q", out)
	}
	st1 := c.status()
	if k := st1.Kernel("primary"); k.State != supervisor.StateRunning {
		t.Errorf("primary is %s after the secondary's garbage", k.State)
	}
	if p := st1.Winnet.Kernels[0].Peers[0]; p.RxDrops < drops+4 {
		t.Errorf("primary's drops from the secondary after its garbage: %d (before: %d), want the bad descriptors and index counted", p.RxDrops, drops)
	} else {
		t.Logf("primary's drops from the secondary: %d before the garbage, %d after", drops, p.RxDrops)
	}

	// 1 GiB over win0 (iperf3) takes no VM exit to popvmm beyond what the
	// kernels take idle, and no doorbell through popvmm.
	c.mustSSH("secondary", "iperf3 -s -D")
	st0, start := c.status(), time.Now()
	c.mustSSH("primary", "sleep 10")
	idleRate := float64(exitsBetween(st0, c.status())) / time.Since(start).Seconds()
	st0, start = c.status(), time.Now()
	out = c.mustSSH("primary", "iperf3 -c 10.200.0.2 -n 1G")
	t.Logf("iperf3 over win0:\n%s", out)
	checkWinnetExits(t, idleRate, st0, c.status(), time.Since(start))
	c.must("down", "-c", c.config)
	checkGone(t, c, st)
}
