// Package initramfs builds Linux initramfs archives (cpio "newc") in Go,
// reproducibly: entries are written in path order with fixed owners, times
// and inode numbers, so the same inputs give the same bytes. images/ uses it
// to build each flavour's ramdisk; popvmm uses it at run time for the small
// per-cluster overlay (keys and cluster facts) appended to that ramdisk,
// which Linux accepts as a concatenated archive.
package initramfs

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// Kind of an archive entry.
type Kind int

// Entry kinds.
const (
	KindDir Kind = iota
	KindFile
	KindSymlink
)

// Entry is one path of the archive.
type Entry struct {
	Kind   Kind
	Mode   os.FileMode // permission bits
	Data   []byte      // file contents
	Target string      // symlink target
}

// Archive is an in-memory initramfs. Paths are absolute, cleaned, and
// parent directories are created implicitly (0755).
type Archive struct {
	entries map[string]Entry
}

// New returns an empty archive.
func New() *Archive {
	return &Archive{entries: map[string]Entry{}}
}

func clean(p string) (string, error) {
	if !strings.HasPrefix(p, "/") {
		return "", fmt.Errorf("initramfs path %q is not absolute", p)
	}
	c := path.Clean(p)
	if c == "/" {
		return "", errors.New("initramfs path / is implicit")
	}
	return c, nil
}

func (a *Archive) put(p string, e Entry) error {
	c, err := clean(p)
	if err != nil {
		return err
	}
	if old, ok := a.entries[c]; ok && !(old.Kind == KindDir && e.Kind == KindDir) {
		return fmt.Errorf("initramfs path %s added twice", c)
	}
	for d := path.Dir(c); d != "/"; d = path.Dir(d) {
		if old, ok := a.entries[d]; ok && old.Kind != KindDir {
			return fmt.Errorf("initramfs path %s: parent %s is not a directory", c, d)
		}
		if _, ok := a.entries[d]; !ok {
			a.entries[d] = Entry{Kind: KindDir, Mode: 0o755}
		}
	}
	a.entries[c] = e
	return nil
}

// Dir adds a directory.
func (a *Archive) Dir(p string, mode os.FileMode) error {
	return a.put(p, Entry{Kind: KindDir, Mode: mode.Perm()})
}

// File adds a regular file.
func (a *Archive) File(p string, mode os.FileMode, data []byte) error {
	return a.put(p, Entry{Kind: KindFile, Mode: mode.Perm(), Data: data})
}

// Symlink adds a symbolic link.
func (a *Archive) Symlink(p, target string) error {
	if target == "" {
		return fmt.Errorf("initramfs symlink %s has no target", p)
	}
	return a.put(p, Entry{Kind: KindSymlink, Mode: 0o777, Target: target})
}

// HostFile adds the host file src at p with src's permission bits.
func (a *Archive) HostFile(p, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", src)
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return a.File(p, st.Mode(), data)
}

// Paths lists the archive's paths in the order they are written.
func (a *Archive) Paths() []string {
	return slices.Sorted(func(yield func(string) bool) {
		for p := range a.entries {
			if !yield(p) {
				return
			}
		}
	})
}

// Entry returns the entry at p.
func (a *Archive) Entry(p string) (Entry, bool) {
	e, ok := a.entries[p]
	return e, ok
}

// WriteTo writes the archive: entries in path order (parents first), owner
// root, modification time 0, inode numbers counting from 1.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	cw := &countWriter{w: w}
	cp := cpio.NewWriter(cw)
	for i, p := range a.Paths() {
		e := a.entries[p]
		h := &cpio.Header{Name: strings.TrimPrefix(p, "/"), Inode: int64(i + 1), Links: 1}
		var body []byte
		switch e.Kind {
		case KindDir:
			h.Mode = cpio.TypeDir | cpio.FileMode(e.Mode)
			h.Links = 2
		case KindFile:
			h.Mode = cpio.TypeReg | cpio.FileMode(e.Mode)
			body = e.Data
		case KindSymlink:
			h.Mode = cpio.TypeSymlink | 0o777
			body = []byte(e.Target)
		}
		h.Size = int64(len(body))
		if err := cp.WriteHeader(h); err != nil {
			return cw.n, fmt.Errorf("write %s: %w", p, err)
		}
		if _, err := cp.Write(body); err != nil {
			return cw.n, fmt.Errorf("write %s: %w", p, err)
		}
	}
	if err := cp.Close(); err != nil {
		return cw.n, err
	}
	return cw.n, nil
}

