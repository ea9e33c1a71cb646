package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
)

// BenchmarkKVMWinnetVsVirtio measures, between the same two kernels (a full
// one on core 0, a light one on core 1, both booted into the Debian image
// with the MPI programs' disk), the window network (win0) against
// virtio-net through the cluster's bridge (eth0): ping's round trip
// (median of 50), iperf3's TCP throughput for a transfer of
// POPVMM_BENCH_WINNET_MB (1024) MiB from the first kernel to the second,
// and the MPI ping-pong's 8-byte latency and 1 MiB bandwidth and the
// allreduce's time per call (mpirun -iface, UCX_NET_DEVICES), every
// sample and the win0/eth0 ratios logged. Around the iperf3 transfer it
// reads the host CPU time of the popvmm process (/proc/PID/stat: user and
// system time less the time its vCPU threads spent in the guests), given
// per GiB moved, and the VM exits to popvmm's userspace (status): over the
// window network the transfer must add none beyond what the kernels take
// idle (measured first, over 10 s), and no doorbell may reach popvmm, since
// its frames and doorbells never leave KVM. Run it in the lab:
//
//	make build rootfs mpi && go test -c -o bin/e2e.test ./tests/e2e &&
//	bin/popvmm lab run -- sh -c 'cd tests/e2e && ../../bin/e2e.test -test.run ^$ -test.bench KVMWinnet -test.benchtime 1x -test.v'
func BenchmarkKVMWinnetVsVirtio(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.RequireKVM(b)
	root, _ := filepath.Abs(repoRoot)
	c := &benchCluster{bin: testenv.PopvmmBin(root), root: root}
	rootfs, mpiImg := filepath.Join(root, "images", "out", debianImage), filepath.Join(root, "images", "out", mpiImage)
	testenv.RequireImages(b, firstMissing("build images rootfs mpi", c.bin, rootfs, mpiImg,
		filepath.Join(root, "images", "out", "full", "initramfs.cpio"), filepath.Join(root, "images", "out", "light", "initramfs.cpio")))
	mb := envCount("POPVMM_BENCH_WINNET_MB", 1024)

	dir := b.TempDir()
	c.runDir, c.config = filepath.Join(dir, "run"), filepath.Join(dir, "cluster.toml")
	cfg := fmt.Sprintf("[cluster]\nname = \"winbench\"\nrun_dir = %q\n[cluster.network]\nsubnet = \"10.192.0.0/24\"\n[cluster.window]\nsize = \"1M\"\n[cluster.winnet]\nenabled = true\n", c.runDir)
	for i, fl := range []string{"full", "light"} {
		img := filepath.Join(root, "images", "out", fl)
		cfg += fmt.Sprintf("[[kernel]]\nname = %q\nflavour = %q\ncpus = \"%d\"\nmemory = \"512M\"\nkernel = %q\ninitrd = %q\nroot = %q\n%s",
			[]string{"primary", "secondary"}[i], fl, i, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"), rootfs, mpiDisk(mpiImg))
	}
	c.up(b, cfg)
	b.Cleanup(func() {
		if b.Failed() {
			data, _ := os.ReadFile(filepath.Join(c.runDir, "secondary.console.log"))
			b.Logf("==== secondary.console.log:\n%s", data)
		}
	})
	st := c.status(b)
	p, s := st.Kernel("primary"), st.Kernel("secondary")
	for _, k := range []*supervisor.KernelStatus{p, s} {
		up := waitLogin(b, st, k)
		b.Logf("%s: ssh answered, the kernel up for %.1f s", k.Name, up.Seconds())
		if out, err := sshOut(st, k, mountMPI, time.Minute); err != nil {
			b.Fatalf("%s: %s: %v\n%s", k.Name, mountMPI, err, out)
		}
	}
	sh := func(k *supervisor.KernelStatus, cmd string) string {
		b.Helper()
		out, err := sshOut(st, k, cmd, 10*time.Minute)
		if err != nil {
			b.Fatalf("%s: %s: %v\n%s", k.Name, cmd, err, out)
		}
		return out
	}
	b.Cleanup(func() {
		if !b.Failed() {
			return
		}
		// Each kernel's view of its networks, over eth0 from the host.
		for _, k := range []*supervisor.KernelStatus{p, s} {
			out, err := sshOut(st, k, "ip -s link show win0; ip -s link show eth0; ps -ef | grep -E 'mpi|hydra|iperf|pingpong' | grep -v grep; dmesg | tail -20", time.Minute)
			b.Logf("==== %s's networks (%v):\n%s", k.Name, err, out)
		}
		if w := c.status(b).Winnet; w != nil {
			b.Logf("==== window network: %+v", w.Kernels)
		}
	})
	sh(s, "iperf3 -s -D")

	// The exits the kernels take with nothing sent between them (the
	// agents' messaging window, the ssh session's own), per second: what a
	// transfer adds beyond that is its own.
	before, t0 := c.status(b), time.Now()
	sh(p, "sleep 10")
	idle := exitsBetween(before, c.status(b))
	idleRate := float64(idle) / time.Since(t0).Seconds()
	b.Logf("idle: %d VM exits to popvmm in %.1f s (%.1f/s), both kernels", idle, time.Since(t0).Seconds(), idleRate)

	paths := []struct{ iface, from, to string }{
		{"win0", "10.200.0.1", "10.200.0.2"},
		{"eth0", p.IP, s.IP},
	}
	res := map[string]map[string]float64{}
	for _, path := range paths {
		m := map[string]float64{}
		res[path.iface] = m
		// OpenSSH to the secondary by this address first: mpirun's
		// launcher takes the same way, and a failure here says so plainly.
		sh(p, "ssh -o BatchMode=yes "+path.to+" true")

		out := sh(p, "/run/popvmm/busybox ping -c 50 -i 0.1 "+path.to)
		rtt, err := pingMedian(out)
		if err != nil {
			b.Fatal(err)
		}
		m["ping-rtt-µs"] = rtt

		out = sh(p, timeoutCmd(mpirun(path.iface, []string{path.from, path.to}, mpiBin+"/pingpong 1000 50"), 5*time.Minute))
		pp, err := parsePingPong(out)
		if err != nil {
			b.Fatal(err)
		}
		m["mpi-latency-8B-µs"], m["mpi-bandwidth-1MiB-MB/s"] = pp.latencyUS, pp.bandwidthMBs
		out = sh(p, timeoutCmd(mpirun(path.iface, []string{path.from, path.to}, mpiBin+"/allreduce 1024 100"), 5*time.Minute))
		if m["mpi-allreduce-1024-µs"], err = allreduceUS(out); err != nil {
			b.Fatal(err)
		}

		before := c.status(b)
		cpu0 := hostCPU(b, before)
		t0 := time.Now()
		out = sh(p, fmt.Sprintf("iperf3 -J -c %s -n %dM", path.to, mb))
		wall := time.Since(t0)
		cpu1 := hostCPU(b, c.status(b))
		after := c.status(b)
		var ip struct {
			End struct {
				SumReceived struct {
					Bytes float64 `json:"bytes"`
					BPS   float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal([]byte(out), &ip); err != nil || ip.End.SumReceived.Bytes < float64(mb)*(1<<20)*0.99 {
			b.Fatalf("iperf3 over %s: %v\n%s", path.iface, err, out)
		}
		m["iperf3-MB/s"] = ip.End.SumReceived.BPS / 8 / 1e6
		gib := ip.End.SumReceived.Bytes / (1 << 30)
		m["host-cpu-s/GiB"] = (cpu1.host - cpu0.host) / gib
		m["vcpu-guest-s/GiB"] = (cpu1.guest - cpu0.guest) / gib
		for _, k := range after.Kernels {
			b.Logf("%s, %d MiB by iperf3 in %.1f s: %s's exits to popvmm by reason %v", path.iface, mb, wall.Seconds(), k.Name, exitDelta(before.Kernel(k.Name), &k))
		}
		exits := exitsBetween(before, after)
		m["exits/GiB"] = float64(exits) / gib
		m["exits-beyond-idle/GiB"] = (float64(exits) - idleRate*wall.Seconds()) / gib
		if path.iface == "win0" {
			checkWinnetExits(b, idleRate, before, after, wall)
		}
		b.Logf("%s: ping %.0f µs, iperf3 %.1f MB/s, host CPU %.2f s/GiB (vCPUs in the guests %.2f s/GiB), %.0f exits/GiB, MPI 8 B %.1f µs, 1 MiB %.1f MB/s, allreduce %.0f µs",
			path.iface, m["ping-rtt-µs"], m["iperf3-MB/s"], m["host-cpu-s/GiB"], m["vcpu-guest-s/GiB"], m["exits/GiB"],
			m["mpi-latency-8B-µs"], m["mpi-bandwidth-1MiB-MB/s"], m["mpi-allreduce-1024-µs"])
	}
	if ms := c.status(b).Winnet; ms != nil {
		b.Logf("window network after the run: %+v", ms.Kernels)
	}
	for _, path := range paths {
		b.Run(path.iface, func(b *testing.B) {
			for unit, v := range res[path.iface] {
				b.ReportMetric(v, unit)
			}
		})
	}
	w, e := res["win0"], res["eth0"]
	b.Logf("win0/eth0: ping round trip %.2fx, iperf3 throughput %.2fx, host CPU per GiB %.2fx, MPI 8-byte latency %.2fx, MPI 1 MiB bandwidth %.2fx, allreduce time %.2fx",
		w["ping-rtt-µs"]/e["ping-rtt-µs"], w["iperf3-MB/s"]/e["iperf3-MB/s"], w["host-cpu-s/GiB"]/e["host-cpu-s/GiB"],
		w["mpi-latency-8B-µs"]/e["mpi-latency-8B-µs"], w["mpi-bandwidth-1MiB-MB/s"]/e["mpi-bandwidth-1MiB-MB/s"],
		w["mpi-allreduce-1024-µs"]/e["mpi-allreduce-1024-µs"])
	c.down(b)
}

// timeoutCmd bounds cmd to d inside the kernel (GNU timeout), so that a
// job that hangs fails with the kernel still answering.
func timeoutCmd(cmd string, d time.Duration) string {
	return fmt.Sprintf("timeout %d %s", int(d.Seconds()), cmd)
}

var pingTime = regexp.MustCompile(`time=([0-9.]+) ms`)

// pingMedian is the median round trip, in µs, of ping's replies in out.
func pingMedian(out string) (float64, error) {
	var rtts []float64
	for _, m := range pingTime.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, v*1000)
	}
	if len(rtts) < 10 {
		return 0, fmt.Errorf("ping got %d replies:\n%s", len(rtts), out)
	}
	slices.Sort(rtts)
	return median(rtts), nil
}

// popvmmCPU is a popvmm process's CPU time in seconds: host, what it
// costs the host (its threads' user and system time, less the time its
// vCPU threads spent running the guests), and guest, that time.
type popvmmCPU struct{ host, guest float64 }

// hostCPU reads the CPU time of the supervisor st names (processCPU).
func hostCPU(b *testing.B, st *supervisor.Status) popvmmCPU {
	b.Helper()
	t, err := processCPU(st.PID)
	if err != nil {
		b.Fatal(err)
	}
	return popvmmCPU{host: t.user + t.system - t.guest, guest: t.guest}
}
