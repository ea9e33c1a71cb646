package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/testkernel"
)

// TestValidateInitrdWithOverlay: validate refuses an initrd that fits in
// the kernel's memory alone but not with the initramfs overlay the
// supervisor appends to it; it took one, which then failed at `up`.
func TestValidateInitrdWithOverlay(t *testing.T) {
	dir := t.TempDir()
	testkernel.Write(t, dir, "pvh", testkernel.ELFLoadable(0x1000000, 0x1000000, []byte("text"), 0x1000))
	initrd := testkernel.Write(t, dir, "initrd.img", []byte("0707"))
	cfg := testkernel.Write(t, dir, "cluster.toml", []byte(fmt.Sprintf(`
[cluster]
name = "fit"
run_dir = %q
[cluster.network]
subnet = "10.199.0.0/24"

[[kernel]]
name = "primary"
cpus = "0"
memory = "64M"
kernel = "pvh"
initrd = "initrd.img"
`, filepath.Join(dir, "run"))))
	f, err := cluster.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.Check(f, cluster.SysHost{})
	if err != nil {
		t.Skipf("this host cannot take the config: %v", err)
	}
	k := cl.Kernels[0]
	room := sort.Search(int(k.Memory), func(n int) bool { return k.InitrdFits(uint64(n)+1) != nil })
	if err := os.Truncate(initrd, int64(room)); err != nil {
		t.Fatal(err)
	}
	code, _, errs := popvmm(t, "validate", cfg)
	if code != exitUsage || !strings.Contains(errs, "kernel[0].initrd: ") || !strings.Contains(errs, "overlay") {
		t.Errorf("popvmm validate with an initrd of %d bytes, all the room there is = status %d, stderr %q; want %d and an error at kernel[0].initrd",
			room, code, errs, exitUsage)
	}
}
