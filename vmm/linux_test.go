package vmm_test

// Tier 3: the built light kernel (images/out/light, `make images`) boots
// to its init under popvmm's VMM, both by the bzImage 64-bit protocol and
// by PVH, with two vCPUs, and runs a command typed on its console.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// linuxTimeout bounds a boot to init: QEMU -enable-kvm needs 36-48 s for
// it in the lab.
const linuxTimeout = 240 * time.Second

func image(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "images", "out", "light", name))
	if err != nil {
		testenv.RequireImages(t, fmt.Errorf("light image not built (make images): %w", err))
	}
	return b
}

func TestKVMBootLinux(t *testing.T) {
	testenv.RequireKVM(t)
	initrd := image(t, "initramfs.cpio")
	for _, c := range []struct {
		name   string
		format vmm.Format
		file   string
	}{
		{"bzImage", vmm.FormatBzImage, "bzImage"},
		{"pvh", vmm.FormatPVH, "vmlinux"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := image(t, c.file)
			l, err := memmap.New(memmap.Spec{RAM: 256 * memmap.MiB, RAMAlign: memmap.PageSize})
			if err != nil {
				t.Fatal(err)
			}
			v, err := vmm.New(vmm.Config{Name: "light-" + c.name, Layout: l, CPUs: cpusFor(t, 2), NUMANode: -1,
				Boot: vmm.Boot{Format: c.format, Image: img, Initrd: initrd,
					Cmdline: "console=ttyS0 panic=-1 popvmm.name=light"}})
			if err != nil {
				t.Fatal(err)
			}
			con := newConsole()
			uart := vtty.NewUART(con, v.IRQLine(4))
			if err := v.PIO().Insert(uart, "com1", 0x3f8, 8); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				v.Close()
				if t.Failed() {
					t.Logf("status %+v\nconsole:\n%s", v.Status(), con.tail())
				}
			})
			start := time.Now()
			if err := v.Start(); err != nil {
				t.Fatal(err)
			}
			wait := func(s string) {
				t.Helper()
				deadline := time.NewTimer(linuxTimeout)
				defer deadline.Stop()
				for !strings.Contains(con.String(), s) {
					select {
					case <-con.notify:
					case <-v.Done():
						t.Fatalf("VM ended (%s: %s) before %q", v.Status().State, v.Status().Reason, s)
					case <-deadline.C:
						t.Fatalf("no %q after %v", s, linuxTimeout)
					}
				}
				t.Logf("%q after %v", s, time.Since(start).Round(time.Millisecond))
			}
			wait("Run /init")
			wait("popvmm-init:")
			if !strings.Contains(con.String(), "Brought up 1 node, 2 CPUs") {
				t.Errorf("the second vCPU did not come up")
			}
			wait("popvmm-init: light up")
			// The shell on the console reads what the UART receives.
			deadline := time.Now().Add(linuxTimeout)
			for !strings.Contains(con.String(), "typed-42") {
				uart.Receive([]byte("echo typed-$((6*7))\n"))
				select {
				case <-con.notify:
				case <-time.After(5 * time.Second): // the shell may not read yet: type again
				}
				if time.Now().After(deadline) {
					t.Fatal("no answer to a command typed on the console")
				}
			}
			t.Logf("command answered after %v; exits %v", time.Since(start).Round(time.Millisecond), v.Status().Exits)
			// What a reader of this log wants to know about the platform.
			for _, line := range strings.Split(con.String(), "\n") {
				for _, k := range []string{"WARNING", "clocksource", "tsc:", "IOAPIC", "smpboot", "APIC", "Kernel panic", "kvm-clock"} {
					if strings.Contains(line, k) {
						t.Log("guest: " + strings.TrimSpace(line))
						break
					}
				}
			}
		})
	}
}

