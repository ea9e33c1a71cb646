package vmm_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/memmap"
	"github.com/popvmm/popvmm/vmm"
)

// TestKVMPassthrough maps two host files into a guest at fixed addresses,
// one through a read-only slot: the guest reads both, its write to the
// read-only one is dropped (an MMIO exit nobody claims) and its write to
// the other reaches the file.
func TestKVMPassthrough(t *testing.T) {
	testenv.RequireKVM(t)
	dir := t.TempDir()
	ro, rw := filepath.Join(dir, "ro"), filepath.Join(dir, "rw")
	content := func(s string) []byte { return append([]byte(s), make([]byte, 2*int(memmap.MiB)-len(s))...) }
	// The region starts one page into the file.
	if err := os.WriteFile(ro, append(make([]byte, memmap.PageSize), content("read-only region")...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rw, content("writable region!"), 0o644); err != nil {
		t.Fatal(err)
	}
	const gpaRO, gpaRW = 0x2000000, 0x2100000
	g := startGuest(t, "passthru", 1, func(c *vmm.Config) {
		l, err := memmap.New(memmap.Spec{RAM: 16 * memmap.MiB, RAMAlign: memmap.PageSize,
			Passthrough: []memmap.PassthroughSpec{{Name: "ro", GPA: gpaRO, Size: memmap.MiB}, {Name: "rw", GPA: gpaRW, Size: memmap.MiB}}})
		if err != nil {
			t.Fatal(err)
		}
		c.Layout = l
		c.Passthrough = []vmm.Passthrough{
			{Path: ro, Offset: memmap.PageSize, GPA: gpaRO, Size: memmap.MiB, ReadOnly: true},
			{Path: rw, GPA: gpaRW, Size: memmap.MiB},
		}
	})
	g.start(t)
	g.con.waitText(t, "passthru done")
	out := g.con.String()
	for _, want := range []string{
		"ro before: read-only region\n", "rw before: writable region!\n",
		"ro after: read-only region\n", "rw after: written! region!\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %q:\n%s", want, out)
		}
	}
	if st := g.Status(); st.Exits["mmio"] < 8 {
		t.Errorf("exits %v: want the 8 dropped writes as MMIO exits", st.Exits)
	}
	b, err := os.ReadFile(rw)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte("written! region!")) {
		t.Errorf("writable file starts %q", b[:16])
	}
	if b, _ := os.ReadFile(ro); !bytes.HasPrefix(b[memmap.PageSize:], []byte("read-only region")) {
		t.Errorf("read-only file changed: %q", b[memmap.PageSize:memmap.PageSize+16])
	}
}

// meminfo reads a /proc/meminfo field.
func meminfo(t *testing.T, field string) int {
	t.Helper()
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), field+":"); ok {
			n, _ := strconv.Atoi(strings.Fields(v)[0])
			return n
		}
	}
	t.Fatalf("no %s in /proc/meminfo", field)
	return 0
}

// numaMaps returns the /proc/self/numa_maps line of the VM's RAM memfd.
func numaMaps(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/numa_maps")
	if errors.Is(err, os.ErrNotExist) {
		t.Skip("no /proc/self/numa_maps (kernel without NUMA)")
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "memfd:popvmm/"+name) {
			return l
		}
	}
	t.Fatalf("no memfd:popvmm/%s in numa_maps:\n%s", name, b)
	return ""
}

// TestKVMMemoryBacking runs a guest on RAM that is populated, mlocked and
// bound to NUMA node 0, and (when the host has free 2 MiB huge pages) on
// hugetlbfs pages.
func TestKVMMemoryBacking(t *testing.T) {
	testenv.RequireKVM(t)
	t.Run("mlock-numa", func(t *testing.T) {
		g := startGuest(t, "hello", 1, func(c *vmm.Config) {
			c.Name, c.NUMANode, c.Mlock = "numa", 0, true
		})
		line := numaMaps(t, "numa")
		if !strings.Contains(line, "bind:0") {
			t.Errorf("RAM not bound to node 0: %s", line)
		}
		// Locked and populated: all 16 MiB resident before the guest runs.
		if !strings.Contains(line, fmt.Sprintf("dirty=%d", 16*memmap.MiB/memmap.PageSize)) &&
			!strings.Contains(line, fmt.Sprintf("mapped=%d", 16*memmap.MiB/memmap.PageSize)) {
			t.Errorf("RAM not populated: %s", line)
		}
		g.start(t)
		g.con.waitText(t, "popvmm-guest: hello")
	})
	t.Run("hugetlb-2M", func(t *testing.T) {
		if free := meminfo(t, "HugePages_Free"); free < 8 || meminfo(t, "Hugepagesize") != 2048 {
			t.Skipf("%d free huge pages of %d KiB; needs 8 of 2 MiB (echo 8 > /proc/sys/vm/nr_hugepages)",
				free, meminfo(t, "Hugepagesize"))
		}
		before := meminfo(t, "HugePages_Free")
		g := startGuest(t, "hello", 1, func(c *vmm.Config) {
			c.Name, c.HugePageSize = "huge", 2*memmap.MiB
		})
		if used := before - meminfo(t, "HugePages_Free"); used != 8 {
			t.Errorf("%d huge pages taken for 16 MiB of RAM, want 8", used)
		}
		g.start(t)
		g.con.waitText(t, "popvmm-guest: hello")
		g.Close()
		if after := meminfo(t, "HugePages_Free"); after != before {
			t.Errorf("%d huge pages free after Close, %d before", after, before)
		}
	})
}
