package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
// the same data disk: the time from start to an ssh login, sequential
// 1 MiB reads (MB/s) and 4 KiB random reads (IOPS), each by fio inside
// the guest with O_DIRECT (libaio, queue depth 16). QEMU runs with
// -enable-kvm, -cpu host, its virtio-blk on the same raw files, on a tap
// of the cluster's bridge, with the host I/O path popvmm has: the host's
// page cache and a pool of I/O threads (cache=writeback, aio=threads;
// cache=none would need O_DIRECT, which the lab's tmpfs refuses, and
// would compare two different host paths). Run it in the lab:
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
	var problem error
	for _, f := range []string{c.bin, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"), rootfs} {
		if _, err := os.Stat(f); err != nil && problem == nil {
			problem = fmt.Errorf("%s missing (make build images rootfs): %w", f, err)
		}
	}
	testenv.RequireImages(b, problem)
	dir := b.TempDir()
	data := filepath.Join(dir, "bench.img")
	buf := make([]byte, benchDiskMB<<20)
	rand.Read(buf)
	if err := os.WriteFile(data, buf, 0o600); err != nil {
		b.Fatal(err)
	}
	c.runDir, c.config = filepath.Join(dir, "run"), filepath.Join(dir, "cluster.toml")
	kernel := func(name, boot string) string {
		return fmt.Sprintf("[[kernel]]\nname = %q\nflavour = \"light\"\ncpus = %q\nmemory = \"512M\"\nboot = %q\nkernel = %q\ninitrd = %q\nroot = %q\n[[kernel.disk]]\npath = %q\nread_only = true\n",
			name, map[string]string{"primary": "0", "qemu": "1"}[name], boot, filepath.Join(img, "bzImage"), filepath.Join(img, "initramfs.cpio"), rootfs, data)
	}
	cfg := fmt.Sprintf("[cluster]\nname = \"blkbench\"\nrun_dir = %q\n[cluster.network]\nsubnet = \"10.193.0.0/24\"\n[cluster.window]\nsize = \"1M\"\n", c.runDir) +
		kernel("primary", "up") + kernel("qemu", "manual")
	start := time.Now()
	c.up(b, cfg)
	st := c.status(b)
	b.Run("popvmm", func(b *testing.B) {
		k := st.Kernel("primary")
		waitLogin(b, st, k)
		b.ReportMetric(time.Since(start).Seconds(), "boot-to-ssh-s")
		measureBlk(b, st, k)
		if m := c.status(b).Kernel("primary").Machine; m != nil {
			b.Logf("popvmm's disks after the run: vda %v; vdb %v", m.Devs["vda"], m.Devs["vdb"])
		}
	})
	b.Run("qemu", func(b *testing.B) {
		k := st.Kernel("qemu")
		start := time.Now()
		q := c.launchQEMU(b, st, k, "pvq-blk", "512M", " popvmm.root=/dev/vda", "vhost=on",
			"-drive", "file="+rootfs+",if=none,id=root,format=raw,readonly=on,cache=writeback,aio=threads",
			"-device", "virtio-blk-pci,drive=root,disable-legacy=on",
			"-drive", "file="+data+",if=none,id=data,format=raw,readonly=on,cache=writeback,aio=threads",
			"-device", "virtio-blk-pci,drive=data,disable-legacy=on")
		defer q.stop()
		b.Cleanup(func() {
			if b.Failed() {
				b.Logf("QEMU's output:\n%s", q.out)
			}
		})
		waitLogin(b, st, k)
		b.ReportMetric(time.Since(start).Seconds(), "boot-to-ssh-s")
		measureBlk(b, st, k)
	})
}

// waitLogin waits until kernel k answers an ssh login.
func waitLogin(b *testing.B, st *supervisor.Status, k *supervisor.KernelStatus) {
	b.Helper()
	if err := waitUntil(bootDeadline, func() bool {
		_, err := sshOut(st, k, "true", 30*time.Second)
		return err == nil
	}); err != nil {
		b.Fatalf("%s did not answer ssh within %v", k.Name, bootDeadline)
	}
}

func sshOut(st *supervisor.Status, k *supervisor.KernelStatus, cmd string, d time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ssh", supervisor.SSHArgs(st, k, []string{cmd})...).CombinedOutput()
	return string(out), err
}

// measureBlk runs fio on the data disk (/dev/vdb) of kernel k and
// reports sequential read MB/s and random read IOPS.
func measureBlk(b *testing.B, st *supervisor.Status, k *supervisor.KernelStatus) {
	b.Helper()
	for _, job := range []struct {
		args, unit string
		value      func(r fioRead) float64
	}{
		{"--rw=read --bs=1M --size=" + fmt.Sprint(benchDiskMB) + "M", "seq-read-1M-MB/s", func(r fioRead) float64 { return float64(r.BwBytes) / 1e6 }},
		{"--rw=randread --bs=4k --time_based --runtime=15", "rand-read-4k-IOPS", func(r fioRead) float64 { return r.IOPS }},
	} {
		cmd := "fio --name=bench --filename=/dev/vdb --direct=1 --ioengine=libaio --iodepth=16 --output-format=json " + job.args
		out, err := sshOut(st, k, cmd, 10*time.Minute)
		if err != nil {
			b.Fatalf("%s: %s: %v\n%s", k.Name, cmd, err, out)
		}
		var res struct {
			Jobs []struct {
				Read fioRead `json:"read"`
			} `json:"jobs"`
		}
		i := strings.Index(out, "{")
		if i < 0 {
			b.Fatalf("%s: fio printed no JSON:\n%s", k.Name, out)
		}
		if err := json.Unmarshal([]byte(out[i:]), &res); err != nil || len(res.Jobs) != 1 {
			b.Fatalf("%s: fio output: %v\n%s", k.Name, err, out)
		}
		b.ReportMetric(job.value(res.Jobs[0].Read), job.unit)
	}
}

// fioRead is the part of fio's JSON job report this benchmark reads.
type fioRead struct {
	BwBytes int64   `json:"bw_bytes"`
	IOPS    float64 `json:"iops"`
}
