package cluster_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/testkernel"
	"github.com/popvmm/popvmm/memmap"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in      string
		want    uint64
		wantErr bool
	}{
		{"4096", 4096, false},
		{"0x1000", 4096, false},
		{"4096B", 4096, false},
		{"4097 B", 4097, false},
		{"0xB", 11, false},
		{"512 MiB", 512 << 20, false},
		{"64K", 64 << 10, false},
		{"64KiB", 64 << 10, false},
		{"512M", 512 << 20, false},
		{"512m", 512 << 20, false},
		{"512MB", 512 << 20, false},
		{"2G", 2 << 30, false},
		{" 2 G ", 2 << 30, false},
		{"1T", 1 << 40, false},
		{"", 0, true},
		{"M", 0, true},
		{"-1M", 0, true},
		{"1.5G", 0, true},
		{"12X", 0, true},
		{"99999999999999T", 0, true},
		{"18446744073709551616", 0, true},
	}
	for _, tt := range tests {
		got, err := cluster.ParseSize(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseCPUList(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr string
	}{
		{"0", []int{0}, ""},
		{"0-3,6", []int{0, 1, 2, 3, 6}, ""},
		{"6, 0-1", []int{0, 1, 6}, ""},
		{"", nil, "empty"},
		{"3-1", nil, "backwards"},
		{"1,1", nil, "listed twice"},
		{"0-2,2", nil, "listed twice"},
		{"a", nil, "not a CPU number"},
		{"-1", nil, "not a CPU number"},
		{"9000", nil, "beyond"},
		{"0-", nil, "not a CPU number"},
	}
	for _, tt := range tests {
		got, err := cluster.ParseCPUList(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseCPUList(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseCPUList(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
		}
		if back, _ := cluster.ParseCPUList(cluster.FormatCPUList(got)); !slices.Equal(back, got) {
			t.Errorf("FormatCPUList(%v) = %q does not parse back", got, cluster.FormatCPUList(got))
		}
	}
	if got := cluster.FormatCPUList([]int{0, 1, 2, 3, 6, 8, 9}); got != "0-3,6,8-9" {
		t.Errorf("FormatCPUList = %q, want 0-3,6,8-9", got)
	}
}

func TestInspectKernel(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		data    []byte
		want    cluster.ImageFormat
		wantErr string
	}{
		{"bzImage", testkernel.BzImage(0x020f, true), cluster.FormatBzImage, ""},
		{"old protocol", testkernel.BzImage(0x020a, true), "", "boot protocol 2.10 is older than 2.12"},
		{"no 64-bit entry", testkernel.BzImage(0x020f, false), "", "no 64-bit entry"},
		{"elf pvh", testkernel.ELF(true, 0x1000000), cluster.FormatELF, ""},
		{"elf without pvh", testkernel.ELF(false, 0), "", "no PVH entry note"},
		{"truncated elf", testkernel.ELF(true, 1)[:70], "", "not a bzImage or ELF kernel"},
		{"text", []byte("#!/bin/sh\necho hi\n"), "", "not a bzImage or ELF kernel"},
		{"empty", nil, "", "not a bzImage or ELF kernel"},
	}
	for _, tt := range tests {
		p := testkernel.Write(t, dir, tt.name, tt.data)
		info, err := cluster.InspectKernel(p)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("InspectKernel(%s) = %+v, %v; want error containing %q", tt.name, info, err, tt.wantErr)
			}
			continue
		}
		if err != nil || info.Format != tt.want {
			t.Errorf("InspectKernel(%s) = %+v, %v; want format %s", tt.name, info, err, tt.want)
		}
	}
	if info, _ := cluster.InspectKernel(testkernel.Write(t, dir, "pvh", testkernel.ELF(true, 0x1234))); info.PVHEntry != 0x1234 {
		t.Errorf("PVHEntry = %#x, want 0x1234", info.PVHEntry)
	}
	if _, err := cluster.InspectKernel(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("InspectKernel(missing) = %v, want ErrNotExist", err)
	}
}

func TestSysHost(t *testing.T) {
	root := t.TempDir()
	testkernel.Write(t, root, "sys/devices/system/cpu/online", []byte("0-5,8\n"))
	testkernel.Write(t, root, "sys/devices/system/node/online", []byte("0-1\n"))
	testkernel.Write(t, root, "proc/meminfo", []byte("MemTotal:       24000000 kB\nMemAvailable:   1000 kB\n"))
	testkernel.Write(t, root, "sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", []byte("12\n"))
	h := cluster.SysHost{Root: root}
	if cpus, err := h.OnlineCPUs(); err != nil || !slices.Equal(cpus, []int{0, 1, 2, 3, 4, 5, 8}) {
		t.Errorf("OnlineCPUs = %v, %v", cpus, err)
	}
	if nodes, err := h.OnlineNUMANodes(); err != nil || !slices.Equal(nodes, []int{0, 1}) {
		t.Errorf("OnlineNUMANodes = %v, %v", nodes, err)
	}
	if m, err := h.MemAvailable(); err != nil || m != 1000*1024 {
		t.Errorf("MemAvailable = %d, %v", m, err)
	}
	if n, err := h.FreeHugePages(2 << 20); err != nil || n != 12 {
		t.Errorf("FreeHugePages(2M) = %d, %v", n, err)
	}
	if _, err := h.FreeHugePages(1 << 30); err == nil {
		t.Error("FreeHugePages(1G) without sysfs entry succeeded")
	}
	testkernel.Write(t, root, "proc/meminfo", []byte("MemTotal: 1 kB\n"))
	if _, err := h.MemAvailable(); err == nil {
		t.Error("MemAvailable without the line succeeded")
	}
}

// TestRealHost reads this machine; it only checks the facts are sane.
func TestRealHost(t *testing.T) {
	h := cluster.SysHost{}
	cpus, err := h.OnlineCPUs()
	if err != nil || len(cpus) == 0 {
		t.Fatalf("OnlineCPUs = %v, %v", cpus, err)
	}
	if m, err := h.MemAvailable(); err != nil || m == 0 {
		t.Fatalf("MemAvailable = %d, %v", m, err)
	}
}

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"512M", "0x1000", "2GiB", "4096B", "1T", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := cluster.ParseSize(s)
		if err != nil {
			return
		}
		// What FormatSize prints parses back to the same size.
		back, err := cluster.ParseSize(memmap.FormatSize(n))
		if err != nil || back != n {
			t.Fatalf("ParseSize(%q) = %d; ParseSize(FormatSize) = %d, %v", s, n, back, err)
		}
	})
}

func FuzzParseCPUList(f *testing.F) {
	for _, s := range []string{"0-3,6", "1", "0-8191", "3-1", "1,1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cpus, err := cluster.ParseCPUList(s)
		if err != nil {
			return
		}
		if !slices.IsSorted(cpus) || len(slices.Compact(slices.Clone(cpus))) != len(cpus) {
			t.Fatalf("ParseCPUList(%q) = %v: not sorted and unique", s, cpus)
		}
		back, err := cluster.ParseCPUList(cluster.FormatCPUList(cpus))
		if err != nil || !slices.Equal(back, cpus) {
			t.Fatalf("round trip of %q: %v, %v", s, back, err)
		}
	})
}
