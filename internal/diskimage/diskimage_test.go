package diskimage_test

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/diskimage"
)

// requireTools skips where e2fsprogs is missing (make deps installs it);
// POPVMM_REQUIRE_IMAGES=1 makes that a failure.
func requireTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"mkfs.ext4", "debugfs", "e2fsck"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("POPVMM_REQUIRE_IMAGES") == "1" {
				t.Fatalf("%s not found (make deps): %v", tool, err)
			}
			t.Skipf("%s not found (make deps installs e2fsprogs): %v", tool, err)
		}
	}
}

// debugfs runs one debugfs request against image and returns its output.
func debugfs(t *testing.T, image, request string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", request, image).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q %s: %v", request, image, err)
	}
	return string(out)
}

func write(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
}

// TestPack packs a tree with nested directories, an executable, a symlink
// and 3000 small files (more than mke2fs's default inode ratio gives an
// image that size), and reads them back with debugfs.
func TestPack(t *testing.T) {
	requireTools(t)
	dir := filepath.Join(t.TempDir(), "tree")
	write(t, filepath.Join(dir, "bin", "hello"), "#!/bin/sh\necho hello from the disk\n", 0o755)
	write(t, filepath.Join(dir, "data", "big"), strings.Repeat("popvmm ", 300_000), 0o644)
	for i := range 3000 {
		write(t, filepath.Join(dir, "many", fmt.Sprintf("f%04d", i)), fmt.Sprint(i), 0o644)
	}
	if err := os.Symlink("bin/hello", filepath.Join(dir, "run")); err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(t.TempDir(), "prog.ext4")
	r, err := diskimage.Pack(dir, image, diskimage.Options{Label: "prog"})
	if err != nil {
		t.Fatalf("Pack(%s): %v", dir, err)
	}
	info, err := os.Stat(image)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(info.Size()) != r.Size || r.Size%(1<<20) != 0 {
		t.Errorf("image is %d bytes, Result.Size %d: want equal, a multiple of 1 MiB", info.Size(), r.Size)
	}
	if want := uint64(3000 + 7); r.Content.Files != want { // the tree, bin, hello, data, big, many, run, 3000 files
		t.Errorf("Pack counted %d files, want %d", r.Content.Files, want)
	}
	if out, err := exec.Command("e2fsck", "-fn", image).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", image, err, out)
	}
	if got := debugfs(t, image, "cat /bin/hello"); got != "#!/bin/sh\necho hello from the disk\n" {
		t.Errorf("/bin/hello in the image = %q", got)
	}
	if got := debugfs(t, image, "cat /many/f2999"); got != "2999" {
		t.Errorf("/many/f2999 in the image = %q, want 2999", got)
	}
	if got := debugfs(t, image, "stat /bin/hello"); !strings.Contains(got, "Mode:  0755") && !strings.Contains(got, "Mode:  00755") {
		t.Errorf("/bin/hello's mode in the image:\n%s", got)
	}
	if got := debugfs(t, image, "stat /run"); !strings.Contains(got, `Fast link dest: "bin/hello"`) {
		t.Errorf("/run in the image is not the symlink to bin/hello:\n%s", got)
	}
	if got := debugfs(t, image, "stat /data/big"); !strings.Contains(got, "Size: 2100000") {
		t.Errorf("/data/big's size in the image:\n%s", got)
	}
	// Headroom: a quarter more files fit (the inode count), and a fifth
	// more data (the blocks).
	stats := debugfs(t, image, "stats")
	var free, freeInodes uint64
	for _, line := range strings.Split(stats, "\n") {
		fmt.Sscanf(line, "Free blocks: %d", &free)
		fmt.Sscanf(line, "Free inodes: %d", &freeInodes)
	}
	if freeInodes < r.Content.Files/4 {
		t.Errorf("%d free inodes for %d files: want at least a quarter more", freeInodes, r.Content.Files)
	}
	if free*4096 < r.Content.Blocks*4096/5 {
		t.Errorf("%d free blocks for %d used: want at least a fifth more", free, r.Content.Blocks)
	}
	if _, err := os.Stat(image + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("%s.tmp left behind: %v", image, err)
	}
}

