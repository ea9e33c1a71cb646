package agent_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/popvmm/popvmm/ipi/agent"
)

func TestReadInfo(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Dir(filepath.Join(root, p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)
	}
	write("sys/kernel/osrelease", "6.1.192\n")
	write("uptime", "123.45 200.00\n")
	write("loadavg", "0.50 0.25 0.10 1/80 999\n")
	write("meminfo", "MemTotal:      262144 kB\nMemFree: 1 kB\nMemAvailable:  131072 kB\n")
	got, err := agent.ReadInfo("primary", root)
	if err != nil {
		t.Fatal(err)
	}
	want := agent.Info{Name: "primary", Release: "6.1.192", Uptime: 123.45, Load: [3]float64{0.5, 0.25, 0.1},
		MemTotal: 256 << 20, MemAvailable: 128 << 20}
	if got != want {
		t.Errorf("ReadInfo = %+v, want %+v", got, want)
	}
	if _, err := agent.ReadInfo("x", t.TempDir()); err == nil {
		t.Error("ReadInfo without osrelease succeeded")
	}
}
