package cluster_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/internal/testkernel"
	"github.com/popvmm/popvmm/memmap"
)

// fakeHost is a 4-core, 8 GiB, one-node host with 16 free 2 MiB huge pages.
type fakeHost struct{}

func (fakeHost) OnlineCPUs() ([]int, error)      { return []int{0, 1, 2, 3}, nil }
func (fakeHost) MemAvailable() (uint64, error)   { return 8 << 30, nil }
func (fakeHost) OnlineNUMANodes() ([]int, error) { return []int{0}, nil }
func (fakeHost) FreeHugePages(ps uint64) (uint64, error) {
	if ps == 2<<20 {
		return 16, nil
	}
	return 0, os.ErrNotExist
}

// blindHost can read nothing, like a container without /sys.
type blindHost struct{}

var errBlind = errors.New("no /sys here")

func (blindHost) OnlineCPUs() ([]int, error)           { return nil, errBlind }
func (blindHost) MemAvailable() (uint64, error)        { return 0, errBlind }
func (blindHost) OnlineNUMANodes() ([]int, error)      { return nil, errBlind }
func (blindHost) FreeHugePages(uint64) (uint64, error) { return 0, errBlind }

const baseConfig = `
[cluster]
name = "demo"
run_dir = "run"
images = "images"
[cluster.window]
size = "16M"
[cluster.network]
subnet = "10.199.0.0/24"

[[kernel]]
name = "primary"
cpus = "0"
memory = "512M"

[[kernel]]
name = "secondary"
flavour = "light"
cpus = "1"
memory = "256M"
boot = "manual"
`

// load writes text as dir/cluster.toml next to fake images and checks it.
func load(t *testing.T, text string, host cluster.Host) (*cluster.Cluster, error) {
	t.Helper()
	dir := t.TempDir()
	testkernel.Images(t, filepath.Join(dir, "images"))
	testkernel.Write(t, dir, "notakernel", []byte("hello\n"))
	testkernel.Write(t, dir, "blob", make([]byte, 64<<10))
	testkernel.Write(t, dir, "blob.1", make([]byte, 64<<10))
	// Kernels the loaders would refuse: segments or load ranges over the
	// boot structures, or beyond the 256 MiB of kernel[1].
	testkernel.Write(t, dir, "pvh-low", testkernel.ELFLoadable(0x5000, 0x5000, make([]byte, 0x3000), 0))
	testkernel.Write(t, dir, "pvh-cmdline", testkernel.ELFSegments(0x1000000,
		testkernel.Segment{Paddr: 0x1000000, Data: []byte("text")}, testkernel.Segment{Paddr: 0x20000, Data: []byte("data")}))
	testkernel.Write(t, dir, "pvh-bss-beyond-ram", testkernel.ELFLoadable(0x1000000, 0x1000000, []byte("text"), 1<<30))
	testkernel.Write(t, dir, "pvh-hole", testkernel.ELFLoadable(0xc0000000, 0xc0000000, []byte("text"), 0))
	testkernel.Write(t, dir, "pvh-ok", testkernel.ELFLoadable(0x1000000, 0x1000000, []byte("text"), 0x1000))
	bz := testkernel.BzImage(0x020f, true)
	bz[0x234] = 0                                     // not relocatable: loads at pref_address
	binary.LittleEndian.PutUint64(bz[0x258:], 0x7000) // the zero page
	testkernel.Write(t, dir, "bz-low", bz)
	bz = testkernel.BzImage(0x020f, true)
	binary.LittleEndian.PutUint32(bz[0x260:], 300<<20) // init_size over 256 MiB
	testkernel.Write(t, dir, "bz-big", bz)
	sparse := testkernel.Write(t, dir, "initrd-big", nil)
	if err := os.Truncate(sparse, 300<<20); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := testkernel.Write(t, dir, "cluster.toml", []byte(text))
	f, err := cluster.Load(p)
	if err != nil {
		return nil, err
	}
	return cluster.Check(f, host)
}

