package supervisor_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vtty"
)

// bootRecorder is a launcher that keeps each kernel's Boot.
type bootRecorder struct {
	mu    sync.Mutex
	boots map[string]supervisor.Boot
}

func (l *bootRecorder) Launch(ctx context.Context, k *cluster.Kernel, b supervisor.Boot, console *vtty.Console) (supervisor.Machine, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.boots[k.Name] = b
	return &fakeMachine{done: make(chan struct{}), name: k.Name}, nil
}

// TestOverlayAlignedAfterInitrd: the kernel unpacks the initrd's
// concatenated archives only where each starts at a multiple of 4 bytes
// (init/initramfs.c, unpack_to_rootfs: a '0' at an unaligned offset is
// taken for compressed data, "invalid magic at start of compressed
// archive", and the rest is dropped; NUL bytes between archives are
// skipped). A distribution's initrd is compressed and its length any
// number: the overlay appended right after it, with the cluster's keys,
// addresses and names, was lost. It must start aligned, after NUL
// padding.
func TestOverlayAlignedAfterInitrd(t *testing.T) {
	cl := launchableCluster(t, "pad")
	var base []byte
	for text := "a compressed newc archive stands in here"; len(base)%4 == 0; text += "." {
		var gz bytes.Buffer // the case at hand: a gzip member of a length not a multiple of 4
		w := gzip.NewWriter(&gz)
		w.Write([]byte(text))
		w.Close()
		base = gz.Bytes()
	}
	initrd := filepath.Join(t.TempDir(), "initrd.img")
	if err := os.WriteFile(initrd, base, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, k := range cl.Kernels {
		k.InitrdPath = initrd
	}
	l := &bootRecorder{boots: map[string]supervisor.Boot{}}
	startWith(t, cl, supervisor.Options{Launcher: l})
	overlay, err := os.ReadFile(filepath.Join(cl.RunDir, "primary.overlay.cpio"))
	if err != nil {
		t.Fatal(err)
	}
	l.mu.Lock()
	got := l.boots["primary"].Initrd
	l.mu.Unlock()
	// validate sized this initrd (guest.CheckInitramfs) before up: the
	// same length, from the same code, with stand-ins for the keys.
	for _, k := range cl.Kernels {
		if k.Name != "primary" {
			continue
		}
		if want, ok, err := guest.BootInitrdSize(cl, k); err != nil || !ok || want != uint64(len(got)) {
			t.Errorf("booted an initrd of %d bytes; validate sized it %d bytes (%v, %v)", len(got), want, ok, err)
		}
	}
	at := len(got) - len(overlay)
	switch {
	case at < len(base) || !bytes.Equal(got[:len(base)], base) || !bytes.Equal(got[at:], overlay):
		t.Fatalf("initrd of %d bytes is not the %d-byte initrd, padding and the %d-byte overlay", len(got), len(base), len(overlay))
	case at%4 != 0:
		t.Errorf("the overlay starts at byte %d of the initrd (after %d bytes of initrd): not a multiple of 4, so the kernel drops it", at, len(base))
	case !bytes.Equal(got[len(base):at], make([]byte, at-len(base))) || at-len(base) > 3:
		t.Errorf("between the initrd and the overlay: % x, want 0-3 NUL bytes", got[len(base):at])
	}
}
