package cluster_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
)

// primaryMem is where edit can add keys to kernel[0].
const primaryMem = "memory = \"512M\""

// TestDisksValid: a root image shared read-only by two kernels, an upper
// disk and data disks resolve in the guest's device order.
func TestDisksValid(t *testing.T) {
	dir := t.TempDir()
	upper, data := filepath.Join(dir, "upper.img"), filepath.Join(dir, "data.img")
	for _, p := range []string{upper, data} {
		if err := os.WriteFile(p, make([]byte, 1<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	text := edit(primaryMem, primaryMem+"\nroot = \"blob\"\nroot_upper = \""+upper+"\"",
		"", "root = \"blob\"\n[[kernel.disk]]\npath = \""+data+"\"\nserial = \"data0\"\n[[kernel.disk]]\npath = \"blob\"\nread_only = true\n")
	cl, err := load(t, text, fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	p, s := cl.Kernels[0], cl.Kernels[1]
	if len(p.Disks) != 2 || p.Disks[0].Role != cluster.RoleRoot || !p.Disks[0].ReadOnly || p.Disks[1].Role != cluster.RoleRootUpper || p.Disks[1].ReadOnly {
		t.Fatalf("primary's disks %+v", p.Disks)
	}
	if root, up := p.RootDisk(); root != "/dev/vda" || up != "/dev/vdb" {
		t.Errorf("primary's root %q upper %q", root, up)
	}
	if len(s.Disks) != 3 || s.Disks[1].Path != data || s.Disks[1].Serial != "data0" || s.Disks[1].Size != 1<<20 || !s.Disks[2].ReadOnly {
		t.Fatalf("secondary's disks %+v", s.Disks)
	}
	if root, up := s.RootDisk(); root != "/dev/vda" || up != "" {
		t.Errorf("secondary's root %q upper %q", root, up)
	}
	for i, want := range map[int]string{0: "vda", 25: "vdz", 26: "vdaa", 27: "vdab"} {
		if got := cluster.DeviceName(i); got != want {
			t.Errorf("DeviceName(%d) = %q, want %q", i, got, want)
		}
	}
}

// TestDiskErrors: every refused disk names its field and why; a file
// writable in one place and attached in another is refused by identity
// (device and inode), whatever path names it.
func TestDiskErrors(t *testing.T) {
	dir := t.TempDir()
	rw, link := filepath.Join(dir, "rw.img"), filepath.Join(dir, "link.img")
	if err := os.WriteFile(rw, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(rw, link); err != nil {
		t.Fatal(err)
	}
	disk := func(path string, extra string) string {
		return "[[kernel.disk]]\npath = \"" + path + "\"\n" + extra
	}
	for _, c := range []struct {
		name, text string
		want       []string
	}{
		{"missing", edit("", disk("/nonexistent.img", "")), []string{"kernel[1].disk[0].path: /nonexistent.img: no such file or directory"}},
		{"directory", edit("", disk("images", "")), []string{"kernel[1].disk[0].path: ", "is a directory"}},
		{"fifo", edit("", disk("fifo", "")), []string{"kernel[1].disk[0].path: ", "not a regular file or block device"}},
		{"odd size", edit("", disk("notakernel", "read_only = true\n")), []string{"kernel[1].disk[0].path: ", "6 bytes: a disk is a non-zero whole number of 512-byte sectors"}},
		{"no path", edit("", "[[kernel.disk]]\nserial = \"x\"\n"), []string{"kernel[1].disk[0].path: required"}},
		{"long serial", edit("", disk("blob", "serial = \"123456789012345678901\"\n")), []string{"kernel[1].disk[0].serial: ", "over the 20"}},
		{"upper without root", edit("", "root_upper = \"blob\"\n"), []string{"kernel[1].root_upper: set without root"}},
		{"root missing", edit("", "root = \"nothere.ext4\"\n"), []string{"kernel[1].root: ", "no such file or directory"}},
		{"writable in two kernels", edit(primaryMem, primaryMem+"\n"+disk(rw, ""), "", disk(link, "")),
			[]string{"kernel[1].disk[0].path: " + link + " is the same file as " + rw + ` (kernel "primary"'s kernel[0].disk[0].path)`}},
		{"writable beside read-only", edit(primaryMem, primaryMem+"\n"+disk(rw, "read_only = true\n"), "", disk(link, "")),
			[]string{"kernel[1].disk[0].path: ", "is the same file as"}},
		{"writable twice in one kernel", edit("", disk(rw, "")+disk(link, "read_only = true\n")),
			[]string{"kernel[1].disk[1].path: ", "is the same file as"}},
		{"root writable elsewhere", edit(primaryMem, primaryMem+"\nroot = \""+rw+"\"", "", disk(link, "")),
			[]string{"kernel[1].disk[0].path: ", "is the same file as"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := load(t, c.text, fakeHost{})
			if err == nil {
				t.Fatalf("Check succeeded, want %q", c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("errors:\n%v\nwant one containing %q", err, w)
				}
			}
		})
	}
}
