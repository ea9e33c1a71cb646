package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/internal/testenv"
)

// The Debian root image (make rootfs, images/build-rootfs.sh) booted by the
// initramfs's /init: the image read-only under an overlay whose upper layer
// is RAM or a disk of the kernel's own (docs/storage.md).
//
// TestRootImageUnderQEMU checks the guest half alone, under QEMU's own
// virtio-blk (TCG: no /dev/kvm needed); TestKVMRootImage checks the whole
// under popvmm, two kernels sharing the image.

// debianImage is make rootfs's output.
const debianImage = "debian.ext4"

// requireRootImage returns the Debian image's path, skipping (or failing,
// with POPVMM_REQUIRE_IMAGES=1) when it has not been built.
func requireRootImage(t *testing.T) string {
	t.Helper()
	img, err := filepath.Abs(filepath.Join(imagesDir, debianImage))
	if err != nil {
		t.Fatal(err)
	}
	var problem error
	if _, err := os.Stat(img); err != nil {
		problem = fmt.Errorf("Debian root image not built (make rootfs): %w", err)
	}
	testenv.RequireImages(t, problem)
	return img
}

// bootRoot makes every kernel of c boot the root image img: `root =` after
// each kernel's name in c's config.
func (c *kvmCluster) bootRoot(img string) {
	c.t.Helper()
	cfg, err := os.ReadFile(c.config)
	if err != nil {
		c.t.Fatal(err)
	}
	for _, k := range c.kernels {
		at := fmt.Sprintf("[[kernel]]\nname = %q\n", k)
		if !strings.Contains(string(cfg), at) {
			c.t.Fatalf("%s has no %q to add root = to:\n%s", c.config, at, cfg)
		}
		cfg = []byte(strings.Replace(string(cfg), at, at+fmt.Sprintf("root = %q\n", img), 1))
	}
	if err := os.WriteFile(c.config, cfg, 0o644); err != nil {
		c.t.Fatal(err)
	}
}

// TestRootImageUnderQEMU boots each flavour from the Debian image, as
// popvmm attaches it (read-only /dev/vda, popvmm.root=): the light one with
// an upper disk that starts blank (formatted on the first boot, its files
// kept for the second), the full one with its writes in RAM. Over ssh with
// the cluster key: Debian's release, the overlay, criu check, mpirun.
func TestRootImageUnderQEMU(t *testing.T) {
	img := requireRootImage(t)
	t.Run("light", func(t *testing.T) {
		upper := filepath.Join(t.TempDir(), "upper.img")
		if err := os.WriteFile(upper, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(upper, 256<<20); err != nil {
			t.Fatal(err)
		}
		g := prepareGuest(t, "light", "e2e-light", 0)
		// Each boot is a subtest: its QEMU has exited (and let go of the
		// upper disk's lock) when the next starts.
		t.Run("first-boot", func(t *testing.T) {
			out := bootRoot(t, g, img, upper, true,
				"cat /run/popvmm/root; echo kept > /root/mine && sync && echo written")
			if !strings.Contains(out, "/dev/vda read-only, writes to disk /dev/vdb") || !strings.Contains(out, "written") {
				t.Errorf("first boot: the overlay's layers or the write to the upper disk:\n%s", out)
			}
		})
		t.Run("second-boot", func(t *testing.T) {
			out := bootRoot(t, g, img, upper, false, "cat /root/mine")
			if !strings.Contains(out, "kept") {
				t.Errorf("second boot: /root/mine = %q, want the first boot's \"kept\" (the upper disk keeps it)", out)
			}
		})
		// A disk holding something else is never formatted: the kernel
		// says so, writes to RAM, and the disk's bytes stay as they were.
		t.Run("foreign-upper", func(t *testing.T) {
			foreign := filepath.Join(t.TempDir(), "foreign.img")
			data := []byte(strings.Repeat("not a file system, keep me ", 1<<17))[:2<<20]
			if err := os.WriteFile(foreign, data, 0o600); err != nil {
				t.Fatal(err)
			}
			out := bootRoot(t, g, img, foreign, false, "cat /run/popvmm/root")
			if !strings.Contains(out, "/dev/vda read-only, writes to RAM") {
				t.Errorf("with a foreign upper disk: %q, want writes to RAM", out)
			}
			if got, err := os.ReadFile(foreign); err != nil || string(got) != string(data) {
				t.Errorf("the foreign upper disk %s was changed (%v)", foreign, err)
			}
		})
	})
	t.Run("full", func(t *testing.T) {
		g := prepareGuest(t, "full", "e2e-full", 0)
		out := bootRoot(t, g, img, "", false, "cat /run/popvmm/root")
		if !strings.Contains(out, "/dev/vda read-only, writes to RAM") {
			t.Errorf("the overlay's layers: %q, want writes to RAM", out)
		}
	})
}

// bootRoot boots g under QEMU with the root image (and the upper disk, if
// any), checks the Debian userland over ssh, runs cmd there and returns its
// output. format says whether the upper disk is to be formatted on this
// boot (a blank one) or reused.
func bootRoot(t *testing.T, g guestBoot, img, upper string, format bool, cmd string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	port := freePort(t)
	cmdline := guest.Cmdline(g.cl, g.k, false, nil) + " popvmm.root=/dev/vda"
	// A PC (QEMU's default machine; microvm's PCI host needs ACPI, which
	// the kernels lack), its disks and NIC on virtio-pci as under popvmm.
	args := []string{"-M", "pc", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
		"-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", g.vmlinux, "-initrd", g.initrd,
		"-drive", "file=" + img + ",if=none,id=root,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=root"}
	if upper != "" {
		cmdline += " popvmm.upper=/dev/vdb"
		args = append(args, "-drive", "file="+upper+",if=none,id=upper,format=raw", "-device", "virtio-blk-pci,drive=upper")
	}
	args = append(args, "-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22", port),
		"-device", "virtio-net-pci,netdev=n0", "-append", cmdline)
	con := startQEMU(t, ctx, args)
	con.waitFor(t, "popvmm-init: "+g.k.Name+" up", 5*time.Minute)
	if format {
		con.waitFor(t, "popvmm-init: formatting upper disk /dev/vdb", time.Minute)
	}
	d := con.waitFor(t, "popvmm-init: root: popvmm Debian root image", 2*time.Minute)
	t.Logf("%s: switched into the Debian image %v after /init (TCG)", g.k.Name, d.Round(time.Millisecond))
	con.waitFor(t, "dropbear listening on port 22", 2*time.Minute)
	if !format && strings.Contains(con.text(), "formatting upper disk") {
		t.Errorf("the upper disk was formatted again; console:\n%s", con.text())
	}
	foreign := strings.Contains(con.text(), "holds data that is not an ext4 file system; not formatting it")
	if strings.Contains(con.text(), "popvmm-init: error") && !foreign {
		t.Errorf("/init reported an error; console:\n%s", con.text())
	}

	key := filepath.Join(g.keyDir, guest.PrivateKeyName)
	out := sshRun(t, key, port, "hostname; cat /etc/debian_version; findmnt -n -o FSTYPE /; "+
		"touch /etc/popvmm-wrote && ls /run/popvmm/lower/etc/popvmm-wrote 2>&1; "+
		"criu check 2>&1; mpirun --version | head -3; criu --version | head -1")
	t.Logf("%s:\n%s", g.k.Name, out)
	for _, want := range []string{
		g.k.Name + "\n12.",     // hostname, then Debian 12's point release
		"\noverlay\n",          // / is the overlay
		"No such file",         // a write lands in the upper layer, never in the image
		"Looks good.",          // criu check: the kernel has what CRIU needs
		"HYDRA build details:", // MPICH's mpirun
		"Version: 3.17",        // criu --version
	} {
		if !strings.Contains(out, want) {
			t.Errorf("%s over ssh: no %q in\n%s", g.k.Name, want, out)
		}
	}
	return sshRun(t, key, port, cmd)
}

