package main

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/testenv"
)

const debs = "../build/debs"

// requireDebs skips (or, with POPVMM_REQUIRE_KVM=1, fails) unless
// images/fetch.sh has unpacked the packages the initramfs is made of
// (`make initramfs` does).
func requireDebs(t *testing.T) {
	t.Helper()
	var problem error
	for _, p := range append([]string{"busybox-static", "dropbear-bin"}, libPackages...) {
		if _, err := os.Stat(filepath.Join(debs, p, ".sha256")); err != nil {
			problem = fmt.Errorf("package %s not fetched (run `make initramfs`): %w", p, err)
			break
		}
	}
	testenv.Require(t, problem)
}

// TestInitramfs builds both flavours twice, checks the bytes are identical
// (reproducible), lists the contents and checks what each flavour holds.
func TestInitramfs(t *testing.T) {
	requireDebs(t)
	dir := t.TempDir()
	// path → wanted "mode" field, or "-> target" for a symlink, or "" for
	// present at all.
	want := map[string]map[string]string{
		"light": {"/init": "0100755", "/bin/busybox": "0100755", "/bin/sh": "-> /bin/busybox", "/bin/cttyhack": "-> /bin/busybox",
			"/sbin/ip": "-> /bin/busybox", "/etc/passwd": "0100644", "/etc/popvmm/init.d": "040755", "/usr/sbin/dropbear": "0100755", "/usr/bin/dbclient": "0100755"},
		"full": {"/init": "0100755", "/bin/sh": "-> /bin/busybox", "/usr/sbin/dropbear": "0100755", "/lib64/ld-linux-x86-64.so.2": "",
			"/lib/x86_64-linux-gnu/libc.so.6": "", "/usr/lib/x86_64-linux-gnu/libtomcrypt.so.1": "", "/usr/lib/x86_64-linux-gnu/libgmp.so.10": ""},
	}
	module := filepath.Join(dir, "winnet.ko") // any file: what the build puts in
	os.WriteFile(module, []byte("\x7fELF module"), 0o600)
	for _, f := range []string{"light", "full"} {
		want[f]["/lib/modules/winnet.ko"] = "0100644"
		a, b := filepath.Join(dir, f+"-a.cpio"), filepath.Join(dir, f+"-b.cpio")
		for _, out := range []string{a, b} {
			if err := build(f, debs, "../initramfs", "", module, out); err != nil {
				t.Fatalf("build %s: %v", f, err)
			}
		}
		da, _ := os.ReadFile(a)
		db, _ := os.ReadFile(b)
		if !bytes.Equal(da, db) {
			t.Errorf("%s initramfs not reproducible: sha256 %x vs %x", f, sha256.Sum256(da), sha256.Sum256(db))
		}
		var list bytes.Buffer
		if err := listArchive(&list, a); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s initramfs: %d bytes, sha256 %x, contents:\n%s", f, len(da), sha256.Sum256(da), list.String())
		entries := map[string]string{} // path → mode, or "-> target"
		for _, line := range strings.Split(strings.TrimSpace(list.String()), "\n") {
			fields := strings.Fields(line) // MODE SIZE PATH [-> TARGET]
			entries[fields[2]] = fields[0]
			if len(fields) == 5 {
				entries[fields[2]] = "-> " + fields[4]
			}
		}
		for path, w := range want[f] {
			got, ok := entries[path]
			if !ok || (w != "" && got != w) {
				t.Errorf("%s initramfs: %s is %q (present %v), want %q", f, path, got, ok, w)
			}
		}
	}
}

func TestBuildErrors(t *testing.T) {
	dir := t.TempDir()
	if err := build("medium", dir, dir, "", "", filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "medium") {
		t.Errorf("build(medium) = %v", err)
	}
	if err := build("light", dir, "../initramfs", "", "", filepath.Join(dir, "x")); err == nil || !strings.Contains(err.Error(), "busybox") {
		t.Errorf("build without packages = %v, want a busybox error", err)
	}
}