func TestCheckValid(t *testing.T) {
	cl, err := load(t, baseConfig, fakeHost{})
	if err != nil {
		t.Fatalf("Check(base) = %v", err)
	}
	if len(cl.Warnings) != 0 {
		t.Errorf("Warnings = %q, want none", cl.Warnings)
	}
	if cl.Network.Bridge != "pv-demo" || cl.Network.Host != netip.MustParseAddr("10.199.0.1") {
		t.Errorf("Network = %+v, want bridge pv-demo host 10.199.0.1", cl.Network)
	}
	if cl.Window.Size != 16<<20 {
		t.Errorf("Window.Size = %d", cl.Window.Size)
	}
	p, s := cl.Kernels[0], cl.Kernels[1]
	if p.Index != 0 || s.Index != 1 || s.Boot != cluster.BootManual || p.Boot != cluster.BootUp {
		t.Errorf("kernels = %+v %+v", p, s)
	}
	if !slices.Equal(p.CPUs, []int{0}) || p.Memory != 512<<20 || p.Backing != cluster.BackingMemfd || p.NUMANode != -1 {
		t.Errorf("primary = %+v", p)
	}
	if p.KernelInfo.Format != cluster.FormatBzImage || !strings.HasSuffix(s.KernelPath, "images/light/bzImage") {
		t.Errorf("kernel files = %+v %s", p.KernelInfo, s.KernelPath)
	}
	if !filepath.IsAbs(cl.RunDir) || p.ConsoleLog != filepath.Join(cl.RunDir, "primary.console.log") {
		t.Errorf("RunDir %q, console log %q", cl.RunDir, p.ConsoleLog)
	}
	for _, k := range cl.Kernels {
		if !cl.Network.Subnet.Contains(k.IP) || k.IP == cl.Network.Host {
			t.Errorf("%s: derived IP %s not a kernel address in %s", k.Name, k.IP, cl.Network.Subnet)
		}
		if len(k.MAC) != 6 || k.MAC[0]&1 != 0 || k.MAC[0]&2 == 0 {
			t.Errorf("%s: derived MAC %s not unicast and locally administered", k.Name, k.MAC)
		}
		if k.Layout == nil || k.Layout.Window.Size != cl.Window.Size {
			t.Errorf("%s: layout %+v lacks the window", k.Name, k.Layout)
		}
	}
	if p.IP == s.IP || p.MAC.String() == s.MAC.String() {
		t.Errorf("derived addresses collide: %s %s / %s %s", p.IP, p.MAC, s.IP, s.MAC)
	}
	// Derivation is stable: the same names give the same addresses.
	again, err := load(t, baseConfig, fakeHost{})
	if err != nil || again.Kernels[0].IP != p.IP || again.Kernels[1].MAC.String() != s.MAC.String() {
		t.Errorf("derived addresses not stable: %v", err)
	}
}

func TestCheckWarnings(t *testing.T) {
	text := strings.Replace(baseConfig, `images = "images"`, `images = "nowhere"`, 1)
	cl, err := load(t, text, blindHost{})
	if err != nil {
		t.Fatalf("Check = %v, want only warnings", err)
	}
	all := strings.Join(cl.Warnings, "\n")
	for _, want := range []string{"kernel[0].kernel: default full image", "not built yet", "kernel[1].initrd", "online CPUs", "MemAvailable"} {
		if !strings.Contains(all, want) {
			t.Errorf("Warnings = %q, want one containing %q", cl.Warnings, want)
		}
	}
}

// edit applies old→new replacements (in order) to the base config; an old
// of "" appends new.
func edit(pairs ...string) string {
	s := baseConfig
	for i := 0; i < len(pairs); i += 2 {
		if pairs[i] == "" {
			s += pairs[i+1]
			continue
		}
		if !strings.Contains(s, pairs[i]) {
			panic(fmt.Sprintf("edit: %q not in base config", pairs[i]))
		}
		s = strings.Replace(s, pairs[i], pairs[i+1], 1)
	}
	return s
}

const secondaryCPUs = "cpus = \"1\""

