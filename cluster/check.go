package cluster

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/popvmm/popvmm/memmap"
)

// Limits on names and values.
const (
	// maxCmdline leaves room, inside Linux/x86's 2048-byte command line,
	// for what popvmm adds itself (console=, ip=, popvmm.name=, workarounds).
	maxCmdline = 1024
	// ifNameMax is IFNAMSIZ-1, the longest Linux interface name.
	ifNameMax = 15
	// minWindow is the smallest shared window.
	minWindow = 1 << 20
	// maxWindow keeps the window BAR a sane size.
	maxWindow = 64 << 30
	// defaultWindow is the window size when none is given.
	defaultWindow = 16 << 20
	// defaultConsoleLogMax and minConsoleLogMax are the console's
	// vtty.DefaultLogMax and vtty.MinLogMax (cluster imports no device
	// model; TestConsoleLogMax holds them equal).
	defaultConsoleLogMax = 16 << 20
	minConsoleLogMax     = 64 << 10
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$`)

// checker accumulates field errors and warnings while resolving a File.
type checker struct {
	f    *File
	host Host
	dir  string // directory relative paths are resolved against
	errs []error
	warn []string
}

func (c *checker) errf(path, format string, args ...any) {
	c.errs = append(c.errs, errorf(path, format, args...))
}

func (c *checker) warnf(format string, args ...any) {
	c.warn = append(c.warn, fmt.Sprintf(format, args...))
}

// Check resolves f on host. On success it returns the resolved cluster; on
// failure it returns every problem found, joined with errors.Join, each a
// *FieldError naming its field (see FieldErrors).
func Check(f *File, host Host) (*Cluster, error) {
	c := &checker{f: f, host: host, dir: "."}
	if f.Path != "" {
		c.dir = filepath.Dir(f.Path)
	}
	cl := &Cluster{ConfigPath: f.Path}
	c.checkCluster(cl)
	for i := range f.Kernels {
		cl.Kernels = append(cl.Kernels, c.checkKernel(cl, i))
	}
	if len(f.Kernels) == 0 {
		c.errf("kernel", "no [[kernel]] tables: a cluster needs at least one kernel")
	}
	c.checkAcross(cl)
	c.checkDiskSharing(cl)
	c.checkConsoleLogs(cl)
	c.checkTapNames(cl)
	if len(c.errs) > 0 {
		return nil, errors.Join(c.errs...)
	}
	cl.Warnings = c.warn
	return cl, nil
}

// abs resolves a config path against the config's directory.
func (c *checker) abs(p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(c.dir, p)
}

func (c *checker) checkCluster(cl *Cluster) {
	s := c.f.Cluster
	cl.Name = s.Name
	switch {
	case s.Name == "":
		c.errf("cluster.name", "required: names the cluster's run directory, bridge and socket")
	case !nameRE.MatchString(s.Name):
		c.errf("cluster.name", "%q: use 1-32 letters, digits, '-' or '_', starting with a letter or digit", s.Name)
	}

	cl.RunDir = c.f.RunDir()
	if st, err := os.Stat(cl.RunDir); err == nil && !st.IsDir() {
		c.errf("cluster.run_dir", "%s exists and is not a directory", cl.RunDir)
	}
	c.checkSocketPaths(cl.RunDir)

	cl.ImagesDir = c.abs(s.Images)
	if s.Images == "" {
		cl.ImagesDir = DefaultImagesDir()
	}

	cl.Window = Window{Size: defaultWindow, Protect: s.Window.Protect}
	if s.Window.Size.IsSet() {
		n, err := scalarSize(s.Window.Size)
		switch {
		case err != nil:
			c.errf("cluster.window.size", "%v", err)
		case n&(n-1) != 0 || n == 0:
			c.errf("cluster.window.size", "%s is not a power of two (a PCI BAR must be)", memmap.FormatSize(n))
		case n < minWindow:
			c.errf("cluster.window.size", "%s is under the 1 MiB minimum", memmap.FormatSize(n))
		case n > maxWindow:
			c.errf("cluster.window.size", "%s is over the %s maximum", memmap.FormatSize(n), memmap.FormatSize(maxWindow))
		default:
			cl.Window.Size = n
		}
	}
	c.checkNetwork(cl)
}

// checkSocketPaths checks that every socket popvmm binds in the run
// directory fits a Unix socket address; binding a longer path fails with
// EINVAL only when the cluster comes up.
func (c *checker) checkSocketPaths(runDir string) {
	longest := ""
	for _, name := range runDirSockets {
		if p := filepath.Join(runDir, name); len(p) > len(longest) {
			longest = p
		}
	}
	if len(longest) <= MaxSocketPath {
		return
	}
	how := "choose a shorter cluster.run_dir"
	if c.f.Cluster.RunDir == "" {
		how = "the default run directory is the run root (--run-root, $POPVMM_RUN_ROOT) plus the cluster name; set a shorter cluster.run_dir"
	}
	c.errf("cluster.run_dir", "socket path %s is %d bytes, over the %d-byte limit of a Unix socket path (sun_path): %s, of at most %d bytes (this one is %d)",
		longest, len(longest), MaxSocketPath, how, MaxSocketPath-(len(longest)-len(runDir)), len(runDir))
}

func (c *checker) checkNetwork(cl *Cluster) {
	n := c.f.Cluster.Network
	cl.Network.Bridge = n.Bridge
	if n.Bridge == "" {
		cl.Network.Bridge = defaultBridge(c.f.Cluster.Name)
	} else if err := checkIfName(n.Bridge); err != nil {
		c.errf("cluster.network.bridge", "%q: %v", n.Bridge, err)
	}

	if n.Subnet == "" {
		c.errf("cluster.network.subnet", `required: the IPv4 subnet shared by the host and every kernel, e.g. "10.199.0.0/24"`)
		return
	}
	p, err := netip.ParsePrefix(n.Subnet)
	switch {
	case err != nil:
		c.errf("cluster.network.subnet", "%q is not a CIDR subnet such as \"10.199.0.0/24\"", n.Subnet)
		return
	case !p.Addr().Is4():
		c.errf("cluster.network.subnet", "%s: only IPv4 subnets are supported", p)
		return
	case p.Bits() < 8 || p.Bits() > 29:
		c.errf("cluster.network.subnet", "%s: prefix length must be 8 to 29 (room for the host and kernels)", p)
		return
	case p.Masked() != p:
		c.errf("cluster.network.subnet", "%s has host bits set; did you mean %s?", p, p.Masked())
		return
	}
	cl.Network.Subnet = p

	if n.HostAddress == "" {
		cl.Network.Host = p.Addr().Next()
		return
	}
	a, err := netip.ParseAddr(n.HostAddress)
	if err != nil {
		c.errf("cluster.network.host_address", "%q is not an IPv4 address", n.HostAddress)
		return
	}
	if msg := hostAddrProblem(p, a); msg != "" {
		c.errf("cluster.network.host_address", "%s %s", a, msg)
		return
	}
	cl.Network.Host = a
}

// hostAddrProblem says why a is not usable as a host address in p, or "".
func hostAddrProblem(p netip.Prefix, a netip.Addr) string {
	switch {
	case !a.Is4():
		return "is not IPv4"
	case !p.Contains(a):
		return fmt.Sprintf("is outside the subnet %s", p)
	case a == p.Addr():
		return fmt.Sprintf("is the network address of %s", p)
	case a == broadcast(p):
		return fmt.Sprintf("is the broadcast address of %s", p)
	}
	return ""
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) | host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func checkIfName(s string) error {
	switch {
	case len(s) > ifNameMax:
		return fmt.Errorf("longer than %d characters", ifNameMax)
	case s == "." || s == "..":
		return errors.New("not a valid interface name")
	case strings.ContainsAny(s, "/: \t\n"):
		return errors.New("contains '/', ':' or white space")
	}
	return nil
}

// defaultBridge is "pv-<cluster>", shortened with a hash when too long.
func defaultBridge(cluster string) string {
	b := "pv-" + cluster
	if len(b) <= ifNameMax {
		return b
	}
	return fmt.Sprintf("pv-%s-%04x", cluster[:7], fnv32(cluster)&0xffff)
}

func fnv32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

func (c *checker) checkKernel(cl *Cluster, i int) *Kernel {
	ks := c.f.Kernels[i]
	at := func(field string) string { return fmt.Sprintf("kernel[%d].%s", i, field) }
	k := &Kernel{Index: i, Name: ks.Name, NUMANode: -1, Mlock: ks.Mlock, Cmdline: ks.Cmdline}

	switch {
	case ks.Name == "":
		c.errf(at("name"), "required")
	case !nameRE.MatchString(ks.Name):
		c.errf(at("name"), "%q: use 1-32 letters, digits, '-' or '_', starting with a letter or digit", ks.Name)
	}

	k.Flavour = Flavour(defaultStr(ks.Flavour, string(FlavourFull)))
	if k.Flavour != FlavourFull && k.Flavour != FlavourLight {
		c.errf(at("flavour"), "%q: want \"full\" or \"light\"", ks.Flavour)
	}
	k.Restart = Restart(defaultStr(ks.Restart, string(RestartAlways)))
	if k.Restart != RestartAlways && k.Restart != RestartNever {
		c.errf(at("restart"), "%q: want \"always\" (a reset reboots the kernel) or \"never\" (a reset ends it as crashed)", ks.Restart)
	}
	k.Boot = BootMode(defaultStr(ks.Boot, string(BootUp)))
	if k.Boot != BootUp && k.Boot != BootManual {
		c.errf(at("boot"), "%q: want \"up\" (boot with the cluster) or \"manual\" (boot later with `popvmm boot`)", ks.Boot)
	}
	k.Backing = Backing(defaultStr(ks.Backing, string(BackingMemfd)))
	if k.Backing.PageSize() == 0 {
		c.errf(at("backing"), "%q: want \"memfd\", \"hugetlbfs-2M\" or \"hugetlbfs-1G\"", ks.Backing)
	}

	if ks.CPUs == "" {
		c.errf(at("cpus"), "required: the host cores this kernel owns, e.g. \"1\" or \"2-3\"")
	} else if cpus, err := ParseCPUList(ks.CPUs); err != nil {
		c.errf(at("cpus"), "%v", err)
	} else {
		k.CPUs = cpus
	}

	if ks.NUMANode != nil {
		if *ks.NUMANode < 0 {
			c.errf(at("numa_node"), "%d is negative", *ks.NUMANode)
		} else {
			k.NUMANode = *ks.NUMANode
		}
	}

	memOK := c.checkMemory(k, ks, at)
	initrdSize := c.checkBootFiles(cl, k, ks, at)
	if strings.ContainsAny(ks.Cmdline, "\x00\n\r") {
		c.errf(at("cmdline"), "contains a NUL or newline")
	} else if len(ks.Cmdline) > maxCmdline {
		c.errf(at("cmdline"), "%d bytes is over the %d-byte limit (popvmm adds its own parameters)", len(ks.Cmdline), maxCmdline)
	}

	k.ConsoleLog = c.abs(ks.ConsoleLog)
	if ks.ConsoleLog == "" {
		k.ConsoleLog = filepath.Join(cl.RunDir, ks.Name+".console.log")
	} else if st, err := os.Stat(filepath.Dir(k.ConsoleLog)); err != nil || !st.IsDir() {
		c.errf(at("console_log"), "directory %s does not exist", filepath.Dir(k.ConsoleLog))
	} else if st, err := os.Stat(k.ConsoleLog); err == nil && st.IsDir() {
		c.errf(at("console_log"), "%s is a directory", k.ConsoleLog)
	}
	k.ConsoleLogMax = defaultConsoleLogMax
	if ks.ConsoleLogMax.IsSet() {
		switch n, err := scalarSize(ks.ConsoleLogMax); {
		case err != nil:
			c.errf(at("console_log_max"), "%v", err)
		case n < minConsoleLogMax:
			c.errf(at("console_log_max"), "%s is under the %s minimum", memmap.FormatSize(n), memmap.FormatSize(minConsoleLogMax))
		case n > 1<<62:
			c.errf(at("console_log_max"), "%s is too large", memmap.FormatSize(n))
		default:
			k.ConsoleLogMax = n
		}
	}

	ptOK := true
	for j := range ks.Passthrough {
		p, ok := c.checkPassthrough(ks.Passthrough[j], func(f string) string { return at(fmt.Sprintf("passthrough[%d].%s", j, f)) })
		k.Passthrough = append(k.Passthrough, p)
		ptOK = ptOK && ok
	}
	c.checkDisks(k, ks, at)
	if memOK && ptOK {
		c.layout(cl, k, at)
	}
	c.checkPlacement(k, initrdSize, at)
	return k
}

// checkPlacement checks where the loader will put the kernel and initrd in
// the kernel's layout, with the functions the loader itself calls: no
// kernel byte over a boot structure, below 1 MiB, in the PCI hole or
// beyond RAM, and room for the initrd above the kernel.
func (c *checker) checkPlacement(k *Kernel, initrdSize uint64, at func(string) string) {
	if k.Layout == nil || k.KernelInfo.Format == "" {
		return // reported already, or a default image not built yet
	}
	p := k.KernelInfo.Placement
	if err := p.Fits(k.Layout); err != nil {
		c.errf(at("kernel"), "%s: %v", k.KernelPath, err)
		return
	}
	if initrdSize == 0 {
		return
	}
	if err := k.InitrdFits(initrdSize); err != nil {
		c.errf(at("initrd"), "%s: %v with this kernel in %s of memory", k.InitrdPath, err, memmap.FormatSize(k.Memory))
	}
}

// InitrdFits says whether an initrd of size bytes fits where the loader
// puts it with this kernel, in this kernel's layout (the loader's own
// boot.Placement.InitrdAddr): nil when it does, or when the kernel or the
// layout is unknown (reported by Check). Check sizes the initrd file
// alone; the supervisor boots it with the kernel's overlay appended
// (guest.CheckInitramfs checks that size).
func (k *Kernel) InitrdFits(size uint64) error {
	if k.Layout == nil || k.KernelInfo.Format == "" {
		return nil
	}
	_, err := k.KernelInfo.Placement.InitrdAddr(k.Layout, size)
	return err
}

func defaultStr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func (c *checker) checkMemory(k *Kernel, ks KernelSection, at func(string) string) bool {
	if !ks.Memory.IsSet() {
		c.errf(at("memory"), "required, e.g. \"512M\"")
		return false
	}
	n, err := scalarSize(ks.Memory)
	if err != nil {
		c.errf(at("memory"), "%v", err)
		return false
	}
	if n == 0 {
		c.errf(at("memory"), "is zero")
		return false
	}
	k.Memory = n
	ps := k.Backing.PageSize()
	if ps == 0 {
		return false // reported at backing
	}
	if n%ps != 0 {
		if k.Backing == BackingMemfd {
			c.errf(at("memory"), "%s is not a multiple of the 4 KiB page size", memmap.FormatSize(n))
		} else {
			c.errf(at("memory"), "%s is not a multiple of the %s huge page size of backing %q",
				memmap.FormatSize(n), memmap.FormatSize(ps), k.Backing)
		}
		return false
	}
	return true
}

// checkBootFiles resolves and inspects the kernel and initrd; it returns
// the initrd's size (0 when it cannot be read).
func (c *checker) checkBootFiles(cl *Cluster, k *Kernel, ks KernelSection, at func(string) string) uint64 {
	defKernel, defInitrd := ImagePaths(cl.ImagesDir, k.Flavour)
	k.KernelPath = c.abs(ks.Kernel)
	if ks.Kernel == "" {
		k.KernelPath = defKernel
	}
	switch info, err := InspectKernel(k.KernelPath); {
	case err == nil:
		k.KernelInfo = info
	case ks.Kernel == "" && errors.Is(err, os.ErrNotExist):
		c.warnf("kernel[%d].kernel: default %s image %s is not built yet (run `make images`); %q cannot boot until it is",
			k.Index, k.Flavour, k.KernelPath, ks.Name)
	default:
		c.errf(at("kernel"), "%s: %v", k.KernelPath, unwrapPath(err))
	}

	k.InitrdPath = c.abs(ks.Initrd)
	if ks.Initrd == "" {
		k.InitrdPath = defInitrd
	}
	size, err := checkReadableFile(k.InitrdPath)
	switch {
	case err == nil:
	case ks.Initrd == "" && errors.Is(err, os.ErrNotExist):
		c.warnf("kernel[%d].initrd: default %s initramfs %s is not built yet (run `make images`)", k.Index, k.Flavour, k.InitrdPath)
	default:
		c.errf(at("initrd"), "%s: %v", k.InitrdPath, unwrapPath(err))
	}
	return size
}

// unwrapPath drops the *PathError prefix (the path is printed already).
func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// checkReadableFile checks that p is a non-empty regular file this user
// can open, and returns its size.
func checkReadableFile(p string) (uint64, error) {
	f, err := openNonBlock(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		return 0, err
	case !st.Mode().IsRegular():
		return 0, errors.New("not a regular file")
	case st.Size() == 0:
		return 0, errors.New("empty file")
	}
	return uint64(st.Size()), nil
}

func (c *checker) checkPassthrough(ps PassthroughSection, at func(string) string) (Passthrough, bool) {
	p := Passthrough{Path: c.abs(ps.Path), ReadOnly: ps.ReadOnly}
	ok := true
	fail := func(field, format string, args ...any) {
		c.errf(at(field), format, args...)
		ok = false
	}
	var err error
	if ps.Offset.IsSet() {
		if p.Offset, err = scalarAddr(ps.Offset); err != nil {
			fail("offset", "%v", err)
		} else if p.Offset%memmap.PageSize != 0 {
			fail("offset", "%#x is not 4 KiB aligned", p.Offset)
		}
	}
	if p.Size, err = scalarSize(ps.Size); err != nil {
		fail("size", "%v", err)
	} else if p.Size == 0 || p.Size%memmap.PageSize != 0 {
		fail("size", "%s is not a non-zero multiple of 4 KiB", memmap.FormatSize(p.Size))
	}
	if p.GuestAddress, err = scalarAddr(ps.GuestAddress); err != nil {
		fail("guest_address", "%v", err)
	}

	if ps.Path == "" {
		fail("path", "required: the host file or device to map")
		return p, ok
	}
	// The mapping is [offset, offset+size) of the file: its end must not
	// wrap past 2^64 (it would pass the end-of-file check below) and must
	// be a valid mmap offset (off_t, signed 64 bits).
	end, fits := memmap.End(p.Offset, p.Size)
	if !fits || end > math.MaxInt64 {
		fail("offset", "offset %#x + size %s overflows a 64-bit file offset", p.Offset, memmap.FormatSize(p.Size))
		return p, ok
	}
	mode := uint32(unix.R_OK)
	if !ps.ReadOnly {
		mode |= unix.W_OK
	}
	st, err := os.Stat(p.Path)
	switch {
	case err != nil:
		fail("path", "%s: %v", p.Path, unwrapPath(err))
		return p, ok
	case st.IsDir():
		fail("path", "%s is a directory", p.Path)
		return p, ok
	case unix.Access(p.Path, mode) != nil:
		want := "readable"
		if !ps.ReadOnly {
			want = "readable and writable (set read_only = true to map it read-only)"
		}
		fail("path", "%s is not %s", p.Path, want)
		return p, ok
	}
	// A regular file or a block device has an end, and mmap maps past
	// it without complaint: the first access there faults (SIGBUS), in
	// the guest or in the VMM copying for a device. A character
	// device's driver decides at mmap (probeMap).
	fileEnd, hasEnd := uint64(st.Size()), st.Mode().IsRegular()
	if st.Mode()&os.ModeDevice != 0 && st.Mode()&os.ModeCharDevice == 0 {
		if fileEnd, err = blockDeviceSize(p.Path); err != nil {
			fail("path", "%v", err)
			return p, ok
		}
		hasEnd = true
	}
	if hasEnd && end > fileEnd {
		fail("size", "offset %#x + size %s runs past the end of %s (%d bytes)", p.Offset, memmap.FormatSize(p.Size), p.Path, fileEnd)
	} else if err := probeMap(p); err != nil {
		fail("path", "%s cannot be mapped: %v", p.Path, err)
	}
	return p, ok
}

// probeMap maps p's region as the VMM will (vmm's mapPassthrough: the
// same open flags, protection and MAP_SHARED) and unmaps it at once, so
// that a file the VMM cannot map (a FIFO, /dev/null, a sysfs attribute:
// ENODEV) is refused here and not only when its kernel boots. Nothing is
// read or written.
func probeMap(p Passthrough) error {
	flags, prot := unix.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	if p.ReadOnly {
		flags, prot = unix.O_RDONLY, unix.PROT_READ
	}
	fd, err := unix.Open(p.Path, flags|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	b, err := unix.Mmap(fd, int64(p.Offset), int(p.Size), prot, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	return unix.Munmap(b)
}

func (c *checker) layout(cl *Cluster, k *Kernel, at func(string) string) {
	spec := memmap.Spec{RAM: k.Memory, RAMAlign: k.Backing.PageSize(), WindowSize: cl.Window.Size}
	for j, p := range k.Passthrough {
		spec.Passthrough = append(spec.Passthrough, memmap.PassthroughSpec{
			Name: fmt.Sprintf("passthrough[%d]", j), GPA: p.GuestAddress, Size: p.Size})
	}
	l, err := memmap.New(spec)
	if err == nil {
		k.Layout = l
		return
	}
	if pes := passthroughErrors(err); len(pes) > 0 {
		for _, pe := range pes {
			c.errf(at(fmt.Sprintf("passthrough[%d].guest_address", pe.Index)), "%v", pe.Err)
		}
		return
	}
	c.errf(at("memory"), "%s", strings.TrimPrefix(err.Error(), memmap.ErrRAMSize.Error()+": "))
}

func passthroughErrors(err error) []*memmap.PassthroughError {
	var out []*memmap.PassthroughError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, passthroughErrors(e)...)
		}
		return out
	}
	var pe *memmap.PassthroughError
	if errors.As(err, &pe) {
		out = append(out, pe)
	}
	return out
}

// rotatedLog is the name a console log is renamed to at console_log_max:
// vtty.RotatedLog, which cluster may not import (TestRotatedLogName holds
// them equal).
func rotatedLog(path string) string { return path + ".1" }

// fileID is the device and inode of the file at p, when there is one.
func fileID(p string) ([2]uint64, bool) {
	var st unix.Stat_t
	if unix.Stat(p, &st) != nil {
		return [2]uint64{}, false
	}
	return [2]uint64{st.Dev, st.Ino}, true
}

// checkConsoleLogs refuses a console log whose name, or rotated name
// (LOG.1), is another file of the cluster (the same path, or the same
// device and inode): another kernel's console log or rotated log, or a
// kernel, initrd, disk or passthrough file. A console log is appended to
// and, at console_log_max, renamed to LOG.1 with a new LOG in its place:
// two consoles would interleave and rotate each other's logs (a log named
// "x.1" is where the log "x" is rotated to), and a disk image or kernel
// named as a log, or as a log's LOG.1, would be written to, moved away or
// replaced.
func (c *checker) checkConsoleLogs(cl *Cluster) {
	byPath := map[string]string{}
	byID := map[[2]uint64]string{}
	add := func(p, what string) {
		if p == "" {
			return
		}
		p = filepath.Clean(p)
		if _, ok := byPath[p]; !ok {
			byPath[p] = what
		}
		if id, ok := fileID(p); ok && byID[id] == "" {
			byID[id] = what
		}
	}
	// find returns what p already is, by path or by device and inode.
	find := func(p string) string {
		if other := byPath[p]; other != "" {
			return other
		}
		if id, ok := fileID(p); ok {
			return byID[id]
		}
		return ""
	}
	for _, k := range cl.Kernels {
		at := fmt.Sprintf("kernel[%d].", k.Index)
		add(k.KernelPath, at+"kernel")
		add(k.InitrdPath, at+"initrd")
		for _, d := range k.Disks {
			add(d.Path, d.Field)
		}
		for j, p := range k.Passthrough {
			add(p.Path, fmt.Sprintf("%spassthrough[%d].path", at, j))
		}
	}
	// The default logs (RUN_DIR/NAME.console.log) first: two of them, or
	// one and the other's LOG.1, are one file only for a duplicate name
	// (a name has no '.'), reported at the name. A console_log given in
	// the config is then checked against them too.
	isLog := func(what string) bool {
		return strings.HasSuffix(what, ".console_log") || strings.HasSuffix(what, ".console_log's rotated log")
	}
	for _, given := range []bool{false, true} {
		for _, k := range cl.Kernels {
			if (c.f.Kernels[k.Index].ConsoleLog != "") != given {
				continue
			}
			p, field := filepath.Clean(k.ConsoleLog), fmt.Sprintf("kernel[%d].console_log", k.Index)
			var st unix.Stat_t
			if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT != unix.S_IFREG {
				continue // a device node (/dev/null) or a FIFO is never rotated, and may be every kernel's log
			}
			rotated := rotatedLog(p)
			switch other, otherRotated := find(p), find(rotated); {
			case other != "" && (given || !isLog(other)):
				c.errf(field, "%s is also %s: a console log is appended to, and renamed to LOG.1 at console_log_max; give it a file of its own", k.ConsoleLog, other)
				continue
			case otherRotated != "" && (given || !isLog(otherRotated)):
				c.errf(field, "%s is rotated at console_log_max to %s, which is also %s; give it a name whose LOG and LOG.1 are files of its own", k.ConsoleLog, rotated, otherRotated)
				continue
			}
			add(p, field)
			add(rotated, field+"'s rotated log")
		}
	}
}

// checkAcross checks what involves several kernels or the host as a whole.
func (c *checker) checkAcross(cl *Cluster) {
	names := map[string]int{}
	owner := map[int]int{}
	up := 0
	for _, k := range cl.Kernels {
		if k.Boot == BootUp {
			up++
		}
		if j, dup := names[k.Name]; dup && k.Name != "" {
			c.errf(fmt.Sprintf("kernel[%d].name", k.Index), "%q is already used by kernel[%d]", k.Name, j)
		} else {
			names[k.Name] = k.Index
		}
		for _, cpu := range k.CPUs {
			if j, taken := owner[cpu]; taken {
				c.errf(fmt.Sprintf("kernel[%d].cpus", k.Index), "core %d is already owned by kernel %q", cpu, cl.Kernels[j].Name)
				continue
			}
			owner[cpu] = k.Index
		}
	}
	if len(cl.Kernels) > 0 && up == 0 {
		c.errf("kernel", "every kernel has boot = \"manual\": at least one must boot with the cluster (boot = \"up\")")
	}
	c.checkWindowPeers(cl) // window.go
	c.checkWinnet(cl)      // winnet.go
	c.checkHostCPUs(cl)
	c.checkHostMemory(cl)
	c.assignAddresses(cl)
}

func (c *checker) checkHostCPUs(cl *Cluster) {
	online, err := c.host.OnlineCPUs()
	if err != nil {
		c.warnf("cannot read the host's online CPUs (%v); core numbers not checked", err)
		return
	}
	for _, k := range cl.Kernels {
		for _, cpu := range k.CPUs {
			if !slices.Contains(online, cpu) {
				c.errf(fmt.Sprintf("kernel[%d].cpus", k.Index), "core %d is not online on this host (online: %s)", cpu, FormatCPUList(online))
			}
		}
	}
	nodes, err := c.host.OnlineNUMANodes()
	for _, k := range cl.Kernels {
		if k.NUMANode < 0 {
			continue
		}
		if err != nil {
			c.warnf("kernel[%d].numa_node: cannot read the host's NUMA nodes (%v); not checked", k.Index, err)
		} else if !slices.Contains(nodes, k.NUMANode) {
			c.errf(fmt.Sprintf("kernel[%d].numa_node", k.Index), "node %d is not online on this host (online: %s)", k.NUMANode, FormatCPUList(nodes))
		}
	}
}

func (c *checker) checkHostMemory(cl *Cluster) {
	need := map[Backing]uint64{}
	var parts []string
	for _, k := range cl.Kernels {
		need[k.Backing] = addSat(need[k.Backing], k.Memory)
		if k.Backing == BackingMemfd && k.Memory > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", k.Name, memmap.FormatSize(k.Memory)))
		}
	}
	total := addSat(need[BackingMemfd], cl.Window.Size)
	parts = append(parts, "window "+memmap.FormatSize(cl.Window.Size))
	if cl.Winnet.Enabled {
		total = addSat(total, cl.Winnet.Size)
		parts = append(parts, "window network "+memmap.FormatSize(cl.Winnet.Size))
	}
	if avail, err := c.host.MemAvailable(); err != nil {
		c.warnf("cannot read the host's MemAvailable (%v); memory total not checked", err)
	} else if total > avail {
		c.errf("kernel[*].memory", "the cluster needs %s (%s) but this host has %s available (MemAvailable)",
			memmap.FormatSize(total), strings.Join(parts, " + "), memmap.FormatSize(avail&^(memmap.MiB-1)))
	}
	for _, b := range []Backing{BackingHugetlb2M, BackingHugetlb1G} {
		if need[b] == 0 {
			continue
		}
		ps := b.PageSize()
		pages := need[b] / ps // counted in pages: free*ps could wrap
		if need[b]%ps != 0 {
			pages++
		}
		free, err := c.host.FreeHugePages(ps)
		if err != nil {
			c.errf("kernel[*].backing", "%q: this host has no %s huge pages (%v)", b, memmap.FormatSize(ps), unwrapPath(err))
		} else if pages > free {
			c.errf("kernel[*].backing", "%q: kernels need %d huge pages of %s but %d are free (see /sys/kernel/mm/hugepages)",
				b, pages, memmap.FormatSize(ps), free)
		}
	}
}

// addSat is a+b, or the largest uint64 when the sum does not fit: memory
// sizes from a config may be anything up to 2^64-1, and a wrapped total
// would pass the host's check.
func addSat(a, b uint64) uint64 {
	if s, ok := memmap.End(a, b); ok {
		return s
	}
	return math.MaxUint64
}

// assignAddresses checks configured IPs and MACs and derives the missing
// ones: an IP hashed from the kernel's name into the subnet (probing past
// taken addresses), a locally administered MAC hashed from cluster and
// kernel name.
func (c *checker) assignAddresses(cl *Cluster) {
	p := cl.Network.Subnet
	taken := map[netip.Addr]int{}
	macs := map[string]int{}
	for _, k := range cl.Kernels {
		ks := c.f.Kernels[k.Index]
		at := func(f string) string { return fmt.Sprintf("kernel[%d].%s", k.Index, f) }
		if ks.IP != "" {
			a, err := netip.ParseAddr(ks.IP)
			switch {
			case err != nil:
				c.errf(at("ip"), "%q is not an IPv4 address", ks.IP)
			case !p.IsValid():
				// The subnet is reported already.
			case hostAddrProblem(p, a) != "":
				c.errf(at("ip"), "%s %s", a, hostAddrProblem(p, a))
			case a == cl.Network.Host:
				c.errf(at("ip"), "%s is the host's address on the bridge", a)
			default:
				if j, dup := taken[a]; dup {
					c.errf(at("ip"), "%s is already used by kernel %q", a, cl.Kernels[j].Name)
				} else {
					taken[a] = k.Index
					k.IP = a
				}
			}
		}
		mac := ks.MAC
		if mac == "" {
			h := fnv32(cl.Name + "/" + k.Name)
			mac = net.HardwareAddr{0x02, 0x70, byte(h >> 24), byte(h >> 16), byte(h >> 8), byte(h)}.String()
		}
		hw, err := net.ParseMAC(mac)
		switch {
		case err != nil || len(hw) != 6:
			c.errf(at("mac"), "%q is not a MAC address such as \"02:70:00:00:00:01\"", ks.MAC)
		case hw[0]&1 != 0:
			c.errf(at("mac"), "%s is a multicast address (lowest bit of the first octet set)", hw)
		case isZero(hw):
			c.errf(at("mac"), "%s is the all-zero address", hw)
		default:
			if j, dup := macs[hw.String()]; dup {
				c.errf(at("mac"), "%s is already used by kernel %q", hw, cl.Kernels[j].Name)
			} else {
				macs[hw.String()] = k.Index
				k.MAC = hw
			}
		}
	}
	if !p.IsValid() {
		return
	}
	for _, k := range cl.Kernels {
		if c.f.Kernels[k.Index].IP != "" {
			continue
		}
		a, ok := deriveIP(p, k.Name, cl.Network.Host, taken)
		if !ok {
			c.errf(fmt.Sprintf("kernel[%d].ip", k.Index), "subnet %s has no free address left", p)
			continue
		}
		taken[a] = k.Index
		k.IP = a
	}
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// deriveIP picks the host address fnv(name) mod hosts in p, probing upward
// past the host address and addresses already taken.
func deriveIP(p netip.Prefix, name string, host netip.Addr, taken map[netip.Addr]int) (netip.Addr, bool) {
	hosts := uint32(1)<<(32-p.Bits()) - 2
	b := p.Addr().As4()
	base := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	start := fnv32(name) % hosts
	for i := range hosts {
		v := base + 1 + (start+i)%hosts
		a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
		if _, used := taken[a]; !used && a != host {
			return a, true
		}
	}
	return netip.Addr{}, false
}

// checkTapNames checks the tap every kernel gets (linkname.Tap, from the
// cluster name and the kernel's index) with the rule every link name
// passes (linkname.Check), and that no tap is called like the bridge.
func (c *checker) checkTapNames(cl *Cluster) {
	if !nameRE.MatchString(cl.Name) {
		return // reported as cluster.name
	}
	for _, k := range cl.Kernels {
		tap := linkname.Tap(cl.Name, k.Index)
		if err := linkname.Check(tap); err != nil {
			c.errf(fmt.Sprintf("kernel[%d]", k.Index), "its tap: %v", err)
		} else if tap == cl.Network.Bridge {
			c.errf("cluster.network.bridge", "%q is the name of kernel %q's tap; choose another", tap, k.Name)
		}
	}
}
