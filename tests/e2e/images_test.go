// Package e2e holds end-to-end tests that boot the real guest images.
//
// TestImagesUnderQEMU boots both flavours under QEMU (the reference VMM; with
// TCG, since it needs no /dev/kvm, and under TCG guest userspace runs even
// on the project's nested-KVM machines) with the per-cluster overlay
// appended, exactly as popvmm composes command line and overlay, and checks
// that /init ran; on the full flavour it also logs in over SSH with the
// cluster key through QEMU's user-mode network.
package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/internal/testenv"
)

const imagesDir = "../../images/out"

func requireImages(t *testing.T, flavour string) (vmlinux, initrd string) {
	t.Helper()
	vmlinux = filepath.Join(imagesDir, flavour, "vmlinux")
	initrd = filepath.Join(imagesDir, flavour, "initramfs.cpio")
	var problem error
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		problem = fmt.Errorf("qemu-system-x86_64 not installed (make deps): %w", err)
	}
	for _, f := range []string{vmlinux, initrd} {
		if _, err := os.Stat(f); err != nil && problem == nil {
			problem = fmt.Errorf("%s image not built (make images): %w", flavour, err)
		}
	}
	testenv.RequireImages(t, problem)
	return vmlinux, initrd
}

// console collects a guest's serial output and lets the test wait for a
// line with a deadline.
type console struct {
	mu    sync.Mutex
	lines []string
	more  chan struct{}
	done  chan struct{}
}

func newConsole(r io.Reader) *console {
	c := &console{more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			c.mu.Lock()
			c.lines = append(c.lines, sc.Text())
			c.mu.Unlock()
			select {
			case c.more <- struct{}{}:
			default:
			}
		}
	}()
	return c
}

func (c *console) text() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.lines, "\n")
}

func (c *console) waitFor(t *testing.T, what string, d time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := time.After(d)
	for {
		if strings.Contains(c.text(), what) {
			return time.Since(start)
		}
		select {
		case <-c.more:
		case <-c.done:
			if strings.Contains(c.text(), what) {
				return time.Since(start)
			}
			t.Fatalf("guest exited before %q; console:\n%s", what, c.text())
		case <-deadline:
			t.Fatalf("no %q within %v; console:\n%s", what, d, c.text())
		}
	}
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// guestBoot is what popvmm would hand one kernel booted under QEMU on its
// user-mode network (guest 10.0.2.15, host 10.0.2.2): the cluster facts,
// the cluster key and an initrd of the flavour's base plus the overlay.
type guestBoot struct {
	k       *cluster.Kernel
	cl      *cluster.Cluster
	vmlinux string
	initrd  string
	keyDir  string
}

func prepareGuest(t *testing.T, flavour, name string, index int) guestBoot {
	t.Helper()
	vmlinux, base := requireImages(t, flavour)
	dir := t.TempDir()
	k := &cluster.Kernel{Index: index, Name: name, Flavour: cluster.Flavour(flavour), IP: netip.MustParseAddr("10.0.2.15"), Cmdline: "panic=-1"}
	kernels := make([]*cluster.Kernel, index+1)
	for i := range index {
		kernels[i] = &cluster.Kernel{Index: i, Name: fmt.Sprintf("peer%d", i)}
	}
	kernels[index] = k
	cl := &cluster.Cluster{Name: "e2e", Kernels: kernels,
		Network: cluster.Network{Subnet: netip.MustParsePrefix("10.0.2.0/24"), Host: netip.MustParseAddr("10.0.2.2")}}
	g := guestBoot{k: k, cl: cl, vmlinux: vmlinux, initrd: filepath.Join(dir, "initrd.cpio"), keyDir: filepath.Join(dir, "ssh")}
	pub, err := guest.EnsureKey(g.keyDir, "popvmm-e2e")
	if err != nil {
		t.Fatal(err)
	}
	overlay, err := guest.Overlay(cl, k, pub)
	if err != nil {
		t.Fatal(err)
	}
	baseData, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(g.initrd, append(baseData, overlay...), 0o600); err != nil {
		t.Fatal(err)
	}
	return g
}

// cmdline is popvmm's command line for the guest. Under TCG the
// nested-backend flags are not needed, but popvmm adds them on the
// project's machines; boot with them to test what it uses.
func (g guestBoot) cmdline() string { return guest.Cmdline(g.cl, g.k, true, nil) }

// startQEMU runs qemu-system-x86_64 with args until the test ends and
// returns its console; on failure the console is kept in a file.
func startQEMU(t *testing.T, ctx context.Context, args []string) *console {
	t.Helper()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	t.Logf("qemu-system-x86_64 %s", strings.Join(args, " "))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	con := newConsole(out)
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		<-con.done
		if t.Failed() {
			log := filepath.Join(os.TempDir(), "popvmm-"+strings.ReplaceAll(t.Name(), "/", "-")+".console.log")
			os.WriteFile(log, []byte(con.text()), 0o644)
			t.Logf("console kept in %s", log)
		}
	})
	return con
}

// TestImagesUnderQEMU boots each flavour and checks /init; the full one is
// then reached over SSH with the cluster key.
func TestImagesUnderQEMU(t *testing.T) {
	for _, flavour := range []string{"light", "full"} {
		t.Run(flavour, func(t *testing.T) { bootFlavour(t, flavour) })
	}
}

func bootFlavour(t *testing.T, flavour string) {
	g := prepareGuest(t, flavour, "e2e-"+flavour, 0)
	port := freePort(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	args := []string{"-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "kvm64,-cx16,-xsave,-popcnt",
		"-m", "256", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
		"-kernel", g.vmlinux, "-initrd", g.initrd, "-append", g.cmdline()}
	if flavour == "full" {
		args = append(args, "-netdev", fmt.Sprintf("user,id=n0,hostfwd=tcp:127.0.0.1:%d-:22", port),
			"-device", "virtio-net-device,netdev=n0")
	}
	con := startQEMU(t, ctx, args)

	d := con.waitFor(t, "Run /init as init process", 5*time.Minute)
	t.Logf("%s: Run /init after %v (TCG)", flavour, d.Round(time.Millisecond))
	con.waitFor(t, "popvmm-init: "+g.k.Name+" up", time.Minute)
	if flavour != "full" {
		return
	}
	con.waitFor(t, "dropbear listening on port 22", time.Minute)
	out := sshRun(t, filepath.Join(g.keyDir, guest.PrivateKeyName), port, "hostname; . /etc/popvmm/cluster.env; echo peer=$POPVMM_PEER_ID cluster=$POPVMM_CLUSTER")
	if want := g.k.Name + "\npeer=0 cluster=e2e"; strings.TrimSpace(out) != want {
		t.Errorf("ssh output %q, want %q", out, want)
	}
}

// sshRun logs in as root with the cluster key and runs cmd, retrying the
// connection until dropbear answers (the port forward exists before it).
func sshRun(t *testing.T, keyFile string, port int, cmd string) string {
	t.Helper()
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cfg := &ssh.ClientConfig{User: "root", Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 30 * time.Second}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		c, err := ssh.Dial("tcp", addr, cfg)
		if err == nil {
			defer c.Close()
			s, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			b, err := s.CombinedOutput(cmd)
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatalf("ssh %q: %v\n%s", cmd, err, b)
			}
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("ssh to %s: %v", addr, err)
		}
		// Retry interval, not synchronisation: the console already said
		// dropbear listens; QEMU's forward may still race the first accept.
		time.Sleep(500 * time.Millisecond)
	}
}