func TestCheckErrors(t *testing.T) {
	tests := []struct {
		name string
		text string
		want []string // "path: substring", each must be reported
	}{
		{"duplicate names", edit(`name = "secondary"`, `name = "primary"`),
			[]string{`kernel[1].name: "primary" is already used by kernel[0]`}},
		{"core overlap", edit(secondaryCPUs, `cpus = "0-1"`),
			[]string{`kernel[1].cpus: core 0 is already owned by kernel "primary"`}},
		{"core offline", edit(secondaryCPUs, `cpus = "7"`),
			[]string{`kernel[1].cpus: core 7 is not online on this host (online: 0-3)`}},
		{"core twice", edit(secondaryCPUs, `cpus = "1,1"`), []string{`kernel[1].cpus: core 1 listed twice`}},
		{"cpus missing", edit(secondaryCPUs, ``), []string{`kernel[1].cpus: required`}},
		{"memory zero", edit(`memory = "256M"`, `memory = 0`), []string{`kernel[1].memory: is zero`}},
		{"memory unaligned", edit(`memory = "256M"`, `memory = 1000000`),
			[]string{`kernel[1].memory: 1000000 B is not a multiple of the 4 KiB page size`}},
		{"memory hugepage unaligned", edit(`memory = "256M"`, "memory = \"3M\"\nbacking = \"hugetlbfs-2M\""),
			[]string{`kernel[1].memory: 3 MiB is not a multiple of the 2 MiB huge page size of backing "hugetlbfs-2M"`}},
		{"memory tiny", edit(`memory = "256M"`, `memory = "1M"`), []string{`kernel[1].memory: 1 MiB is below the minimum of 2 MiB`}},
		{"memory over host", edit(`memory = "256M"`, `memory = "8G"`),
			[]string{`kernel[*].memory: the cluster needs 8720 MiB (primary 512 MiB + secondary 8 GiB + window 16 MiB) but this host has 8 GiB available`}},
		{"memory garbage", edit(`memory = "256M"`, `memory = "lots"`), []string{`kernel[1].memory: "lots" is not a size`}},
		{"memory wrong type", edit(`memory = "256M"`, `memory = true`), []string{`kernel[1].memory: want a size such as "512M" or an integer, not a TOML boolean`}},
		{"hugepages short", edit(`memory = "256M"`, "memory = \"64M\"\nbacking = \"hugetlbfs-2M\""),
			[]string{`kernel[*].backing: "hugetlbfs-2M": kernels need 32 huge pages of 2 MiB but 16 are free`}},
		{"hugepages absent", edit(`memory = "256M"`, "memory = \"1G\"\nbacking = \"hugetlbfs-1G\""),
			[]string{`kernel[*].backing: "hugetlbfs-1G": this host has no 1 GiB huge pages`}},
		{"bad backing", edit(`memory = "256M"`, "memory = \"64M\"\nbacking = \"tmpfs\""), []string{`kernel[1].backing: "tmpfs": want`}},
		{"window not pow2", edit(`size = "16M"`, `size = "3M"`), []string{`cluster.window.size: 3 MiB is not a power of two`}},
		{"window small", edit(`size = "16M"`, `size = "512K"`), []string{`cluster.window.size: 512 KiB is under the 1 MiB minimum`}},
		{"ip outside", edit(secondaryCPUs, secondaryCPUs+"\nip = \"10.1.0.5\""),
			[]string{`kernel[1].ip: 10.1.0.5 is outside the subnet 10.199.0.0/24`}},
		{"ip broadcast", edit(secondaryCPUs, secondaryCPUs+"\nip = \"10.199.0.255\""),
			[]string{`kernel[1].ip: 10.199.0.255 is the broadcast address of 10.199.0.0/24`}},
		{"ip duplicate", edit(`cpus = "0"`, "cpus = \"0\"\nip = \"10.199.0.9\"", secondaryCPUs, secondaryCPUs+"\nip = \"10.199.0.9\""),
			[]string{`kernel[1].ip: 10.199.0.9 is already used by kernel "primary"`}},
		{"ip is host", edit(secondaryCPUs, secondaryCPUs+"\nip = \"10.199.0.1\""),
			[]string{`kernel[1].ip: 10.199.0.1 is the host's address on the bridge`}},
		{"mac multicast", edit(secondaryCPUs, secondaryCPUs+"\nmac = \"03:00:00:00:00:01\""),
			[]string{`kernel[1].mac: 03:00:00:00:00:01 is a multicast address`}},
		{"mac duplicate", edit(`cpus = "0"`, "cpus = \"0\"\nmac = \"02:00:00:00:00:01\"", secondaryCPUs, secondaryCPUs+"\nmac = \"02:00:00:00:00:01\""),
			[]string{`kernel[1].mac: 02:00:00:00:00:01 is already used by kernel "primary"`}},
		{"mac garbage", edit(secondaryCPUs, secondaryCPUs+"\nmac = \"zz\""), []string{`kernel[1].mac: "zz" is not a MAC address`}},
		{"subnet missing", edit(`subnet = "10.199.0.0/24"`, ``), []string{`cluster.network.subnet: required`}},
		{"subnet host bits", edit(`subnet = "10.199.0.0/24"`, `subnet = "10.199.0.7/24"`),
			[]string{`cluster.network.subnet: 10.199.0.7/24 has host bits set; did you mean 10.199.0.0/24?`}},
		{"host address outside", edit(`subnet = "10.199.0.0/24"`, "subnet = \"10.199.0.0/24\"\nhost_address = \"10.0.0.1\""),
			[]string{`cluster.network.host_address: 10.0.0.1 is outside the subnet`}},
		{"bridge too long", edit(`subnet = "10.199.0.0/24"`, "subnet = \"10.199.0.0/24\"\nbridge = \"a-very-long-bridge-name\""),
			[]string{`cluster.network.bridge: "a-very-long-bridge-name": longer than 15 characters`}},
		{"kernel missing", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"nope/bzImage\""),
			[]string{`kernel[1].kernel: `, `nope/bzImage: no such file or directory`}},
		{"kernel not a kernel", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"notakernel\""),
			[]string{`kernel[1].kernel: `, `notakernel: not a bzImage or ELF kernel`}},
		{"kernel is a directory", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"images\""),
			[]string{`kernel[1].kernel: `, `images: not a bzImage or ELF kernel: not a regular file`}},
		{"initrd missing", edit(secondaryCPUs, secondaryCPUs+"\ninitrd = \"nope.cpio\""),
			[]string{`kernel[1].initrd: `, `nope.cpio: no such file or directory`}},
		{"initrd empty", edit(secondaryCPUs, secondaryCPUs+"\ninitrd = \"/dev/null\""),
			[]string{`kernel[1].initrd: /dev/null: not a regular file`}},
		{"initrd fifo", edit(secondaryCPUs, secondaryCPUs+"\ninitrd = \"fifo\""), []string{`kernel[1].initrd: `, `fifo: not a regular file`}},
		{"kernel fifo", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"fifo\""), []string{`kernel[1].kernel: `, `fifo: not a bzImage or ELF kernel: not a regular file`}},
		{"bad name", edit(`name = "secondary"`, `name = "sec ondary"`), []string{`kernel[1].name: "sec ondary": use 1-32 letters`}},
		{"cluster name missing", edit(`name = "demo"`, ``), []string{`cluster.name: required`}},
		{"flavour", edit(`flavour = "light"`, `flavour = "medium"`), []string{`kernel[1].flavour: "medium": want "full" or "light"`}},
		{"boot", edit(`boot = "manual"`, `boot = "later"`), []string{`kernel[1].boot: "later": want "up"`}},
		{"all manual", edit(`cpus = "0"`, "cpus = \"0\"\nboot = \"manual\""), []string{`kernel: every kernel has boot = "manual"`}},
		{"no kernels", "[cluster]\nname = \"x\"\n[cluster.network]\nsubnet = \"10.0.0.0/24\"\n", []string{`kernel: no [[kernel]] tables`}},
		{"numa offline", edit(secondaryCPUs, secondaryCPUs+"\nnuma_node = 3"), []string{`kernel[1].numa_node: node 3 is not online on this host (online: 0)`}},
		{"cmdline newline", edit(secondaryCPUs, secondaryCPUs+"\ncmdline = \"a\\nb\""), []string{`kernel[1].cmdline: contains a NUL or newline`}},
		{"console log dir", edit(secondaryCPUs, secondaryCPUs+"\nconsole_log = \"/nonexistent/x.log\""),
			[]string{`kernel[1].console_log: directory /nonexistent does not exist`}},
		// A console log is appended to and, at console_log_max, renamed to
		// LOG.1 with a new LOG in its place: validate took a directory (the
		// kernel then failed at up), one log for two kernels (each
		// rotating the other's) and a log that is a disk image or kernel
		// (written to, then moved away).
		{"console log is a directory", edit(secondaryCPUs, secondaryCPUs+"\nconsole_log = \"images\""),
			[]string{`kernel[1].console_log: `, `images is a directory`}},
		{"console log of two kernels", edit(primaryMem, primaryMem+"\nconsole_log = \"c.log\"", secondaryCPUs, secondaryCPUs+"\nconsole_log = \"./c.log\""),
			[]string{`kernel[1].console_log: `, `c.log is also kernel[0].console_log`}},
		{"console log is a disk", edit(secondaryCPUs, secondaryCPUs+"\nconsole_log = \"blob\"", "", "[[kernel.disk]]\npath = \"blob\"\n"),
			[]string{`kernel[1].console_log: `, `blob is also kernel[1].disk[0].path`}},
		{"console log is a kernel", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"pvh-ok\"", primaryMem, primaryMem+"\nconsole_log = \"pvh-ok\""),
			[]string{`kernel[0].console_log: `, `pvh-ok is also kernel[1].kernel`}},
		// LOG.1, where a log is renamed at console_log_max, was not
		// checked: logs "x" and "x.1" took, and the first kernel's
		// rotation renamed its log onto the second's live log.
		{"console log is another's rotated log", edit(primaryMem, primaryMem+"\nconsole_log = \"x\"", secondaryCPUs, secondaryCPUs+"\nconsole_log = \"x.1\""),
			[]string{`kernel[1].console_log: `, `x.1 is also kernel[0].console_log's rotated log`}},
		{"console log rotates onto another's", edit(primaryMem, primaryMem+"\nconsole_log = \"x.1\"", secondaryCPUs, secondaryCPUs+"\nconsole_log = \"./x\""),
			[]string{`kernel[1].console_log: `, `x is rotated at console_log_max to `, `x.1, which is also kernel[0].console_log`}},
		{"console log rotates onto another's default", edit(`run_dir = "run"`, `run_dir = "."`, primaryMem, primaryMem+"\nconsole_log = \"secondary.console.log.1\""),
			[]string{`kernel[0].console_log: `, `secondary.console.log.1 is also kernel[1].console_log's rotated log`}},
		{"console log rotates onto a disk", edit(secondaryCPUs, secondaryCPUs+"\nconsole_log = \"blob\"", "", "[[kernel.disk]]\npath = \"blob.1\"\n"),
			[]string{`kernel[1].console_log: `, `blob is rotated at console_log_max to `, `blob.1, which is also kernel[1].disk[0].path`}},
		{"passthrough over RAM", edit("", "[[kernel.passthrough]]\npath = \"/dev/zero\"\nsize = \"2M\"\nguest_address = \"0x1000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].guest_address: passthrough 0x000001000000-0x0000011fffff overlaps ram`}},
		{"passthrough in hole", edit("", "[[kernel.passthrough]]\npath = \"/dev/zero\"\nsize = \"4K\"\nguest_address = \"0xfee00000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].guest_address: passthrough 0x0000fee00000-0x0000fee00fff overlaps mmio hole`}},
		{"passthroughs overlap", edit("",
			"[[kernel.passthrough]]\npath = \"/dev/zero\"\nsize = \"2M\"\nguest_address = \"0x200000000\"\nread_only = true\n"+
				"[[kernel.passthrough]]\npath = \"/dev/zero\"\nsize = \"2M\"\nguest_address = \"0x200100000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[1].guest_address: passthrough 0x000200100000-0x0002002fffff overlaps passthrough[0]`}},
		{"passthrough past file end", edit("", "[[kernel.passthrough]]\npath = \"blob\"\nsize = \"128K\"\nguest_address = \"0x200000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].size: offset 0x0 + size 128 KiB runs past the end of`}},
		{"passthrough unaligned", edit("", "[[kernel.passthrough]]\npath = \"blob\"\noffset = 100\nsize = 5000\nguest_address = \"0x200000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].offset: 0x64 is not 4 KiB aligned`, `kernel[1].passthrough[0].size: 5000 B is not a non-zero multiple of 4 KiB`}},
		{"passthrough missing file", edit("", "[[kernel.passthrough]]\npath = \"/nonexistent\"\nsize = \"4K\"\nguest_address = \"0x200000000\"\n"),
			[]string{`kernel[1].passthrough[0].path: /nonexistent: no such file or directory`}},
		// Files the VMM cannot map (mmap: ENODEV), which validate took:
		// the kernel then failed only at `up`.
		{"passthrough fifo", edit("", "[[kernel.passthrough]]\npath = \"fifo\"\nsize = \"4K\"\nguest_address = \"0x200000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].path: `, `fifo cannot be mapped: no such device`}},
		{"passthrough /dev/null", edit("", "[[kernel.passthrough]]\npath = \"/dev/null\"\nsize = \"4K\"\nguest_address = \"0x200000000\"\n"),
			[]string{`kernel[1].passthrough[0].path: /dev/null cannot be mapped: no such device`}},
		{"passthrough no address", edit("", "[[kernel.passthrough]]\npath = \"/dev/zero\"\nsize = \"4K\"\n"),
			[]string{`kernel[1].passthrough[0].guest_address: not set`}},
		// offset + size wrapped past 2^64 and passed the end-of-file check.
		{"passthrough offset wraps", edit("", "[[kernel.passthrough]]\npath = \"blob\"\noffset = \"0xfffffffffffff000\"\nsize = \"8K\"\nguest_address = \"0x200000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].offset: offset 0xfffffffffffff000 + size 8 KiB overflows a 64-bit file offset`}},
		{"passthrough offset wraps exactly", edit("", "[[kernel.passthrough]]\npath = \"blob\"\noffset = \"0xfffffffffffff000\"\nsize = \"4K\"\nguest_address = \"0x200000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].offset: offset 0xfffffffffffff000 + size 4 KiB overflows`}},
		{"passthrough device offset past off_t", edit("", "[[kernel.passthrough]]\npath = \"/dev/zero\"\noffset = \"0x7ffffffffffff000\"\nsize = \"8K\"\nguest_address = \"0x200000000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].offset: offset 0x7ffffffffffff000 + size 8 KiB overflows a 64-bit file offset`}},
		// RAM near 2^64: the layout's end and the host total both wrapped.
		{"memory wraps", edit(`memory = "256M"`, `memory = "0xfffffffffffff000"`),
			[]string{`kernel[1].memory: `, `beyond the guest physical address limit`}},
		{"passthrough guest address wraps", edit("", "[[kernel.passthrough]]\npath = \"blob\"\nsize = \"8K\"\nguest_address = \"0xfffffffffffff000\"\nread_only = true\n"),
			[]string{`kernel[1].passthrough[0].guest_address: `, `beyond the guest physical address limit`}},
		// Kernels placed over what popvmm writes, or outside their RAM.
		{"pvh segment over boot structures", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"pvh-low\""),
			[]string{`kernel[1].kernel: `, `pvh-low: kernel 0x000000005000-0x000000007fff overlaps the pvh start info`}},
		{"pvh segment over the command line", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"pvh-cmdline\""),
			[]string{`kernel[1].kernel: `, `overlaps the cmdline`}},
		{"pvh bss beyond RAM", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"pvh-bss-beyond-ram\""),
			[]string{`kernel[1].kernel: `, `is not in the kernel's RAM below the PCI hole`}},
		{"pvh segment in the PCI hole", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"pvh-hole\""),
			[]string{`kernel[1].kernel: `, `overlaps pci32`}},
		{"bzImage over the zero page", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"bz-low\""),
			[]string{`kernel[1].kernel: `, `overlaps the zero page`}},
		{"bzImage init_size beyond RAM", edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"bz-big\""),
			[]string{`kernel[1].kernel: `, `is not in the kernel's RAM`}},
		{"initrd does not fit above the kernel", edit(secondaryCPUs, secondaryCPUs+"\ninitrd = \"initrd-big\""),
			[]string{`kernel[1].initrd: `, `initrd of 300 MiB does not fit`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, tt.text, fakeHost{})
			if err == nil {
				t.Fatalf("Check succeeded, want errors %q", tt.want)
			}
			got := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("Check errors:\n%s\nwant one containing %q", got, w)
				}
			}
			for _, fe := range cluster.FieldErrors(err) {
				if fe.Path == "" {
					t.Errorf("error without a field path: %v", fe)
				}
			}
		})
	}
}

// TestCheckReportsEverything: one config with many problems gets all of them.
func TestCheckReportsEverything(t *testing.T) {
	text := edit(`name = "secondary"`, `name = "primary"`,
		secondaryCPUs, "cpus = \"0,9\"\nmac = \"01:00:00:00:00:00\"",
		`size = "16M"`, `size = "3M"`,
		`memory = "256M"`, `memory = 0`)
	_, err := load(t, text, fakeHost{})
	fes := cluster.FieldErrors(err)
	var paths []string
	for _, fe := range fes {
		paths = append(paths, fe.Path)
	}
	for _, want := range []string{"cluster.window.size", "kernel[1].memory", "kernel[1].name", "kernel[1].cpus", "kernel[1].mac"} {
		if !slices.Contains(paths, want) {
			t.Errorf("error paths = %q, want %q among them; errors:\n%v", paths, want, err)
		}
	}
	if n := strings.Count(err.Error(), "kernel[1].cpus"); n != 2 {
		t.Errorf("kernel[1].cpus reported %d times, want 2 (core 0 owned, core 9 offline):\n%v", n, err)
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, text, want string
	}{
		{"syntax", "[cluster\nname = 1\n", "parse error: line 2: expected"},
		{"type", "[cluster]\nname = 5\n", `line 2`},
		{"unknown key", baseConfig + "memroy = \"1G\"\n", `unknown key "kernel.memroy" (did you mean "memory"?)`},
		{"unknown table", "[clutser]\nname = \"x\"\n", `unknown key "clutser" (did you mean "cluster"?)`},
		{"unknown far", "[cluster]\nzzzzzzzz = 1\n", `unknown key "cluster.zzzzzzzz" (known keys: images, name, network, run_dir, window, winnet)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := cluster.Parse([]byte(tt.text))
			if err == nil || !errors.Is(err, cluster.ErrParse) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse = %v, want ErrParse containing %q", err, tt.want)
			}
		})
	}
}

// TestParseKeysCaseSensitive: TOML keys are case-sensitive, but the
// decoder matches struct fields case-insensitively, so "Memory" next to
// "memory" was accepted and one of them won at random. Every key that is
// not exactly a schema key is an unknown key, wherever it is, with its line.
func TestParseKeysCaseSensitive(t *testing.T) {
	tests := []struct {
		name, text string
		want       []string // each must be reported
	}{
		{"duplicate in kernel", baseConfig + "Memory = \"1G\"\n",
			[]string{`line 22: unknown key "kernel.Memory" (did you mean "memory"? keys are case-sensitive)`}},
		{"only the wrong case", strings.Replace(baseConfig, `memory = "512M"`, `MEMORY = "512M"`, 1),
			[]string{`line 14: unknown key "kernel.MEMORY" (did you mean "memory"?`}},
		{"in every kernel", strings.ReplaceAll(baseConfig, `cpus =`, `CPUs =`),
			[]string{`line 13: unknown key "kernel.CPUs"`, `line 19: unknown key "kernel.CPUs"`}},
		{"top level table", strings.Replace(baseConfig, "[cluster]\n", "[Cluster]\n", 1),
			[]string{`line 2: unknown key "Cluster" (did you mean "cluster"?`}},
		{"cluster key", strings.Replace(baseConfig, `run_dir = "run"`, `Run_Dir = "run"`, 1),
			[]string{`line 4: unknown key "cluster.Run_Dir" (did you mean "run_dir"?`}},
		{"sub-table header", strings.Replace(baseConfig, "[cluster.window]", "[cluster.Window]", 1),
			[]string{`line 6: unknown key "cluster.Window" (did you mean "window"?`}},
		{"sub-table key", strings.Replace(baseConfig, `size = "16M"`, `Size = "16M"`, 1),
			[]string{`line 7: unknown key "cluster.window.Size" (did you mean "size"?`}},
		{"network key", strings.Replace(baseConfig, `subnet =`, `SUBNET =`, 1),
			[]string{`line 9: unknown key "cluster.network.SUBNET"`}},
		{"array of tables", strings.Replace(baseConfig, "[[kernel]]", "[[Kernel]]", 1),
			[]string{`line 11: unknown key "Kernel" (did you mean "kernel"?`}},
		{"passthrough array", baseConfig + "[[kernel.Passthrough]]\npath = \"blob\"\n",
			[]string{`line 22: unknown key "kernel.Passthrough" (did you mean "passthrough"?`}},
		{"passthrough key", baseConfig + "[[kernel.passthrough]]\nPath = \"blob\"\npath = \"x\"\n",
			[]string{`line 23: unknown key "kernel.passthrough.Path" (did you mean "path"?`}},
		{"dotted key", "Cluster.name = \"x\"\n" + baseConfig, []string{`line 1: unknown key "Cluster"`}},
		{"quoted key", strings.Replace(baseConfig, `name = "demo"`, "\"Name\" = \"demo\"", 1),
			[]string{`line 3: unknown key "cluster.Name" (did you mean "name"?`}},
		{"inline table key", strings.Replace(strings.Replace(baseConfig, "[cluster.window]\nsize = \"16M\"\n", "", 1),
			`images = "images"`, "images = \"images\"\nwindow = { Size = \"16M\" }", 1),
			[]string{`line 6: unknown key "cluster.window.Size" (did you mean "size"?`}},
		{"inline array of tables", baseConfig + "passthrough = [{ Path = \"blob\" }]\n",
			[]string{`line 22: unknown key "kernel.passthrough.Path"`}},
		{"key below a value", strings.Replace(baseConfig, `memory = "256M"`, "memory.x = 1", 1),
			[]string{`line 20: unknown key "kernel.memory.x" (kernel.memory is a value, not a table)`}},
		{"numa", strings.Replace(baseConfig, `boot = "manual"`, "boot = \"manual\"\nNUMA_node = 0", 1),
			[]string{`unknown key "kernel.NUMA_node" (did you mean "numa_node"?`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := cluster.Parse([]byte(tt.text))
			if f != nil || !errors.Is(err, cluster.ErrParse) {
				t.Fatalf("Parse = %v, want ErrParse", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse errors:\n%v\nwant one containing %q", err, w)
				}
			}
		})
	}
}

// TestParseSchemaKeys: every key of every table in a full config is known
// and decoded (the schema derived from the struct tags covers the structs).
func TestParseSchemaKeys(t *testing.T) {
	text := baseConfig + `numa_node = 0
mlock = true
backing = "memfd"
kernel = "k"
initrd = "i"
cmdline = "quiet"
ip = "10.199.0.9"
mac = "02:00:00:00:00:09"
console_log = "c.log"
[[kernel.passthrough]]
path = "blob"
offset = 0
size = "4K"
guest_address = "0x200000000"
read_only = true
`
	text = strings.Replace(text, "[cluster.network]\n", "[cluster.network]\nbridge = \"br\"\nhost_address = \"10.199.0.1\"\n", 1)
	text = strings.Replace(text, `size = "16M"`, "size = \"16M\"\nprotect = true", 1)
	f, err := cluster.Parse([]byte(text))
	if err != nil {
		t.Fatalf("Parse(every key) = %v", err)
	}
	if !f.Cluster.Window.Protect || f.Cluster.Network.Bridge != "br" || len(f.Kernels[1].Passthrough) != 1 || !f.Kernels[1].Passthrough[0].ReadOnly {
		t.Errorf("Parse(every key) = %+v", f)
	}
}

func TestLoadErrors(t *testing.T) {
	if _, err := cluster.Load(filepath.Join(t.TempDir(), "none.toml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v, want ErrNotExist", err)
	}
	big := testkernel.Write(t, t.TempDir(), "big.toml", make([]byte, 2<<20))
	if _, err := cluster.Load(big); !errors.Is(err, cluster.ErrParse) {
		t.Errorf("Load(2 MiB) = %v, want ErrParse", err)
	}
}

func TestPassthroughValid(t *testing.T) {
	text := edit("", "[[kernel.passthrough]]\npath = \"blob\"\noffset = \"0x1000\"\nsize = \"16K\"\nguest_address = \"0x200000000\"\nread_only = true\n")
	cl, err := load(t, text, fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	k := cl.Kernels[1]
	if len(k.Passthrough) != 1 || k.Passthrough[0].Offset != 0x1000 || k.Passthrough[0].Size != 16<<10 || !k.Passthrough[0].ReadOnly {
		t.Fatalf("Passthrough = %+v", k.Passthrough)
	}
	if k.Layout.PCI64.Start != 9*memmap.GiB {
		t.Errorf("PCI64 = %v, want it above the passthrough region", k.Layout.PCI64)
	}
}

func TestKernelPlacementValid(t *testing.T) {
	cl, err := load(t, edit(secondaryCPUs, secondaryCPUs+"\nkernel = \"pvh-ok\""), fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	want := []memmap.Range{{Start: 0x1000000, Size: 0x1004}}
	if p := cl.Kernels[1].KernelInfo.Placement; !slices.Equal(p.Kernel, want) || p.Entry != 0x1000000 {
		t.Errorf("Placement = %+v, want %v entry 0x1000000", p, want)
	}
}

// TestRunDirSocketPathLimit: every socket popvmm binds in the run
// directory must fit sun_path; a longer one was accepted and `up` then
// failed with "bind: invalid argument".
func TestRunDirSocketPathLimit(t *testing.T) {
	sock := len("/" + cluster.ControlSocketName)
	tests := []struct {
		name   string
		runDir string
		want   string // "" for no error
	}{
		{"fits exactly", "/" + strings.Repeat("d", cluster.MaxSocketPath-sock-1), ""},
		{"one byte over", "/" + strings.Repeat("d", cluster.MaxSocketPath-sock),
			fmt.Sprintf("cluster.run_dir: socket path /%s/control.sock is 108 bytes, over the 107-byte limit of a Unix socket path (sun_path): choose a shorter cluster.run_dir, of at most 94 bytes (this one is 95)",
				strings.Repeat("d", cluster.MaxSocketPath-sock))},
		{"far over", "/tmp/" + strings.Repeat("d", 200), "is 218 bytes, over the 107-byte limit"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := load(t, edit(`run_dir = "run"`, fmt.Sprintf("run_dir = %q", tt.runDir)), fakeHost{})
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("run_dir of %d bytes: Check = %v, want success", len(tt.runDir), err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("run_dir of %d bytes: Check = %v, want %q", len(tt.runDir), err, tt.want)
			}
		})
	}
	// The default run directory (run root + name) is checked the same way.
	t.Setenv("POPVMM_RUN_ROOT", "/"+strings.Repeat("r", 100))
	_, err := load(t, edit(`run_dir = "run"`, ""), fakeHost{})
	if err == nil || !strings.Contains(err.Error(), "cluster.run_dir: socket path /rrr") || !strings.Contains(err.Error(), "the default run directory") {
		t.Errorf("Check(default run dir under a long run root) = %v, want a cluster.run_dir error naming the default", err)
	}
}

// TestMaxSocketPath: MaxSocketPath is what the kernel (through Go's net
// package) accepts: a socket path of exactly that many bytes binds, one
// byte more does not.
func TestMaxSocketPath(t *testing.T) {
	for _, n := range []int{cluster.MaxSocketPath, cluster.MaxSocketPath + 1} {
		dir := t.TempDir()
		pad := n - len(dir) - 2 - len(cluster.ControlSocketName)
		if pad < 1 {
			t.Skipf("temporary directory %s is too long for this test", dir)
		}
		dir = filepath.Join(dir, strings.Repeat("p", pad))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, cluster.ControlSocketName)
		ln, err := net.Listen("unix", p)
		if ln != nil {
			ln.Close()
		}
		if ok := n <= cluster.MaxSocketPath; (err == nil) != ok {
			t.Errorf("Listen(unix, %d-byte path) = %v, want success %v", len(p), err, ok)
		}
	}
}

func TestDefaultBridgeShortened(t *testing.T) {
	text := edit(`name = "demo"`, `name = "a-rather-long-cluster-name"`)
	cl, err := load(t, text, fakeHost{})
	if err != nil {
		t.Fatal(err)
	}
	if b := cl.Network.Bridge; len(b) > 15 || !strings.HasPrefix(b, "pv-a-rathe") {
		t.Errorf("Bridge = %q, want a shortened pv- name of at most 15 bytes", b)
	}
}

// anyBlockDevice returns a block device node this process can open and its
// size, or skips t (testenv: no such device, or no root to open one).
func anyBlockDevice(t *testing.T) (string, uint64) {
	t.Helper()
	testenv.RequireRoot(t)
	paths, _ := filepath.Glob("/dev/*")
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			continue
		}
		n, err := f.Seek(0, io.SeekEnd)
		f.Close()
		if err == nil {
			return p, uint64(n)
		}
	}
	testenv.Require(t, errors.New("needs a block device node under /dev"))
	return "", 0
}

// TestPassthroughPastBlockDeviceEnd: a passthrough region that runs past
// the end of a block device was accepted (only a regular file's size was
// checked), and mmap takes it: the first guest access, or a virtio
// descriptor the VMM copies through, past the device's end faults
// (SIGBUS) instead of being refused at validate as a file's is.
func TestPassthroughPastBlockDeviceEnd(t *testing.T) {
	dev, size := anyBlockDevice(t)
	off := (size + memmap.PageSize - 1) &^ (memmap.PageSize - 1)
	text := edit("", fmt.Sprintf("[[kernel.passthrough]]\npath = %q\noffset = %d\nsize = \"4K\"\nguest_address = \"0x200000000\"\nread_only = true\n", dev, off))
	_, err := load(t, text, fakeHost{})
	want := fmt.Sprintf("kernel[1].passthrough[0].size: offset %#x + size 4 KiB runs past the end of %s (%d bytes)", off, dev, size)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("passthrough of %s (%d bytes) at offset %#x: Check = %v, want %q", dev, size, off, err, want)
	}
}
