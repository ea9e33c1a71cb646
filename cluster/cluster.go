package cluster

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/popvmm/popvmm/memmap"
)

// Cluster is a checked, fully resolved cluster config: every default
// applied, every path absolute, every address assigned.
type Cluster struct {
	Name       string    `json:"name"`
	ConfigPath string    `json:"config_path"`
	RunDir     string    `json:"run_dir"`
	ImagesDir  string    `json:"images_dir"`
	Window     Window    `json:"window"`
	Network    Network   `json:"network"`
	Winnet     Winnet    `json:"winnet"`
	Kernels    []*Kernel `json:"kernels"`
	// Warnings are problems that do not stop validation but will stop
	// (or weaken) a boot, e.g. a default kernel image not built yet.
	Warnings []string `json:"warnings,omitempty"`
}

// Window is the shared inter-kernel window.
type Window struct {
	Size    uint64 `json:"size"`
	Protect bool   `json:"protect"`
}

// Network is the cluster's bridge and subnet.
type Network struct {
	Bridge string       `json:"bridge"`
	Subnet netip.Prefix `json:"subnet"`
	Host   netip.Addr   `json:"host_address"`
}

// Flavour is the kind of kernel build: Popcorn's full (all drivers and
// services) or light (minimal processor support, tiny ramdisk).
type Flavour string

// Flavours.
const (
	FlavourFull  Flavour = "full"
	FlavourLight Flavour = "light"
)

// Backing says what guest RAM is allocated from.
type Backing string

// Backings.
const (
	BackingMemfd     Backing = "memfd"
	BackingHugetlb2M Backing = "hugetlbfs-2M"
	BackingHugetlb1G Backing = "hugetlbfs-1G"
)

// PageSize is the backing's page size in bytes, or 0 for an unknown backing.
func (b Backing) PageSize() uint64 {
	switch b {
	case BackingMemfd:
		return 4 << 10
	case BackingHugetlb2M:
		return 2 << 20
	case BackingHugetlb1G:
		return 1 << 30
	}
	return 0
}

// BootMode says when a kernel boots.
type BootMode string

// Restart is what a kernel's reset (reboot) request does.
type Restart string

// Restart policies.
const (
	RestartAlways Restart = "always" // a reset reboots the kernel in its VM
	RestartNever  Restart = "never"  // a reset ends the VM as crashed, console kept
)

// Boot modes.
const (
	BootUp     BootMode = "up"     // with the cluster
	BootManual BootMode = "manual" // later, with `popvmm boot NAME`
)

// Kernel is one resolved [[kernel]].
type Kernel struct {
	// Index is the kernel's position in cluster.toml and its peer id on
	// the shared window.
	Index    int     `json:"peer_id"`
	Name     string  `json:"name"`
	Flavour  Flavour `json:"flavour"`
	CPUs     []int   `json:"cpus"`
	Memory   uint64  `json:"memory"`
	Backing  Backing `json:"backing"`
	NUMANode int     `json:"numa_node"` // -1: not bound
	Mlock    bool    `json:"mlock"`
	// KernelPath and InitrdPath are absolute. KernelInfo is zero when the
	// image does not exist yet (a default image not built; see Warnings).
	KernelPath string           `json:"kernel"`
	KernelInfo ImageInfo        `json:"kernel_info"`
	InitrdPath string           `json:"initrd"`
	Cmdline    string           `json:"cmdline"`
	Boot       BootMode         `json:"boot"`
	Restart    Restart          `json:"restart"`
	IP         netip.Addr       `json:"ip"`
	MAC        net.HardwareAddr `json:"-"`
	ConsoleLog string           `json:"console_log"`
	// WinnetIP is the kernel's address on the window network (win0);
	// invalid when the cluster has none.
	WinnetIP    netip.Addr    `json:"winnet_ip,omitzero"`
	Passthrough []Passthrough `json:"passthrough,omitempty"`
	// Disks are the kernel's virtio-blk disks in the order the guest
	// sees them (DeviceName): the root image, its upper disk, then the
	// [[kernel.disk]] entries.
	Disks  []Disk         `json:"disks,omitempty"`
	Layout *memmap.Layout `json:"layout"`

	// ConsoleLogMax is the console log's cap in bytes: output past it
	// rotates the log to ConsoleLog.1 (vtty.ConsoleConfig.LogMax).
	ConsoleLogMax uint64 `json:"console_log_max"`
}