// BenchmarkKVMBootLinux boots the light kernel (PVH, one vCPU, 256 MiB)
// to "Run /init" under popvmm and under QEMU microvm -accel kvm with the
// same kernel, initramfs and command line, and reports the time and the
// VMM's resident memory beyond guest RAM at that moment (VmRSS minus
// RssShmem; QEMU's RAM is put on a memfd so that it counts as RssShmem
// too). Run it with -test.benchtime 1x.
func BenchmarkKVMBootLinux(b *testing.B) {
	testenv.RequireKVM(b)
	read := func(name string) []byte {
		p := filepath.Join("..", "images", "out", "light", name)
		buf, err := os.ReadFile(p)
		if err != nil {
			testenv.RequireImages(b, fmt.Errorf("light image not built (make images): %w", err))
		}
		return buf
	}
	img, initrd := read("vmlinux"), read("initramfs.cpio")
	const cmdline = "console=ttyS0 panic=-1"
	b.Run("popvmm-pvh", func(b *testing.B) {
		l, err := memmap.New(memmap.Spec{RAM: 256 * memmap.MiB, RAMAlign: memmap.PageSize})
		if err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			before := rssBeyondShmem(b)
			t0 := time.Now()
			v, err := vmm.New(vmm.Config{Name: "bench-light", Layout: l, CPUs: cpusFor(b, 1), NUMANode: -1,
				Boot: vmm.Boot{Format: vmm.FormatPVH, Image: img, Initrd: initrd, Cmdline: cmdline}})
			if err != nil {
				b.Fatal(err)
			}
			w := &lineWatch{want: "Run /init", found: make(chan struct{})}
			if err := v.PIO().Insert(vtty.NewUART(w, v.IRQLine(4)), "com1", 0x3f8, 8); err != nil {
				b.Fatal(err)
			}
			if err := v.Start(); err != nil {
				b.Fatal(err)
			}
			select {
			case <-w.found:
			case <-v.Done():
				b.Fatalf("VM ended: %+v", v.Status())
			case <-time.After(linuxTimeout):
				b.Fatal("no Run /init")
			}
			b.ReportMetric(time.Since(t0).Seconds(), "s/run-init")
			after := rssBeyondShmem(b)
			b.ReportMetric(float64(after-before)/1024, "MiB-beyond-RAM")
			v.Close()
		}
	})
	b.Run("qemu-microvm-pvh", func(b *testing.B) {
		qemu, err := exec.LookPath("qemu-system-x86_64")
		if err != nil {
			b.Skip("no qemu-system-x86_64 to compare with")
		}
		dir := filepath.Join("..", "images", "out", "light")
		for b.Loop() {
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), linuxTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, qemu, "-M", "microvm,acpi=off,memory-backend=ram", "-accel", "kvm", "-cpu", "host",
				"-object", "memory-backend-memfd,id=ram,size=256M", "-m", "256", "-smp", "1",
				"-nodefaults", "-nographic", "-no-reboot", "-serial", "stdio",
				"-kernel", filepath.Join(dir, "vmlinux"), "-initrd", filepath.Join(dir, "initramfs.cpio"),
				"-append", cmdline)
			out, err := cmd.StdoutPipe()
			if err != nil {
				b.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				b.Fatal(err)
			}
			found := false
			s := bufio.NewScanner(out)
			for s.Scan() {
				if strings.Contains(s.Text(), "Run /init") {
					found = true
					break
				}
			}
			elapsed := time.Since(t0)
			pid := strconv.Itoa(cmd.Process.Pid)
			rss := procKiB(b, pid, "VmRSS") - procKiB(b, pid, "RssShmem")
			cmd.Process.Kill()
			cmd.Wait()
			if !found {
				b.Fatal("QEMU never printed Run /init")
			}
			b.ReportMetric(elapsed.Seconds(), "s/run-init")
			b.ReportMetric(float64(rss)/1024, "MiB-beyond-RAM")
		}
	})
}

// lineWatch is a console sink that signals when its output contains want.
type lineWatch struct {
	mu    sync.Mutex
	tail  []byte
	want  string
	found chan struct{}
	done  bool
}

func (w *lineWatch) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return len(p), nil
	}
	w.tail = append(w.tail, p...)
	if bytes.Contains(w.tail, []byte(w.want)) {
		w.done = true
		close(w.found)
	}
	if len(w.tail) > 4096 {
		w.tail = append(w.tail[:0], w.tail[len(w.tail)-256:]...)
	}
	return len(p), nil
}

// procKiB reads a KiB field of /proc/PID/status (PID "self" for this
// process).
func procKiB(b *testing.B, pid, field string) int64 {
	s, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(s), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return n
		}
	}
	b.Fatalf("no %s in /proc/%s/status", field, pid)
	return 0
}