// TestPackErrors: each refusal names the file or option at fault, and
// leaves no image behind.
func TestPackErrors(t *testing.T) {
	requireTools(t)
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "tree")
	write(t, filepath.Join(dir, "f"), strings.Repeat("x", 3<<20), 0o644)
	existing := filepath.Join(tmp, "existing.ext4")
	write(t, existing, "not an image", 0o644)
	for _, tc := range []struct {
		name, dir, image string
		o                diskimage.Options
		want             []string
	}{
		{"missing directory", filepath.Join(tmp, "nope"), filepath.Join(tmp, "a.ext4"), diskimage.Options{}, []string{filepath.Join(tmp, "nope"), "no such file"}},
		{"not a directory", filepath.Join(dir, "f"), filepath.Join(tmp, "b.ext4"), diskimage.Options{}, []string{filepath.Join(dir, "f"), "not a directory"}},
		{"image exists", dir, existing, diskimage.Options{}, []string{existing, "already exists", "--force"}},
		{"image's directory missing", dir, filepath.Join(tmp, "no", "c.ext4"), diskimage.Options{}, []string{filepath.Join(tmp, "no", "c.ext4"), "no such file"}},
		{"image inside the directory", dir, filepath.Join(dir, "d.ext4"), diskimage.Options{}, []string{filepath.Join(dir, "d.ext4"), "inside " + dir}},
		{"size too small", dir, filepath.Join(tmp, "e.ext4"), diskimage.Options{Size: 4 << 20}, []string{"size 4 MiB", dir, "needs at least"}},
		{"label too long", dir, filepath.Join(tmp, "f.ext4"), diskimage.Options{Label: "a-label-of-17-byt"}, []string{`label "a-label-of-17-byt"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := diskimage.Pack(tc.dir, tc.image, tc.o)
			if err == nil {
				t.Fatalf("Pack(%s, %s, %+v) = nil error", tc.dir, tc.image, tc.o)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Pack(%s, %s, %+v) = %v, want it to say %q", tc.dir, tc.image, tc.o, err, w)
				}
			}
			if tc.image != existing {
				if _, err := os.Stat(tc.image); !os.IsNotExist(err) {
					t.Errorf("%s exists after a refused Pack: %v", tc.image, err)
				}
			}
		})
	}
	if data, _ := os.ReadFile(existing); string(data) != "not an image" {
		t.Errorf("%s was changed by a refused Pack", existing)
	}
	// --force replaces it.
	if _, err := diskimage.Pack(dir, existing, diskimage.Options{Force: true}); err != nil {
		t.Fatalf("Pack(%s, %s, Force) = %v", dir, existing, err)
	}
	if got := debugfs(t, existing, "stat /f"); !strings.Contains(got, fmt.Sprintf("Size: %d", 3<<20)) {
		t.Errorf("/f in the forced image:\n%s", got)
	}
}

// TestEstimate: the size grows with the content and always leaves room for
// the journal and metadata.
func TestEstimate(t *testing.T) {
	for _, tc := range []struct {
		c    diskimage.Content
		want uint64 // MiB
	}{
		{diskimage.Content{Files: 1, Blocks: 1}, 21},                             // 16 MiB metadata + 4 MiB journal + 1 block
		{diskimage.Content{Files: 10, Blocks: 256 * 100}, 141},                   // 100 MiB: 120 + 16 + 4
		{diskimage.Content{Files: 1000, Blocks: 256 * 1024}, 1278},               // 1 GiB: 1228.8 + 16 + 32 + inodes
		{diskimage.Content{Files: 400_000, Blocks: 256 * 10}, 16 + 4 + 12 + 123}, // many files: the inode tables count
	} {
		if got := diskimage.Estimate(tc.c) >> 20; got != tc.want {
			t.Errorf("Estimate(%+v) = %d MiB, want %d", tc.c, got, tc.want)
		}
	}
}
