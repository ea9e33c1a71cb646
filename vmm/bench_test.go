package vmm_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vmm/kvm"
)

// firstInsn is a flat 32-bit guest whose first instruction writes port
// 0x510: mov $0x510,%dx; out %al,%dx; 1: hlt; jmp 1b.
var firstInsn = []byte{0x66, 0xba, 0x10, 0x05, 0xee, 0xf4, 0xeb, 0xfd}

// BenchmarkKVMFirstInstruction times a VM from nothing to its first guest
// instruction (a write to port 0x510). popvmm: New (memory, KVM VM,
// irqchip, PIT, slots, vCPU, image load) plus Start, for a flat binary and
// for the PVH kernel tests/guests/out/first-pvh.elf. qemu-microvm: the
// same PVH kernel under qemu-system-x86_64 -M microvm -accel kvm with
// isa-debug-exit on port 0x510, from exec to QEMU's exit (which also
// counts process start-up and teardown); skipped without QEMU. Target for
// popvmm: under 10 ms, at most half of QEMU's.
func BenchmarkKVMFirstInstruction(b *testing.B) {
	testenv.RequireKVM(b)
	l := layout(b, 128*memmap.MiB)
	cpus := cpusFor(b, 1)
	popvmm := func(b *testing.B, format vmm.Format, img []byte) {
		// One VM first, untimed: page cache, KVM module state and this
		// process's first-use costs, as QEMU's runs share the page cache.
		if v, err := vmm.New(vmm.Config{Name: "warm", Layout: l, CPUs: cpus, NUMANode: -1,
			Boot: vmm.Boot{Format: format, Image: img}}); err == nil {
			v.Close()
		}
		var total, created, started time.Duration
		for b.Loop() {
			t0 := time.Now()
			v, err := vmm.New(vmm.Config{Name: "bench", Layout: l, CPUs: cpus, NUMANode: -1,
				Boot: vmm.Boot{Format: format, Image: img}, Log: benchLog()})
			if err != nil {
				b.Fatal(err)
			}
			t1 := time.Now()
			rec := newPorts()
			if err := v.PIO().Insert(rec, "first", 0x510, 1); err != nil {
				b.Fatal(err)
			}
			if err := v.Start(); err != nil {
				b.Fatal(err)
			}
			t2 := time.Now()
			select {
			case <-rec.notify:
			case <-time.After(guestTimeout):
				b.Fatal("no first instruction")
			}
			total += time.Since(t0)
			created += t1.Sub(t0)
			started += t2.Sub(t1)
			b.StopTimer()
			v.Close()
			b.StartTimer()
		}
		ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
		b.ReportMetric(ms(total), "ms/first-insn")
		b.ReportMetric(ms(created), "ms/new")
		b.ReportMetric(ms(started), "ms/start")
	}
	b.Run("kvm-floor", func(b *testing.B) {
		// What KVM itself costs here: /dev/kvm, a VM with irqchip and
		// PIT, one vCPU, closed again; no memory, no guest.
		var total time.Duration
		for b.Loop() {
			t0 := time.Now()
			sys, err := kvm.Open()
			if err != nil {
				b.Fatal(err)
			}
			vm, err := sys.CreateVM()
			if err != nil {
				b.Fatal(err)
			}
			if err := vm.CreateIRQChip(); err != nil {
				b.Fatal(err)
			}
			if err := vm.CreatePIT2(); err != nil {
				b.Fatal(err)
			}
			c, err := vm.CreateVCPU(0)
			if err != nil {
				b.Fatal(err)
			}
			total += time.Since(t0)
			c.Close()
			vm.Close()
			sys.Close()
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/create")
	})
	b.Run("popvmm-flat", func(b *testing.B) { popvmm(b, vmm.FormatFlat, firstInsn) })
	pvh, err := os.ReadFile(filepath.Join("..", "tests", "guests", "out", "first-pvh.elf"))
	if err != nil {
		testenv.Require(b, fmt.Errorf("tests/guests/out/first-pvh.elf not built (tests/guests/build.sh): %w", err))
	}
	b.Run("popvmm-pvh", func(b *testing.B) { popvmm(b, vmm.FormatPVH, pvh) })
	b.Run("qemu-microvm-pvh", func(b *testing.B) {
		qemu, err := exec.LookPath("qemu-system-x86_64")
		if err != nil {
			b.Skip("no qemu-system-x86_64 to compare with")
		}
		kernel, _ := filepath.Abs(filepath.Join("..", "tests", "guests", "out", "first-pvh.elf"))
		var total time.Duration
		for b.Loop() {
			t0 := time.Now()
			ctx, cancel := context.WithTimeout(context.Background(), guestTimeout)
			out, err := exec.CommandContext(ctx, qemu, "-M", "microvm,acpi=off", "-accel", "kvm", "-cpu", "host", "-m", "128",
				"-smp", "1", "-nodefaults", "-nographic", "-no-reboot", "-kernel", kernel,
				"-device", "isa-debug-exit,iobase=0x510,iosize=1").CombinedOutput()
			total += time.Since(t0)
			cancel()
			// isa-debug-exit ends QEMU with status (value<<1)|1: odd.
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode()%2 != 1 {
				b.Fatalf("qemu: %v\n%s", err, out)
			}
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/first-insn")
	})
}

// BenchmarkKVMRSSPerVM measures popvmm's resident memory beyond guest RAM
// per running VM: VmRSS minus the guest RAM pages it maps (RssShmem, the
// memfds), with 4 VMs of 256 MiB running the hello guest. Target: under
// 5 MiB.
func BenchmarkKVMRSSPerVM(b *testing.B) {
	testenv.RequireKVM(b)
	const n = 4
	img := guestBin(b, "hello")
	for b.Loop() {
		before := rssBeyondShmem(b)
		var vms []*testVM
		for range n {
			g := startGuest(b, "hello", 1, func(c *vmm.Config) {
				c.Layout = layout(b, 256*memmap.MiB)
				c.Boot.Image = img
			})
			g.start(b)
			vms = append(vms, g)
		}
		for _, g := range vms {
			g.con.waitFor(b, "tick 10", func(s string) bool { return ticks(s) >= 10 })
		}
		after := rssBeyondShmem(b)
		b.ReportMetric(float64(after-before)/n, "KiB-beyond-RAM/vm")
		b.ReportMetric(float64(procKiB(b, "self", "RssShmem"))/n, "KiB-guest-RAM-resident/vm")
		for _, g := range vms {
			g.Close()
		}
	}
}

// rssBeyondShmem is this process's resident memory other than shared
// memory (the guest RAM memfds), in KiB, after a GC that returns the
// heap's garbage to the OS (so the test's own garbage is not counted).
func rssBeyondShmem(b *testing.B) int64 {
	runtime.GC()
	debug.FreeOSMemory()
	return procKiB(b, "self", "VmRSS") - procKiB(b, "self", "RssShmem")
}

// benchLog shows the VM's debug log (creation phases) with -test.v.
func benchLog() *slog.Logger {
	if !testing.Verbose() {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
