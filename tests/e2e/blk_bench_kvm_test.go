package e2e

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vnet"
)

// benchDiskMB is the size of the disk fio reads.
const benchDiskMB = 256

// BenchmarkKVMBlkVsQEMU measures popvmm's virtio-blk against QEMU's with
// the same light kernel booting the same Debian image (make rootfs) and
// the same data disk: the time from start to an ssh login, sequential
// 1 MiB reads (MB/s) and 4 KiB random reads (IOPS), each by fio inside
// the guest with O_DIRECT (libaio, queue depth 16). QEMU runs with
// -enable-kvm, -cpu host, its virtio-blk on the same raw files, on a tap
// of the cluster's bridge. Run it in the lab:
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
	if err := os.WriteFile(c.config, []byte(cfg), 0o644); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
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
		stop := startQEMUDisks(b, c, st, k, img, rootfs, data)
		defer stop()
		waitLogin(b, st, k)
		b.ReportMetric(time.Since(start).Seconds(), "boot-to-ssh-s")
		measureBlk(b, st, k)
	})
}

// startQEMUDisks boots kernel k under QEMU -enable-kvm with the root image
// and the data disk on virtio-blk (read-only, raw) and its NIC on a tap of
// the cluster's bridge, booted as popvmm boots it (its overlay, command
// line).
func startQEMUDisks(b *testing.B, c *benchCluster, st *supervisor.Status, k *supervisor.KernelStatus, img, rootfs, data string) func() {
	b.Helper()
	host := netip.MustParseAddr(st.HostIP)
	sub := netip.MustParsePrefix(st.Subnet)
	br, err := vnet.BridgeConfig{Name: st.Bridge, Addrs: []netip.Prefix{netip.PrefixFrom(host, sub.Bits())},
		Owner: supervisor.BridgeOwner(st.Cluster, st.RunDir)}.Ensure()
	if err != nil {
		b.Fatal(err)
	}
	tap, err := vnet.OpenTap("pvq-blk", br)
	if err != nil {
		b.Fatal(err)
	}
	base, err := os.ReadFile(filepath.Join(img, "initramfs.cpio"))
	if err != nil {
		b.Fatal(err)
	}
	overlay, err := os.ReadFile(filepath.Join(st.RunDir, k.Name+".overlay.cpio"))
	if err != nil {
		b.Fatal(err)
	}
	initrd := filepath.Join(b.TempDir(), "initrd.cpio")
	if err := os.WriteFile(initrd, append(base, overlay...), 0o600); err != nil {
		b.Fatal(err)
	}
	log := filepath.Join(c.runDir, k.Name+".console.log")
	mask := net.IP(net.CIDRMask(sub.Bits(), 32)).String()
	cmdline := fmt.Sprintf("console=ttyS0 ip=%s::%s:%s:%s:eth0:off popvmm.name=%s popvmm.root=/dev/vda", k.IP, host, mask, k.Name, k.Name)
	cmd := exec.Command("taskset", "-c", "1", "qemu-system-x86_64", "-enable-kvm", "-cpu", "host", "-M", "pc", "-smp", "1", "-m", "512M",
		"-nodefaults", "-no-user-config", "-nographic", "-serial", "file:"+log,
		"-kernel", filepath.Join(img, "bzImage"), "-initrd", initrd, "-append", cmdline,
		"-drive", "file="+rootfs+",if=none,id=root,format=raw,readonly=on,cache=none,aio=native",
		"-device", "virtio-blk-pci,drive=root,disable-legacy=on",
		"-drive", "file="+data+",if=none,id=data,format=raw,readonly=on,cache=none,aio=native",
		"-device", "virtio-blk-pci,drive=data,disable-legacy=on",
		"-netdev", "tap,id=n0,fd=3,vhost=on",
		"-device", "virtio-net-pci,netdev=n0,disable-legacy=on,mac="+k.MAC)
	cmd.ExtraFiles = []*os.File{tap.File}
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		tap.Close()
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cmd.Process.Kill()
			<-done
			tap.Close()
		}
	}
	b.Cleanup(func() {
		if b.Failed() {
			b.Logf("QEMU's output:\n%s", out)
		}
	})
	return stop
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