// Bytes returns the written archive.
func (a *Archive) Bytes() ([]byte, error) {
	var b bytes.Buffer
	_, err := a.WriteTo(&b)
	return b.Bytes(), err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ELF adds the program src at p and every shared library it needs: its
// interpreter and DT_NEEDED entries, followed transitively, looked up in
// libDirs (e.g. "/lib/x86_64-linux-gnu") of each root tree in turn (e.g.
// unpacked .debs). A library keeps its path from the root; symbolic links
// inside a root resolve within that root, never on the host. A library an
// earlier program brought is not added again.
func (a *Archive) ELF(p, src string, roots, libDirs []string) error {
	if err := a.HostFile(p, src); err != nil {
		return err
	}
	seen := map[string]bool{}
	added := map[string]string{} // host file → its first guest path
	queue := []string{src}
	for len(queue) > 0 {
		file := queue[0]
		queue = queue[1:]
		interp, needed, err := elfDeps(file)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		wanted := needed
		if interp != "" {
			wanted = append([]string{interp}, needed...)
		}
		for _, lib := range wanted {
			guest, host, err := findLib(lib, roots, libDirs)
			if err != nil {
				return fmt.Errorf("%s needs %s: %w", file, lib, err)
			}
			if seen[guest] {
				continue
			}
			seen[guest] = true
			if _, ok := a.entries[guest]; ok {
				continue // an earlier ELF's, with what it needs
			}
			if first, ok := added[host]; ok {
				// The same file under a second name (the interpreter
				// is both /lib64/ld-linux… and a DT_NEEDED entry).
				if err := a.Symlink(guest, first); err != nil {
					return err
				}
				continue
			}
			added[host] = guest
			if err := a.HostFile(guest, host); err != nil {
				return err
			}
			queue = append(queue, host)
		}
	}
	return nil
}

// findLib locates lib (a bare name, or an absolute path for the
// interpreter) in roots and returns its path in the guest and the resolved
// host file.
func findLib(lib string, roots, libDirs []string) (guest, host string, err error) {
	cands := []string{lib}
	if !path.IsAbs(lib) {
		cands = nil
		for _, d := range libDirs {
			cands = append(cands, path.Join(d, lib))
		}
	}
	for _, r := range roots {
		for _, c := range cands {
			if h, err := resolveIn(r, c); err == nil {
				return c, h, nil
			}
		}
	}
	return "", "", fmt.Errorf("not found in %v under %v", libDirs, roots)
}

// resolveIn follows symbolic links of p inside root (absolute targets are
// taken relative to root) and returns the regular file's host path.
func resolveIn(root, p string) (string, error) {
	for range 16 {
		host := filepath.Join(root, p)
		st, err := os.Lstat(host)
		if err != nil {
			return "", err
		}
		if st.Mode()&os.ModeSymlink == 0 {
			if !st.Mode().IsRegular() {
				return "", fmt.Errorf("%s is not a regular file", host)
			}
			return host, nil
		}
		t, err := os.Readlink(host)
		if err != nil {
			return "", err
		}
		if !path.IsAbs(t) {
			t = path.Join(path.Dir(p), t)
		}
		p = t
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", p)
}

func elfDeps(file string) (interp string, needed []string, err error) {
	f, err := elf.Open(file)
	if err != nil {
		return "", nil, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b, err := io.ReadAll(p.Open())
			if err != nil {
				return "", nil, err
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	needed, err = f.ImportedLibraries()
	if err != nil && !errors.Is(err, elf.ErrNoSymbols) {
		return "", nil, err
	}
	return interp, needed, nil
}
