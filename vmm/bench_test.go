package vmm_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
)

// firstInsn is a flat 32-bit guest whose first instruction writes port
// 0x510: mov $0x510,%dx; out %al,%dx; 1: hlt; jmp 1b.
var firstInsn = []byte{0x66, 0xba, 0x10, 0x05, 0xee, 0xf4, 0xeb, 0xfd}

// BenchmarkKVMCreateToFirstInstruction times New (memory, KVM VM,
// irqchip, PIT, slots, vCPU, image load) plus Start to the guest's first
// instruction, seen as its port write. Target: under 10 ms.
func BenchmarkKVMCreateToFirstInstruction(b *testing.B) {
	testenv.RequireKVM(b)
	l := layout(b, 128*memmap.MiB)
	cpus := cpusFor(b, 1)
	var total time.Duration
	for b.Loop() {
		t0 := time.Now()
		v, err := vmm.New(vmm.Config{Name: "bench", Layout: l, CPUs: cpus, NUMANode: -1,
			Boot: vmm.Boot{Format: vmm.FormatFlat, Image: firstInsn}})
		if err != nil {
			b.Fatal(err)
		}
		rec := newPorts()
		if err := v.PIO().Insert(rec, "first", 0x510, 1); err != nil {
			b.Fatal(err)
		}
		if err := v.Start(); err != nil {
			b.Fatal(err)
		}
		select {
		case <-rec.notify:
		case <-time.After(guestTimeout):
			b.Fatal("no first instruction")
		}
		total += time.Since(t0)
		b.StopTimer()
		v.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/first-insn")
}

// procStatus reads a field of /proc/self/status in KiB.
func procStatus(b *testing.B, field string) int64 {
	s, err := os.ReadFile("/proc/self/status")
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
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
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
		before := procStatus(b, "VmRSS") - procStatus(b, "RssShmem")
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
		after := procStatus(b, "VmRSS") - procStatus(b, "RssShmem")
		b.ReportMetric(float64(after-before)/n/1024, "MiB-beyond-RAM/vm")
		b.ReportMetric(float64(procStatus(b, "RssShmem"))/n/1024, "MiB-guest-RAM-resident/vm")
		for _, g := range vms {
			g.Close()
		}
	}
}
