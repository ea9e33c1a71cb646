//go:build bootcount

// The boot count is a measurement, not a test: it exists only in the test
// binary bench/boot-count.sh builds (go test -c -tags bootcount), so the
// KVM tiers never run it, nor skip it.

package vmm_test

import (
	"bytes"
	"fmt"
	"os"
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

// TestKVMBootCount boots built kernels again and again (one vCPU, 512
// MiB, as issue 20 measured) and tallies how each boot ended: reached
// init ("Run /init" on the console, or the initramfs's "popvmm-init:" when
// a loglevel hides the former), triple fault, another crash, or hung
// (neither within the timeout). It fails unless every boot reached init.
// bench/boot-count.sh runs it beside the same boots under QEMU in one lab
// run. Knobs (it is skipped without the first):
//
//	POPVMM_BOOT_COUNT=N          boots per kernel
//	POPVMM_BOOT_FLAVOURS="light full"  images/out/<flavour> (default light)
//	POPVMM_BOOT_FORMAT=bzImage|pvh      (default bzImage)
//	POPVMM_BOOT_APPEND="..."     added to "console=ttyS0 panic=-1"
//	POPVMM_BOOT_TIMEOUT=S        seconds to init before "hung" (default 240)
//	POPVMM_BOOT_LOGDIR=DIR       each failed boot's console goes to DIR
//	POPVMM_BOOT_POPULATE=1       fault all guest RAM in before the boot
//	POPVMM_BOOT_HUGEPAGES=1      back guest RAM with 2 MiB hugetlbfs pages
//	POPVMM_BOOT_CPU=C            the host core the vCPU runs on (default the last)
func TestKVMBootCount(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("POPVMM_BOOT_COUNT"))
	if n <= 0 {
		t.Skip("POPVMM_BOOT_COUNT not set (bench/boot-count.sh sets it)")
	}
	testenv.RequireKVM(t)
	flavours := strings.Fields(os.Getenv("POPVMM_BOOT_FLAVOURS"))
	if len(flavours) == 0 {
		flavours = []string{"light"}
	}
	format, file := vmm.FormatBzImage, "bzImage"
	if os.Getenv("POPVMM_BOOT_FORMAT") == "pvh" {
		format, file = vmm.FormatPVH, "vmlinux"
	}
	timeout := 240 * time.Second
	if s, err := strconv.Atoi(os.Getenv("POPVMM_BOOT_TIMEOUT")); err == nil && s > 0 {
		timeout = time.Duration(s) * time.Second
	}
	cmdline := strings.TrimSpace("console=ttyS0 panic=-1 " + os.Getenv("POPVMM_BOOT_APPEND"))
	logDir := os.Getenv("POPVMM_BOOT_LOGDIR")
	for _, f := range flavours {
		dir := filepath.Join("..", "images", "out", f)
		img, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			testenv.RequireImages(t, fmt.Errorf("%s image not built (make images): %w", f, err))
		}
		initrd, err := os.ReadFile(filepath.Join(dir, "initramfs.cpio"))
		if err != nil {
			testenv.RequireImages(t, fmt.Errorf("%s initramfs not built (make images): %w", f, err))
		}
		tally := map[string]int{}
		for i := 1; i <= n; i++ {
			res, con := bootOnce(t, f, format, img, initrd, cmdline, timeout)
			tally[res.kind]++
			t.Logf("boot-count: popvmm %s %s %d/%d: %s %.1fs%s", f, format, i, n, res.kind, res.took.Seconds(), res.detail)
			if res.kind != "init" && logDir != "" {
				p := filepath.Join(logDir, fmt.Sprintf("popvmm-%s-%s-%d.log", f, format, i))
				if err := os.WriteFile(p, con, 0o644); err != nil {
					t.Error(err)
				}
			}
		}
		t.Logf("boot-count: popvmm %s %s: %d boots: %d init, %d triple fault, %d crash, %d hung",
			f, format, n, tally["init"], tally["triple-fault"], tally["crash"], tally["hung"])
		if tally["init"] != n {
			t.Errorf("popvmm %s %s: %d of %d boots did not reach init", f, format, n-tally["init"], n)
		}
	}
}

type bootResult struct {
	kind   string // init, triple-fault, crash, hung
	took   time.Duration
	detail string
}

// bootOnce boots one kernel until "Run /init", the VM's end or timeout,
// and returns how it ended and its console.
func bootOnce(t *testing.T, name string, format vmm.Format, img, initrd []byte, cmdline string, timeout time.Duration) (bootResult, []byte) {
	t.Helper()
	var huge uint64
	if os.Getenv("POPVMM_BOOT_HUGEPAGES") == "1" {
		huge = 2 * memmap.MiB
	}
	l, err := memmap.New(memmap.Spec{RAM: 512 * memmap.MiB, RAMAlign: max(huge, memmap.PageSize)})
	if err != nil {
		t.Fatal(err)
	}
	cpus := cpusFor(t, 1)
	if c, err := strconv.Atoi(os.Getenv("POPVMM_BOOT_CPU")); err == nil {
		cpus = []int{c}
	}
	con := &bootConsole{want: [][]byte{[]byte("Run /init"), []byte("popvmm-init:")}, found: make(chan struct{})}
	v, err := vmm.New(vmm.Config{Name: "count-" + name, Layout: l, CPUs: cpus, NUMANode: -1,
		HugePageSize: huge, Populate: os.Getenv("POPVMM_BOOT_POPULATE") == "1",
		Boot:        vmm.Boot{Format: format, Image: img, Initrd: initrd, Cmdline: cmdline},
		ConsoleTail: con.bytes})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if err := v.PIO().Insert(vtty.NewUART(con, v.IRQLine(4)), "com1", 0x3f8, 8); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	if err := v.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	var r bootResult
	select {
	case <-con.found:
		r.kind = "init"
	case <-v.Done():
		st := v.Status()
		r.kind = "crash"
		if strings.Contains(st.Reason, "triple fault") {
			r.kind = "triple-fault"
		}
		r.detail = fmt.Sprintf(": %s (%s)", st.Ending, st.Reason)
	case <-deadline.C:
		r.kind = "hung"
	}
	r.took = time.Since(t0)
	out := con.bytes()
	if r.kind != "init" {
		r.detail += fmt.Sprintf("; console's last line %q", lastLine(out))
	}
	return r, out
}

// lastLine is the last non-empty line of out.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimRight(string(out), "\r\n"), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// bootConsole keeps a boot's console and signals when it contains one
// of want.
type bootConsole struct {
	mu    sync.Mutex
	buf   []byte
	want  [][]byte
	found chan struct{}
	done  bool
}

func (c *bootConsole) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	for _, w := range c.want {
		if !c.done && bytes.Contains(c.buf[max(0, len(c.buf)-len(p)-len(w)):], w) {
			c.done = true
			close(c.found)
		}
	}
	return len(p), nil
}

func (c *bootConsole) bytes() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bytes.Clone(c.buf)
}
