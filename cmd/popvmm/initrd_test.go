package main

import (
	"os"
	"path/filepath"
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
	cfg := testkernel.InitrdCluster(t, dir, []byte("0707"), 4)
	initrd := filepath.Join(dir, "initrd.img")
	f, err := cluster.Load(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := cluster.Check(f, cluster.SysHost{})
	if err != nil {
		t.Skipf("this host cannot take the config: %v", err)
	}
	k := cl.Kernels[0]
	room := testkernel.InitrdRoom(k)
	if err := os.Truncate(initrd, int64(room)); err != nil {
		t.Fatal(err)
	}
	code, _, errs := popvmm(t, "validate", cfg)
	if code != exitUsage || !strings.Contains(errs, "kernel[0].initrd: ") || !strings.Contains(errs, "overlay") {
		t.Errorf("popvmm validate with an initrd of %d bytes, all the room there is = status %d, stderr %q; want %d and an error at kernel[0].initrd",
			room, code, errs, exitUsage)
	}
}
