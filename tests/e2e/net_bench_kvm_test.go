package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vnet"
)

// BenchmarkKVMNetVsQEMU measures the host↔kernel path through popvmm's
// virtio-net against QEMU's, with the same light kernel and initramfs on
// the same bridge: ICMP round-trip time host→kernel, and TCP throughput
// both ways (the guest's busybox wget and httpd against a host server and
// client). QEMU runs with -enable-kvm on a tap popvmm's own vnet.OpenTap
// makes on the cluster's bridge, once with its userspace virtio-net backend
// (vhost=off, popvmm's model: a host thread moves the frames) and once with
// vhost-net (the kernel moves them). Run it in the lab:
//
//	go build -o bin/popvmm ./cmd/popvmm && go test -c -o bin/e2e.test ./tests/e2e &&
//	bin/popvmm lab run -- sh -c 'cd tests/e2e && ../../bin/e2e.test -test.run ^$ -test.bench KVMNet -test.benchtime 1x -test.v'
func BenchmarkKVMNetVsQEMU(b *testing.B) {
	testenv.RequireRoot(b)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testenv.Require(b, fmt.Errorf("qemu-system-x86_64 not installed (make deps): %w", err))
	}
	c := newBenchCluster(b)
	st := c.status(b)
	host := netip.MustParseAddr(st.HostIP)

	c.waitConsole(b, "primary", "dropbear listening", bootDeadline)
	b.Run("popvmm", func(b *testing.B) {
		measure(b, c, st, st.Kernel("primary"), host)
		if m := c.status(b).Kernel("primary").Machine; m != nil {
			b.Logf("popvmm's card after the run: %v", m.Devs["net0"])
		}
	})
	for _, vhost := range []string{"off", "on"} {
		b.Run("qemu-vhost="+vhost, func(b *testing.B) {
			k := st.Kernel("qemu")
			stop := c.startQEMU(b, st, k, vhost)
			defer stop()
			measure(b, c, st, k, host)
		})
	}
}

// benchCluster is a cluster of one popvmm kernel and one kernel that
// popvmm defines but QEMU runs (its IP, MAC, overlay and host key are
// popvmm's).
type benchCluster struct {
	bin, config, runDir, root string
}

func newBenchCluster(b *testing.B) *benchCluster {
	b.Helper()
	testenv.RequireKVM(b)
	root, _ := filepath.Abs(repoRoot)
	c := &benchCluster{bin: testenv.PopvmmBin(root), root: root}
	var problem error
	if _, err := os.Stat(c.bin); err != nil {
		problem = fmt.Errorf("bin/popvmm not built (make build): %w", err)
	}
	img := filepath.Join(root, "images", "out", "light")
	for _, f := range []string{"bzImage", "initramfs.cpio"} {
		if _, err := os.Stat(filepath.Join(img, f)); err != nil && problem == nil {
			problem = fmt.Errorf("light image not built (make images): %w", err)
		}
	}
	testenv.RequireImages(b, problem)
	dir := b.TempDir()
	c.runDir, c.config = filepath.Join(dir, "run"), filepath.Join(dir, "cluster.toml")
	cfg := fmt.Sprintf(`[cluster]
name = "netbench"
run_dir = %q
[cluster.network]
subnet = "10.194.0.0/24"
[cluster.window]
size = "1M"
[[kernel]]
name = "primary"
flavour = "light"
cpus = "0"
memory = "256M"
kernel = %q
initrd = %q
[[kernel]]
name = "qemu"
flavour = "light"
cpus = "1"
memory = "256M"
boot = "manual"
kernel = %q
initrd = %q
`, c.runDir, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"), filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"))
	c.up(b, cfg)
	return c
}

// up writes cfg as the cluster's config and brings it up; the cleanup
// brings it down, printing the consoles and the supervisor's log first
// when the benchmark failed.
func (c *benchCluster) up(b *testing.B, cfg string) {
	b.Helper()
	if err := os.WriteFile(c.config, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	if out, err := c.popvmm("up", "-d", c.config); err != nil {
		b.Fatalf("up: %v\n%s", err, out)
	}
	b.Cleanup(func() {
		if b.Failed() {
			for _, f := range []string{"primary.console.log", "qemu.console.log", supervisor.LogName} {
				data, _ := os.ReadFile(filepath.Join(c.runDir, f))
				b.Logf("==== %s:\n%s", f, data)
			}
		}
		c.popvmm("down", "-c", c.config)
	})
}

// down brings the cluster down now (the cleanup up registered then finds
// nothing to do).
func (c *benchCluster) down(b *testing.B) {
	b.Helper()
	if out, err := c.popvmm("down", "-c", c.config); err != nil {
		b.Fatalf("down: %v\n%s", err, out)
	}
}

func (c *benchCluster) popvmm(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, c.bin, args...).CombinedOutput()
	return string(out), err
}

