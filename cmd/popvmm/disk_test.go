package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiskPack: `popvmm disk pack DIR IMAGE` makes the image and says so;
// a bad command line is a usage error (2), a missing directory a failure
// (1) naming it. internal/diskimage tests the images themselves.
func TestDiskPack(t *testing.T) {
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		t.Skipf("mkfs.ext4 not found (make deps installs e2fsprogs): %v", err)
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "prog")
	if err := os.MkdirAll(src, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "hello"), []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(dir, "prog.ext4")
	code, out, errs := popvmm(t, "disk", "pack", src, image, "--size", "32M")
	if code != exitOK || !strings.Contains(out, image+": 32 MiB ext4, 2 files from "+src) {
		t.Fatalf("disk pack %s %s = %d, stdout %q, stderr %q", src, image, code, out, errs)
	}
	if info, err := os.Stat(image); err != nil || info.Size() != 32<<20 {
		t.Fatalf("%s after disk pack: %v, %v", image, info, err)
	}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"disk", "pack", src}, exitUsage, "wants DIR IMAGE"},
		{[]string{"disk", "pack", src, filepath.Join(dir, "x.ext4"), "--size", "lots"}, exitUsage, `--size: "lots" is not a size`},
		{[]string{"disk", "pack", filepath.Join(dir, "nope"), filepath.Join(dir, "y.ext4")}, exitFailure, filepath.Join(dir, "nope")},
		{[]string{"disk", "pack", src, image}, exitFailure, image + ": already exists"},
		{[]string{"disk"}, exitUsage, "wants a subcommand"},
	} {
		code, _, errs := popvmm(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.want) {
			t.Errorf("popvmm %s = %d, stderr %q; want %d and %q", strings.Join(tc.args, " "), code, errs, tc.code, tc.want)
		}
	}
}