// RootDisk is the kernel's root image and upper disk, if any, as the
// guest names them ("" when absent).
func (k *Kernel) RootDisk() (root, upper string) {
	for i, d := range k.Disks {
		switch d.Role {
		case RoleRoot:
			root = "/dev/" + DeviceName(i)
		case RoleRootUpper:
			upper = "/dev/" + DeviceName(i)
		}
	}
	return root, upper
}

// MACString is the MAC in the usual colon form.
func (k *Kernel) MACString() string { return k.MAC.String() }

// Passthrough is a host file or device region mapped into a kernel.
type Passthrough struct {
	Path         string `json:"path"`
	Offset       uint64 `json:"offset"`
	Size         uint64 `json:"size"`
	GuestAddress uint64 `json:"guest_address"`
	ReadOnly     bool   `json:"read_only"`
}

// FieldError is one problem in a config, at a field path such as
// "kernel[1].cpus".
type FieldError struct {
	Path string
	Msg  string
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Msg }

// FieldErrors flattens an error returned by Check into its field errors, in
// the order they were found. Errors that are not FieldErrors are returned
// with an empty Path.
func FieldErrors(err error) []*FieldError {
	if err == nil {
		return nil
	}
	var out []*FieldError
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			out = append(out, FieldErrors(e)...)
		}
		return out
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return []*FieldError{fe}
	}
	return []*FieldError{{Msg: err.Error()}}
}

// DefaultRunRoot is the directory holding one run directory per cluster:
// $POPVMM_RUN_ROOT, else /run/popvmm for root, else $XDG_RUNTIME_DIR/popvmm,
// else a per-user directory under the system temporary directory.
func DefaultRunRoot() string {
	if d := os.Getenv("POPVMM_RUN_ROOT"); d != "" {
		return d
	}
	if os.Geteuid() == 0 {
		return "/run/popvmm"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "popvmm")
	}
	return filepath.Join(os.TempDir(), "popvmm-"+strconv.Itoa(os.Geteuid()))
}

// DefaultImagesDir is where flavour images are looked up when a config names
// none: $POPVMM_IMAGES, else /var/lib/popvmm/images.
func DefaultImagesDir() string {
	if d := os.Getenv("POPVMM_IMAGES"); d != "" {
		return d
	}
	return "/var/lib/popvmm/images"
}

// ImagePaths are the files `make images` produces for a flavour.
func ImagePaths(imagesDir string, f Flavour) (kernel, initrd string) {
	return filepath.Join(imagesDir, string(f), "bzImage"), filepath.Join(imagesDir, string(f), "initramfs.cpio")
}

// Kernel returns the kernel named name, or nil.
func (c *Cluster) Kernel(name string) *Kernel {
	for _, k := range c.Kernels {
		if k.Name == name {
			return k
		}
	}
	return nil
}

// Sockets popvmm creates in a cluster's run directory. Package supervisor
// binds them under these names, and Check makes sure each fits a Unix
// socket address in the configured run directory.
const (
	// ControlSocketName is the supervisor's control socket.
	ControlSocketName = "control.sock"
	// WindowSocketName is the shared window's ivshmem server: host
	// processes (popagent, any ivshmem client) join the window there.
	WindowSocketName = "ivshmem.sock"
)

// runDirSockets lists every socket name above; a new socket in the run
// directory belongs here, so that Check sees it.
var runDirSockets = []string{ControlSocketName, WindowSocketName}

// MaxSocketPath is the longest path a Unix socket can be bound at on Linux:
// sockaddr_un's sun_path holds 108 bytes including the terminating NUL.
const MaxSocketPath = 107

// SocketPath is the control socket of the cluster's supervisor.
func (c *Cluster) SocketPath() string { return filepath.Join(c.RunDir, ControlSocketName) }

func errorf(path, format string, args ...any) *FieldError {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}
