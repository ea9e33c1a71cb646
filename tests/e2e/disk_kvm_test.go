package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestKVMDisks: a light kernel with a writable and a read-only virtio-blk
// disk. The guest sees both with their serials, its writes to the
// writable disk are on the host file after `down` and read back after a
// new `up`, a write to the read-only disk fails in the guest and leaves
// the file as it was, status counts the requests, and a second cluster
// naming the writable disk while the first runs is refused, naming the
// disk and the popvmm that holds it.
func TestKVMDisks(tt *testing.T) {
	dir := tt.TempDir()
	data, ro := filepath.Join(dir, "data.img"), filepath.Join(dir, "ro.img")
	roBytes := bytes.Repeat([]byte("read-only-disk! "), 64<<10/16)
	if err := os.WriteFile(data, make([]byte, 16<<20), 0o600); err != nil {
		tt.Fatal(err)
	}
	if err := os.WriteFile(ro, roBytes, 0o600); err != nil {
		tt.Fatal(err)
	}
	disks := fmt.Sprintf("[[kernel.disk]]\npath = %q\nserial = \"data0\"\n[[kernel.disk]]\npath = %q\nread_only = true\n", data, ro)
	c := newKVMClusterExtra(tt, "kvmdisk", map[string]string{"primary": disks},
		kvmKernel{"primary", "light", "0", "256M", "up"})
	t := c.t
	c.must("up", "-d", c.config)
	c.waitSSHD("primary")
	out := c.mustSSH("primary", "cat /sys/block/vda/serial; echo; cat /sys/block/vdb/ro; "+
		"printf 'written-by-the-guest' | dd of=/dev/vda bs=512 conv=sync,fsync 2>&1; "+
		"if printf x | dd of=/dev/vdb bs=512 conv=sync,fsync 2>/dev/null; then echo ro-write-ok; else echo ro-write-failed; fi")
	for _, want := range []string{"data0", "\n1\n", "ro-write-failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("guest output %q lacks %q", out, want)
		}
	}
	st := c.status()
	if k := st.Kernel("primary"); k.Machine == nil || !strings.Contains(strings.Join(k.Machine.Devs["vda"], " "), "write 1 requests") {
		t.Errorf("status of vda: %v", k.Machine)
	}

	// A second cluster may not attach the disk the first holds writable.
	other := filepath.Join(dir, "other.toml")
	cfg, _ := os.ReadFile(c.config)
	text := strings.NewReplacer(`name = "kvmdisk"`, `name = "kvmdisk2"`, c.runDir, c.runDir+"2", `cpus = "`+guestCore(t, "0")+`"`, `cpus = "`+guestCore(t, "1")+`"`, "10.197.", "10.196.").Replace(string(cfg))
	if err := os.WriteFile(other, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	msg, err := exec.Command(c.bin, "up", "-d", other).CombinedOutput()
	if err == nil {
		exec.Command(c.bin, "down", "-c", other).Run()
		t.Fatalf("a second cluster attached %s while the first holds it writable:\n%s", data, msg)
	}
	if !strings.Contains(string(msg), data) || !strings.Contains(string(msg), fmt.Sprintf("(pid %d)", st.PID)) {
		t.Errorf("the refusal does not name the disk %s and its holder (pid %d):\n%s", data, st.PID, msg)
	}

	c.down(st.PID)
	got, err := os.ReadFile(data)
	if err != nil || !bytes.HasPrefix(got, []byte("written-by-the-guest")) {
		t.Fatalf("after down the disk starts %q, want the guest's write (%v)", got[:32], err)
	}
	if got, _ := os.ReadFile(ro); !bytes.Equal(got, roBytes) {
		t.Error("the read-only disk changed")
	}

	// Up again: the write is still there, seen from the guest. The first
	// boot's console log goes first, so that waiting for the ssh server
	// waits for this boot's.
	if err := os.Remove(filepath.Join(c.runDir, "primary.console.log")); err != nil {
		t.Fatal(err)
	}
	c.must("up", "-d", c.config)
	c.waitSSHD("primary")
	if out := c.mustSSH("primary", "dd if=/dev/vda bs=20 count=1 2>/dev/null"); !strings.Contains(out, "written-by-the-guest") {
		t.Errorf("after down and up the guest reads %q", out)
	}
	c.down(c.status().PID)
}
