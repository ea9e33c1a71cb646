package initramfs_test

import (
	"bytes"
	"debug/elf"
	"errors"
	"io"
	"testing"

	"github.com/cavaliergopher/cpio"

	"github.com/popvmm/popvmm/initramfs"
)

type entry struct {
	mode cpio.FileMode
	data string
	link string
}

func read(t *testing.T, b []byte) (map[string]entry, []string) {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(b))
	got := map[string]entry{}
	var order []string
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return got, order
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		if h.ModTime.Unix() != 0 || h.Uid != 0 || h.Guid != 0 {
			t.Errorf("%s: mtime %v uid %d gid %d, want 0 0 0", h.Name, h.ModTime.Unix(), h.Uid, h.Guid)
		}
		got["/"+h.Name] = entry{h.Mode, string(data), h.Linkname}
		order = append(order, "/"+h.Name)
	}
}

func TestArchive(t *testing.T) {
	a := initramfs.New()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.File("/init", 0o755, []byte("#!/bin/sh\n")))
	must(a.File("/etc/popvmm/cluster.env", 0o644, []byte("X=1\n")))
	must(a.Symlink("/bin/sh", "/bin/busybox"))
	must(a.Dir("/proc", 0o555))
	b, err := a.Bytes()
	must(err)
	got, order := read(t, b)
	want := []string{"/bin", "/bin/sh", "/etc", "/etc/popvmm", "/etc/popvmm/cluster.env", "/init", "/proc"}
	if len(order) != len(want) {
		t.Fatalf("entries %v, want %v", order, want)
	}
	for i := range want {
		if order[i] != want[i] {
			t.Fatalf("entries %v, want %v (sorted, parents implicit)", order, want)
		}
	}
	if e := got["/init"]; e.mode != cpio.TypeReg|0o755 || e.data != "#!/bin/sh\n" {
		t.Errorf("/init = %+v", e)
	}
	if e := got["/bin/sh"]; e.mode&cpio.ModeType != cpio.TypeSymlink || e.link != "/bin/busybox" {
		t.Errorf("/bin/sh = %+v", e)
	}
	if e := got["/etc/popvmm"]; e.mode != cpio.TypeDir|0o755 {
		t.Errorf("implicit dir mode = %v", e.mode)
	}
	if e := got["/proc"]; e.mode != cpio.TypeDir|0o555 {
		t.Errorf("/proc mode = %v", e.mode)
	}
	again, _ := a.Bytes()
	if !bytes.Equal(b, again) {
		t.Error("writing the same archive twice gave different bytes")
	}
}

func TestArchiveErrors(t *testing.T) {
	a := initramfs.New()
	if err := a.File("relative", 0o644, nil); err == nil {
		t.Error("relative path accepted")
	}
	if err := a.File("/", 0o644, nil); err == nil {
		t.Error("/ accepted")
	}
	a.File("/x", 0o644, nil)
	if err := a.File("/x", 0o644, nil); err == nil {
		t.Error("duplicate path accepted")
	}
	if err := a.File("/x/y", 0o644, nil); err == nil {
		t.Error("file under a file accepted")
	}
	if err := a.Symlink("/l", ""); err == nil {
		t.Error("empty symlink target accepted")
	}
	if err := a.Dir("/d", 0o755); err != nil {
		t.Error(err)
	}
	if err := a.Dir("/d", 0o755); err != nil {
		t.Errorf("directory added twice: %v", err)
	}
}

// TestELFHostProgram adds a dynamically linked host program with its
// libraries resolved from the host root.
func TestELFHostProgram(t *testing.T) {
	const prog = "/bin/true"
	f, err := elf.Open(prog)
	if err != nil {
		t.Skipf("no ELF %s on this host: %v", prog, err)
	}
	libs, _ := f.ImportedLibraries()
	f.Close()
	if len(libs) == 0 {
		t.Skipf("%s is static here", prog)
	}
	a := initramfs.New()
	if err := a.ELF("/bin/true", prog, []string{"/"}, []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64"}); err != nil {
		t.Fatal(err)
	}
	var sawLibc, sawInterp bool
	for _, p := range a.Paths() {
		sawLibc = sawLibc || p == "/lib/x86_64-linux-gnu/libc.so.6" || p == "/usr/lib/x86_64-linux-gnu/libc.so.6"
		sawInterp = sawInterp || p == "/lib64/ld-linux-x86-64.so.2"
	}
	if !sawLibc || !sawInterp {
		t.Errorf("paths %v lack libc or the interpreter", a.Paths())
	}
	if err := a.ELF("/bin/nope", prog, []string{t.TempDir()}, []string{"/lib"}); err == nil {
		t.Error("ELF with libraries missing from the root succeeded")
	}
}

func FuzzArchivePaths(f *testing.F) {
	f.Add("/a/b", "/a", "/c")
	f.Add("/x/../y", "/y/z", "//w")
	f.Fuzz(func(t *testing.T, p1, p2, p3 string) {
		a := initramfs.New()
		a.File(p1, 0o644, []byte(p1))
		a.Symlink(p2, "/t")
		a.Dir(p3, 0o755)
		b, err := a.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		got, order := read(t, b)
		if len(got) != len(a.Paths()) || len(order) != len(got) {
			t.Fatalf("archive has %d entries, Paths %d", len(got), len(a.Paths()))
		}
	})
}
