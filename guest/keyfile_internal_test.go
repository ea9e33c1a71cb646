package guest

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestNewKeyFile: the key is written whole in OpenSSH format, 0600 in a
// 0700 directory, reads back as the key returned, and leaves no temporary
// file behind.
func TestNewKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	p := filepath.Join(dir, "id_ed25519")
	sk, err := newKeyFile(p, "a comment")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.ParseRawPrivateKey(b)
	if got, ok := k.(*ed25519.PrivateKey); err != nil || !ok || !got.Equal(sk) {
		t.Errorf("key file reads back as %T, %v; want the key returned", k, err)
	}
	for path, want := range map[string]os.FileMode{p: 0o600, dir: 0o700 | os.ModeDir} {
		if st, err := os.Stat(path); err != nil || st.Mode() != want {
			t.Errorf("%s: mode %v, %v; want %v", path, st.Mode(), err, want)
		}
	}
	if names := dirNames(t, dir); len(names) != 1 {
		t.Errorf("%s holds %v, want only the key", dir, names)
	}
}

// TestWriteFileAtomic: a write replaces the file whole with the mode
// asked; a write that cannot land leaves what was there and no temporary
// file, and its error names the path.
func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old, and longer than the new"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(p, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "new" {
		t.Errorf("after the write: %q, %v; want %q", b, err, "new")
	}
	if st, err := os.Stat(p); err != nil || st.Mode() != 0o644 {
		t.Errorf("mode %v, %v; want 0644", st.Mode(), err)
	}

	// A directory in the way: the rename fails.
	busy := filepath.Join(dir, "busy")
	if err := os.MkdirAll(filepath.Join(busy, "inside"), 0o700); err != nil {
		t.Fatal(err)
	}
	err := writeFileAtomic(busy, []byte("x"), 0o600)
	if err == nil || !strings.Contains(err.Error(), busy) {
		t.Errorf("writeFileAtomic over a directory = %v, want an error naming %s", err, busy)
	}
	if names := dirNames(t, dir); strings.Join(names, " ") != "busy f" {
		t.Errorf("%s holds %v after a failed write, want [busy f]", dir, names)
	}
	if err := writeFileAtomic(filepath.Join(dir, "none", "f"), []byte("x"), 0o600); err == nil {
		t.Error("writeFileAtomic into a missing directory = nil error")
	}
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}
