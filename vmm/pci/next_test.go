package pci_test

import (
	"testing"

	"github.com/popvmm/popvmm/vmm/pci"
)

func TestNextDevice(t *testing.T) {
	b := pci.NewBus()
	for want := 1; want < 32; want++ {
		if got := b.NextDevice(); got != want {
			t.Fatalf("NextDevice = %d, want %d", got, want)
		}
		d, err := b.Add(&fn{moved: map[int]uint64{}})
		if err != nil || d != want {
			t.Fatalf("Add = %d, %v; NextDevice said %d", d, err, want)
		}
	}
	if got := b.NextDevice(); got != 0 {
		t.Errorf("full bus: NextDevice = %d, want 0", got)
	}
}