func (c *benchCluster) status(b *testing.B) *supervisor.Status {
	b.Helper()
	out, err := c.popvmm("status", "--json", "-c", c.config)
	if err != nil {
		b.Fatalf("status: %v\n%s", err, out)
	}
	var st supervisor.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		b.Fatal(err)
	}
	return &st
}

func (c *benchCluster) waitConsole(b *testing.B, kernel, want string, d time.Duration) {
	b.Helper()
	path := filepath.Join(c.runDir, kernel+".console.log")
	if err := waitUntil(d, func() bool {
		data, _ := os.ReadFile(path)
		return strings.Contains(string(data), want)
	}); err != nil {
		b.Fatalf("%s's console did not show %q within %s", kernel, want, d)
	}
}

// startQEMU boots kernel k under QEMU with -enable-kvm, its NIC a tap on
// the cluster's bridge, and waits for its ssh server.
func (c *benchCluster) startQEMU(b *testing.B, st *supervisor.Status, k *supervisor.KernelStatus, vhost string) func() {
	b.Helper()
	q := c.launchQEMU(b, st, k, "pvq-bench", "256M", "", "vhost="+vhost)
	log := filepath.Join(c.runDir, k.Name+".console.log")
	if err := waitUntil(bootDeadline, func() bool {
		data, _ := os.ReadFile(log)
		select {
		case <-q.done:
			return true
		default:
		}
		return strings.Contains(string(data), "dropbear listening")
	}); err != nil {
		q.stop()
		b.Fatalf("QEMU guest did not start its ssh server within %v", bootDeadline)
	}
	select {
	case err := <-q.done:
		q.done <- err
		q.stop()
		b.Fatalf("QEMU exited: %v\n%s", err, q.out)
	default:
	}
	return func() { q.stop(); os.Remove(log) }
}

// qemuGuest is a QEMU running one of the cluster's kernels.
type qemuGuest struct {
	done chan error // Wait's result, once
	out  *strings.Builder
	pid  int    // QEMU's process (taskset execs it)
	stop func() // kills QEMU and closes its tap; once
}

// launchQEMU starts kernel k under QEMU -enable-kvm -cpu host on core 1,
// as popvmm boots it (its image, base initramfs and overlay, command line
// plus cmdlineExtra, its console log), its virtio-net on a tap named tap
// on the cluster's bridge (netdevOpts added to the tap netdev), with args
// appended to QEMU's command line.
func (c *benchCluster) launchQEMU(b *testing.B, st *supervisor.Status, k *supervisor.KernelStatus, tap, memory, cmdlineExtra, netdevOpts string, args ...string) *qemuGuest {
	b.Helper()
	host := netip.MustParseAddr(st.HostIP)
	sub := netip.MustParsePrefix(st.Subnet)
	br, err := vnet.BridgeConfig{Name: st.Bridge, Addrs: []netip.Prefix{netip.PrefixFrom(host, sub.Bits())},
		Owner: supervisor.BridgeOwner(st.Cluster, st.RunDir)}.Ensure()
	if err != nil {
		b.Fatal(err)
	}
	t, err := vnet.OpenTap(tap, br)
	if err != nil {
		b.Fatal(err)
	}
	img := filepath.Join(c.root, "images", "out", "light")
	base, err := os.ReadFile(filepath.Join(img, "initramfs.cpio"))
	if err != nil {
		t.Close()
		b.Fatal(err)
	}
	overlay, err := os.ReadFile(filepath.Join(st.RunDir, k.Name+".overlay.cpio"))
	if err != nil {
		t.Close()
		b.Fatal(err)
	}
	initrd := filepath.Join(b.TempDir(), "initrd.cpio")
	if err := os.WriteFile(initrd, append(base, overlay...), 0o600); err != nil {
		t.Close()
		b.Fatal(err)
	}
	log := filepath.Join(c.runDir, k.Name+".console.log")
	mask := net.IP(net.CIDRMask(sub.Bits(), 32)).String()
	cmdline := fmt.Sprintf("console=ttyS0 ip=%s::%s:%s:%s:eth0:off popvmm.name=%s%s", k.IP, host, mask, k.Name, k.Name, cmdlineExtra)
	cmd := exec.Command("taskset", append([]string{"-c", "1", "qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-smp", "1", "-m", memory,
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "file:" + log,
		"-kernel", filepath.Join(img, "bzImage"), "-initrd", initrd, "-append", cmdline,
		"-netdev", "tap,id=n0,fd=3," + netdevOpts,
		"-device", "virtio-net-pci,netdev=n0,disable-legacy=on,mac=" + k.MAC}, args...)...)
	cmd.ExtraFiles = []*os.File{t.File}
	q := &qemuGuest{done: make(chan error, 1), out: &strings.Builder{}}
	cmd.Stdout, cmd.Stderr = q.out, q.out
	if err := cmd.Start(); err != nil {
		t.Close()
		b.Fatal(err)
	}
	q.pid = cmd.Process.Pid
	go func() { q.done <- cmd.Wait() }()
	var once sync.Once
	q.stop = func() {
		once.Do(func() {
			cmd.Process.Kill()
			<-q.done
			t.Close()
		})
	}
	b.Cleanup(q.stop)
	return q
}