// TestKVMRootImage is issue 22's tier-3 check of the shared root: a full
// and a light kernel boot the same Debian image (root = in cluster.toml,
// attached read-only to both); both read /etc/debian_version, each writes a
// file the other does not see, mpirun and criu run in both (criu check
// passes: the kernels have what CRIU needs), and what works on the
// initramfs works there: ssh, attach, the agent (msg ping), msg tty.
func TestKVMRootImage(tt *testing.T) {
	c := newKVMCluster(tt, "rootimg",
		kvmKernel{"primary", "full", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "up"})
	t := c.t
	c.bootRoot(requireRootImage(tt))

	start := time.Now()
	c.must("up", "-d", c.config)
	for _, k := range c.kernels {
		c.waitConsole(k, "popvmm-init: root: popvmm Debian root image", bootDeadline)
		t.Logf("%s switched into the Debian image %.1f s after up", k, time.Since(start).Seconds())
		c.waitSSHD(k)
	}
	for _, k := range c.kernels {
		out := c.mustSSH(k, "cat /etc/debian_version; cat /run/popvmm/root; echo from-"+k+" > /root/mine-"+k+" && echo wrote")
		if !strings.Contains("\n"+out, "\n12.") || !strings.Contains(out, "/dev/vda read-only, writes to RAM") || !strings.Contains(out, "wrote") {
			t.Errorf("%s: /etc/debian_version, its overlay and a write:\n%s", k, out)
		}
	}
	for i, k := range c.kernels {
		other := c.kernels[1-i]
		out := c.mustSSH(k, "cat /root/mine-"+k+"; ls /root")
		if !strings.Contains(out, "from-"+k) || strings.Contains(out, "mine-"+other) {
			t.Errorf("%s sees its own file and not %s's: want from-%s and no mine-%s in\n%s", k, other, k, other, out)
		}
		out = c.mustSSH(k, "mpirun --version | head -3; criu --version | head -1; criu check 2>&1")
		for _, want := range []string{"HYDRA build details:", "Version: 3.17", "Looks good."} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: mpirun --version, criu --version, criu check: no %q in\n%s", k, want, out)
			}
		}
	}

	// The console's shell, the agent and its shell over the window run in
	// the Debian root too.
	attach(t, c, "secondary", "echo deb-$(cut -d. -f1 /etc/debian_version)", "deb-12")
	for _, k := range c.kernels {
		out := c.retry(agentDeadline, "msg", "ping", "-c", c.config, k)
		t.Logf("msg ping %s: %s", k, strings.TrimSpace(out))
	}
	tty := c.open(t, "msg", "tty", "-c", c.config, "secondary")
	tty.wait("Ctrl-] detaches", 30*time.Second)
	tty.f.WriteString("echo tty-$((6*7)) deb-$(cut -d. -f1 /etc/debian_version)\r")
	tty.wait("tty-42 deb-12", time.Minute)
	tty.f.Write([]byte{0x1d})
	tty.close()

	c.down(c.status().PID)
}
