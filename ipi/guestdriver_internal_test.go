package ipi

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
)

// TestUnmaskINTx: the command register's interrupt-disable bit is cleared
// in configuration space, the other bits kept (uio_pci_generic's users
// unmask this way).
func TestUnmaskINTx(t *testing.T) {
	p := filepath.Join(t.TempDir(), "config")
	cfg := make([]byte, 256)
	binary.LittleEndian.PutUint16(cfg[4:], commandIntxOff|0x6)
	if err := os.WriteFile(p, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range 2 { // the second finds it unmasked already
		if err := unmaskINTx(f); err != nil {
			t.Fatal(err)
		}
		got, _ := os.ReadFile(p)
		if cmd := binary.LittleEndian.Uint16(got[4:]); cmd != 0x6 {
			t.Fatalf("command = %#x, want 0x6", cmd)
		}
	}
}
