package ipi_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/ipi"
)

func TestFindDevice(t *testing.T) {
	root := t.TempDir()
	dev := func(name, vendor, device string) {
		d := filepath.Join(root, "bus/pci/devices", name)
		os.MkdirAll(d, 0o755)
		os.WriteFile(filepath.Join(d, "vendor"), []byte(vendor+"\n"), 0o644)
		os.WriteFile(filepath.Join(d, "device"), []byte(device+"\n"), 0o644)
	}
	if _, err := ipi.FindDevice(root); err == nil || !strings.Contains(err.Error(), "1af4:1110") {
		t.Errorf("FindDevice(empty) = %v", err)
	}
	dev("0000:00:00.0", "0x8086", "0x0d57")
	dev("0000:00:02.0", "0x1af4", "0x1041") // virtio-net: same vendor, other device
	dev("0000:00:03.0", "0x1af4", "0x1110") // no subsystem_device: taken as ivshmem's
	got, err := ipi.FindDevice(root)
	if err != nil || filepath.Base(got) != "0000:00:03.0" {
		t.Errorf("FindDevice = %q, %v", got, err)
	}
	os.RemoveAll(filepath.Join(root, "bus/pci/devices/0000:00:03.0"))
	// The window network's function comes first and is passed over.
	dev("0000:00:01.0", "0x1af4", "0x1110")
	os.WriteFile(filepath.Join(root, "bus/pci/devices/0000:00:01.0/subsystem_device"), []byte("0x1101\n"), 0o644)
	dev("0000:00:03.0", "0x1af4", "0x1110")
	os.WriteFile(filepath.Join(root, "bus/pci/devices/0000:00:03.0/subsystem_device"), []byte("0x1100\n"), 0o644)
	got, err = ipi.FindDevice(root)
	if err != nil || filepath.Base(got) != "0000:00:03.0" {
		t.Errorf("FindDevice = %q, %v", got, err)
	}
}

func TestDoorbellValue(t *testing.T) {
	if v := ipi.DoorbellValue(3, 1); v != 0x00030001 {
		t.Errorf("DoorbellValue(3, 1) = %#x", v)
	}
}
