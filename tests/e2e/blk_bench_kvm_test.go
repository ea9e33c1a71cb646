package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
)

// benchDiskMB is the size of the disk fio reads.
const benchDiskMB = 256

// BenchmarkKVMBlkVsQEMU measures popvmm's virtio-blk against QEMU's with
// the same light kernel booting the same Debian image (make rootfs) and
// the same data disk: the time from start (`popvmm up`, QEMU's launch)
// to an ssh login, sequential 1 MiB reads (MB/s: one first pass over the
// disk, then 15 s of reads from its start over and over, the steady state)
// and 4 KiB random reads (IOPS, 15 s), each by fio inside the guest with
// O_DIRECT (libaio, queue depth 16). Beside each number it logs where the
// time went: the kernel's uptime at the login and its boot milestones, and
// per request the mean size, the guest's busy share, the interrupts taken
// and the VMM's host CPU time. QEMU runs with -enable-kvm, -cpu host, its virtio-blk on the same
// raw files, on a tap of the cluster's bridge, with the host I/O path
// popvmm has: the host's page cache and a pool of I/O threads
// (cache=writeback, aio=threads; cache=none would need O_DIRECT, which
// the lab's tmpfs refuses, and would compare two different host paths).
// Each of POPVMM_BENCH_ROUNDS rounds (default 3) brings the cluster up,
// which boots popvmm's guest on core 0, measures it, then QEMU's guest on
// core 1 (popvmm's, idle, still up: a kernel stops only with its
// cluster), and brings the cluster down; POPVMM_BENCH_BOOT_ROUNDS more
// rounds (default 0) measure the boot alone, a minute each rather than
// five. Each metric is the median of its rounds, every sample is logged.
// Run it in the lab:
//
//	make build rootfs && go test -c -o bin/e2e.test ./tests/e2e &&
//	bin/popvmm lab run -- sh -c 'cd tests/e2e && ../../bin/e2e.test -test.run ^$ -test.bench KVMBlk -test.benchtime 1x -test.v'
func BenchmarkKVMBlkVsQEMU(b *testing.B) {
	testenv.RequireRoot(b)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testenv.Require(b, fmt.Errorf("qemu-system-x86_64 not installed (make deps): %w", err))
	}
	testenv.RequireKVM(b)
	root, _ := filepath.Abs(repoRoot)
	img := filepath.Join(root, "images", "out", "light")
	rootfs := filepath.Join(root, "images", "out", "debian.ext4")
	c := &benchCluster{bin: testenv.PopvmmBin(root), root: root}
	testenv.RequireImages(b, firstMissing("build images rootfs", c.bin, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"), rootfs))
	rounds := envCount("POPVMM_BENCH_ROUNDS", 3)
	dir := b.TempDir()
	data := filepath.Join(dir, "bench.img")
	buf := make([]byte, benchDiskMB<<20)
	rand.Read(buf)
	if err := os.WriteFile(data, buf, 0o600); err != nil {
		b.Fatal(err)
	}
	c.runDir, c.config = filepath.Join(dir, "run"), filepath.Join(dir, "cluster.toml")
	kernel := func(name string) string {
		boot := map[string]string{"primary": "up", "qemu": "manual"}[name]
		return fmt.Sprintf("[[kernel]]\nname = %q\nflavour = \"light\"\ncpus = %q\nmemory = \"512M\"\nboot = %q\nkernel = %q\ninitrd = %q\nroot = %q\n[[kernel.disk]]\npath = %q\nread_only = true\n",
			name, map[string]string{"primary": "0", "qemu": "1"}[name], boot, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"), rootfs, data)
	}
	cfg := fmt.Sprintf("[cluster]\nname = \"blkbench\"\nrun_dir = %q\n[cluster.network]\nsubnet = \"10.193.0.0/24\"\n[cluster.window]\nsize = \"1M\"\n", c.runDir) +
		kernel("primary") + kernel("qemu")
	samples := map[string]map[string][]float64{"popvmm": {}, "qemu": {}}
	bootRounds := envCount("POPVMM_BENCH_BOOT_ROUNDS", 0)
	run := func(vmm string, st *supervisor.Status, start time.Time, io bool) {
		var k *supervisor.KernelStatus
		pid := st.PID
		switch vmm {
		case "popvmm":
			k = st.Kernel("primary")
		case "qemu":
			k = st.Kernel("qemu")
			q := c.launchQEMU(b, st, k, "pvq-blk", "512M", " popvmm.root=/dev/vda", "vhost=on",
				"-drive", "file="+rootfs+",if=none,id=root,format=raw,readonly=on,cache=writeback,aio=threads",
				"-device", "virtio-blk-pci,drive=root,disable-legacy=on",
				"-drive", "file="+data+",if=none,id=data,format=raw,readonly=on,cache=writeback,aio=threads",
				"-device", "virtio-blk-pci,drive=data,disable-legacy=on")
			pid = q.pid
			defer q.stop()
			defer func() {
				if b.Failed() {
					b.Logf("QEMU's output:\n%s", q.out)
				}
			}()
		}
		up := waitLogin(b, st, k)
		m := map[string]float64{"boot-to-ssh-s": time.Since(start).Seconds()}
		b.Logf("%s: ssh answered %.2f s after start, the kernel up for %.2f s of them", vmm, m["boot-to-ssh-s"], up.Seconds())
		if !io {
			samples[vmm]["boot-to-ssh-s"] = append(samples[vmm]["boot-to-ssh-s"], m["boot-to-ssh-s"])
			return
		}
		if out, err := sshOut(st, k, `dmesg | grep -E "Kernel command line|console \[ttyS0\] enabled|Switched to clocksource kvm-clock|Run /init|EXT4-fs \(vda\)|eth0: link becomes ready"`, time.Minute); err == nil {
			b.Logf("%s: the kernel's milestones:\n%s", vmm, out)
		}
		measureBlk(b, st, k, pid, m)
		if vmm == "popvmm" {
			if ms := c.status(b).Kernel("primary").Machine; ms != nil {
				b.Logf("popvmm's disks after the round: vda %v; vdb %v", ms.Devs["vda"], ms.Devs["vdb"])
			}
		}
		for unit, v := range m {
			samples[vmm][unit] = append(samples[vmm][unit], v)
		}
		b.Logf("%s: %.2f s boot to ssh, %.1f MB/s sequential 1 MiB reads (%.1f in the first pass), %.0f IOPS random 4 KiB reads",
			vmm, m["boot-to-ssh-s"], m["seq-read-1M-MB/s"], m["seq-read-1M-first-pass-MB/s"], m["rand-read-4k-IOPS"])
	}
	for r := range rounds + bootRounds {
		b.Logf("round %d of %d (%s)", r+1, rounds+bootRounds, map[bool]string{true: "boot and I/O", false: "boot only"}[r < rounds])
		start := time.Now()
		c.up(b, cfg)
		b.Logf("popvmm up -d returned after %.2f s", time.Since(start).Seconds())
		st := c.status(b)
		run("popvmm", st, start, r < rounds)
		run("qemu", st, time.Now(), r < rounds)
		c.down(b)
	}
	for _, vmm := range []string{"popvmm", "qemu"} {
		b.Run(vmm, func(b *testing.B) {
			for unit, vs := range samples[vmm] {
				b.ReportMetric(median(vs), unit)
			}
		})
	}
	p, q := samples["popvmm"], samples["qemu"]
	b.Logf("popvmm/QEMU (medians of %d rounds): boot to ssh %.2fx the time, sequential reads %.2fx (first pass %.2fx), random reads %.2fx",
		rounds, median(p["boot-to-ssh-s"])/median(q["boot-to-ssh-s"]),
		median(p["seq-read-1M-MB/s"])/median(q["seq-read-1M-MB/s"]),
		median(p["seq-read-1M-first-pass-MB/s"])/median(q["seq-read-1M-first-pass-MB/s"]),
		median(p["rand-read-4k-IOPS"])/median(q["rand-read-4k-IOPS"]))
}

// median is the middle of vs (the mean of the middle two for an even
// count; 0 for none).
func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// waitLogin waits until kernel k answers an ssh login and returns how
// long its kernel had been running then (/proc/uptime). It reads the
// kernel's console log (a file, cheap to poll) until the initramfs says
// dropbear listens, and only then tries ssh: an ssh client started every
// quarter second while the kernel boots would take the lab's CPUs from
// the boot it measures.
func waitLogin(b *testing.B, st *supervisor.Status, k *supervisor.KernelStatus) time.Duration {
	b.Helper()
	console := filepath.Join(st.RunDir, k.Name+".console.log")
	if err := waitUntil(bootDeadline, func() bool {
		data, _ := os.ReadFile(console)
		return strings.Contains(string(data), "dropbear listening on port 22")
	}); err != nil {
		data, _ := os.ReadFile(console)
		b.Fatalf("%s: no ssh server within %v; console:\n%s", k.Name, bootDeadline, data)
	}
	var up float64
	if err := waitUntil(bootDeadline, func() bool {
		out, err := sshOut(st, k, "cat /proc/uptime", 30*time.Second)
		if err != nil {
			return false
		}
		_, err = fmt.Sscan(out, &up)
		return err == nil
	}); err != nil {
		b.Fatalf("%s did not answer ssh within %v", k.Name, bootDeadline)
	}
	return time.Duration(up * float64(time.Second))
}

func sshOut(st *supervisor.Status, k *supervisor.KernelStatus, cmd string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", supervisor.SSHArgs(st, k, []string{cmd})...).CombinedOutput()
	return string(out), err
}

// measureBlk runs fio on the data disk (/dev/vdb) of kernel k and puts
// sequential read MB/s and random read IOPS into m. Around each fio run it
// reads the guest's CPU time, the disk's request count and the virtio
// interrupts it took, and the host CPU time of the VMM process hostPID,
// and logs what each request cost: the mean request size, the guest's
// busy share, interrupts and host CPU per request.
func measureBlk(b *testing.B, st *supervisor.Status, k *supervisor.KernelStatus, hostPID int, m map[string]float64) {
	b.Helper()
	const probe = "head -1 /proc/stat; cat /sys/block/vdb/stat; awk '/virtio/ {for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i} END {print n + 0}' /proc/interrupts"
	for _, job := range []struct {
		args, unit string
		value      func(r fioRead) float64
	}{
		{"--rw=read --bs=1M --size=" + fmt.Sprint(benchDiskMB) + "M", "seq-read-1M-first-pass-MB/s", func(r fioRead) float64 { return float64(r.BwBytes) / 1e6 }},
		{"--rw=read --bs=1M --time_based --runtime=15", "seq-read-1M-MB/s", func(r fioRead) float64 { return float64(r.BwBytes) / 1e6 }},
		{"--rw=randread --bs=4k --time_based --runtime=15", "rand-read-4k-IOPS", func(r fioRead) float64 { return r.IOPS }},
	} {
		fio := "fio --name=bench --filename=/dev/vdb --direct=1 --ioengine=libaio --iodepth=16 --output-format=json " + job.args
		cmd := probe + "; echo FIO; " + fio + "; echo END; " + probe
		host0, _ := processCPU(hostPID)
		out, err := sshOut(st, k, cmd, 10*time.Minute)
		host1, _ := processCPU(hostPID)
		if err != nil {
			b.Fatalf("%s: %s: %v\n%s", k.Name, cmd, err, out)
		}
		i, j := strings.Index(out, "FIO\n"), strings.Index(out, "\nEND\n")
		if i < 0 || j < i {
			b.Fatalf("%s: fio printed no report:\n%s", k.Name, out)
		}
		var res struct {
			Jobs []struct {
				Read fioRead `json:"read"`
			} `json:"jobs"`
		}
		if err := json.Unmarshal([]byte(out[i+4:j]), &res); err != nil || len(res.Jobs) != 1 {
			b.Fatalf("%s: fio output: %v\n%s", k.Name, err, out)
		}
		m[job.unit] = job.value(res.Jobs[0].Read)
		before, after := parseProbe(out[:i]), parseProbe(out[j+5:])
		if before == nil || after == nil {
			b.Logf("%s: no guest counters around fio:\n%s", k.Name, out)
			continue
		}
		reqs := after[1] - before[1]
		if reqs <= 0 {
			continue
		}
		busy, all := after[0]-before[0], after[3]-before[3]
		b.Logf("%s %s: %d requests of %.0f KiB on average, guest busy %.0f%%, %.2f interrupts and %.2f ms of VMM host CPU per request",
			k.Name, job.unit, reqs, float64(after[2]-before[2])/2/float64(reqs), 100*float64(busy)/float64(max(all, 1)),
			float64(after[4]-before[4])/float64(reqs), (host1.user+host1.system-host0.user-host0.system)/float64(reqs)*1000)
	}
}

// parseProbe reads the probe's output: the guest's busy and total CPU
// ticks (/proc/stat), vdb's reads completed and sectors read
// (Documentation/block/stat.rst) and the virtio interrupt count, as
// {busy, reads, sectors, total, interrupts}; nil if it cannot.
func parseProbe(s string) []int64 {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) < 3 {
		return nil
	}
	lines = lines[len(lines)-3:]
	cpu, disk := strings.Fields(lines[0]), strings.Fields(lines[1])
	if len(cpu) < 5 || cpu[0] != "cpu" || len(disk) < 3 {
		return nil
	}
	num := func(f string) int64 { n, _ := strconv.ParseInt(f, 10, 64); return n }
	var total, idle int64
	for i, f := range cpu[1:] {
		total += num(f)
		if i == 3 || i == 4 { // idle, iowait
			idle += num(f)
		}
	}
	return []int64{total - idle, num(disk[0]), num(disk[2]), total, num(strings.TrimSpace(lines[2]))}
}

// fioRead is the part of fio's JSON job report this benchmark reads.
type fioRead struct {
	BwBytes int64   `json:"bw_bytes"`
	IOPS    float64 `json:"iops"`
}