// measure reports ping RTT and TCP throughput both ways for kernel k.
func measure(b *testing.B, c *benchCluster, st *supervisor.Status, k *supervisor.KernelStatus, host netip.Addr) {
	ip := netip.MustParseAddr(k.IP)
	if _, err := ping(ip, 2*time.Minute); err != nil { // ARP, warm-up
		b.Fatal(err)
	}
	const pings = 100
	var rtts []time.Duration
	for range pings {
		rtt, err := ping(ip, 10*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		rtts = append(rtts, rtt)
	}
	slices.Sort(rtts)
	b.ReportMetric(float64(rtts[len(rtts)/2].Microseconds()), "rtt-median-µs")
	b.ReportMetric(float64(rtts[len(rtts)*9/10].Microseconds()), "rtt-p90-µs")

	size := envCount("POPVMM_BENCH_NET_MB", 32) << 20
	sh := func(cmd string) string {
		args := append([]string{}, supervisor.SSHArgs(st, k, []string{cmd})...)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ssh", args...).CombinedOutput()
		if err != nil {
			b.Fatalf("ssh %s %s: %v\n%s", k.Name, cmd, err, out)
		}
		return string(out)
	}
	// kernel → host: the host fetches from the guest's httpd.
	sh(fmt.Sprintf("mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/big bs=1M count=%d 2>/dev/null && (httpd -p 8080 -h /tmp/www || true) && echo ok", size>>20))
	start := time.Now()
	resp, err := http.Get("http://" + k.IP + ":8080/big")
	if err != nil {
		b.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err != nil || n != int64(size) {
		b.Fatalf("fetched %d of %d bytes from the guest: %v", n, size, err)
	}
	b.ReportMetric(float64(size)/time.Since(start).Seconds()/1e6, "tcp-kernel→host-MB/s")
	sh("rm -f /tmp/www/big")

	// host → kernel: the guest's wget fetches from a host server; timed
	// from the first byte sent to the guest closing after the last.
	ln, err := net.Listen("tcp", net.JoinHostPort(host.String(), "0"))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	elapsed := make(chan time.Duration, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			elapsed <- 0
			return
		}
		defer conn.Close()
		r := bufio.NewReader(conn)
		for {
			line, err := r.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		start := time.Now()
		fmt.Fprintf(conn, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n", size)
		buf := make([]byte, 1<<20)
		for sent := 0; sent < size; sent += len(buf) {
			if _, err := conn.Write(buf); err != nil {
				elapsed <- 0
				return
			}
		}
		io.Copy(io.Discard, r) // until the guest closes
		elapsed <- time.Since(start)
	}()
	sh(fmt.Sprintf("wget -q -O /dev/null http://%s/x", ln.Addr()))
	d := <-elapsed
	if d == 0 {
		b.Fatal("host → kernel transfer failed")
	}
	b.ReportMetric(float64(size)/d.Seconds()/1e6, "tcp-host→kernel-MB/s")
	b.Logf("%s: rtt median %v p90 %v min %v", k.Name, rtts[len(rtts)/2], rtts[len(rtts)*9/10], rtts[0])
}

// envCount is the positive integer in environment variable name, or def
// when it is unset or not one.
func envCount(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil && n > 0 {
		return n
	}
	return def
}

// firstMissing names the first of files that does not exist and the make
// targets that build them (nil: all exist), for testenv.RequireImages.
func firstMissing(targets string, files ...string) error {
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%s missing (make %s): %w", f, targets, err)
		}
	}
	return nil
}

// cpuTimes is a process's CPU time in seconds (proc(5), /proc/PID/stat:
// utime, stime and guest_time of all its threads; guest time is within
// user time).
type cpuTimes struct{ user, system, guest float64 }

// processCPU reads process pid's cpuTimes.
func processCPU(pid int) (cpuTimes, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return cpuTimes{}, err
	}
	f := strings.Fields(string(data[strings.LastIndexByte(string(data), ')')+1:]))
	if len(f) < 41 {
		return cpuTimes{}, fmt.Errorf("/proc/%d/stat has %d fields after the name", pid, len(f))
	}
	tick := func(i int) float64 { n, _ := strconv.ParseFloat(f[i], 64); return n / 100 }
	return cpuTimes{user: tick(11), system: tick(12), guest: tick(40)}, nil
}
