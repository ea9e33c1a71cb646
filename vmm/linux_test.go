package vmm_test

// Tier 3: the built light kernel (images/out/light, `make images`) boots
// to its init under popvmm's VMM, both by the bzImage 64-bit protocol and
// by PVH, with two vCPUs, and runs a command typed on its console.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
		})
	}
}
