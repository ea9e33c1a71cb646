package cluster

import (
	"fmt"
	"io"
	"strings"

	"golang.org/x/sys/unix"
)

// DiskSection is one [[kernel.disk]] table: a raw disk image or block
// device the kernel sees as a virtio-blk disk.
type DiskSection struct {
	Path     string `toml:"path"`
	ReadOnly bool   `toml:"read_only"`
	Serial   string `toml:"serial"`
}

// DiskRole says what a kernel's disk is for.
type DiskRole string

// Disk roles, in the order a kernel's disks are attached: the guest sees
// them as /dev/vda, /dev/vdb, ... in this order.
const (
	RoleRoot      DiskRole = "root"       // kernel.root: the shared root image, read-only
	RoleRootUpper DiskRole = "root-upper" // kernel.root_upper: the overlay's writable upper layer
	RoleData      DiskRole = "data"       // a [[kernel.disk]]
)

// maxSerial is VIRTIO_BLK_ID_BYTES, what GET_ID returns (virtio 1.2, 5.2.6).
const maxSerial = 20

// Disk is one resolved disk of a kernel.
type Disk struct {
	Role     DiskRole `json:"role"`
	Path     string   `json:"path"` // absolute
	ReadOnly bool     `json:"read_only"`
	Serial   string   `json:"serial,omitempty"`
	Size     uint64   `json:"size"` // bytes, a multiple of 512
	// Field is the config field that named it, for messages
	// ("kernel[1].disk[0].path").
	Field string `json:"-"`
	dev   uint64
	ino   uint64
}

// DeviceName is the guest's name of disk i of a kernel (its order in
// Kernel.Disks): vda, vdb, ..., vdz, vdaa, ... as Linux's virtio_blk
// names them.
func DeviceName(i int) string {
	name := ""
	for i++; i > 0; i = (i - 1) / 26 {
		name = string(rune('a'+(i-1)%26)) + name
	}
	return "vd" + name
}

// checkDisks resolves a kernel's root image, root upper disk and
// [[kernel.disk]] entries, in that order.
func (c *checker) checkDisks(k *Kernel, ks KernelSection, at func(string) string) {
	if ks.RootUpper != "" && ks.Root == "" {
		c.errf(at("root_upper"), "set without root: an upper layer needs a root image to lie over")
	}
	if ks.Root != "" {
		c.checkDisk(k, DiskSection{Path: ks.Root, ReadOnly: true, Serial: "root"}, RoleRoot, at("root"))
	}
	if ks.RootUpper != "" && ks.Root != "" {
		c.checkDisk(k, DiskSection{Path: ks.RootUpper, Serial: "root-upper"}, RoleRootUpper, at("root_upper"))
	}
	for j, ds := range ks.Disks {
		c.checkDisk(k, ds, RoleData, at(fmt.Sprintf("disk[%d].path", j)))
	}
}

func (c *checker) checkDisk(k *Kernel, ds DiskSection, role DiskRole, field string) {
	serialField := strings.TrimSuffix(field, ".path") + ".serial"
	switch {
	case len(ds.Serial) > maxSerial:
		c.errf(serialField, "%q is %d bytes, over the %d a virtio-blk serial holds", ds.Serial, len(ds.Serial), maxSerial)
		return
	case strings.IndexFunc(ds.Serial, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0:
		c.errf(serialField, "%q: use printable ASCII", ds.Serial)
		return
	}
	if ds.Path == "" {
		c.errf(field, "required: the disk image or block device")
		return
	}
	d := Disk{Role: role, Path: c.abs(ds.Path), ReadOnly: ds.ReadOnly, Serial: ds.Serial, Field: field}
	var st unix.Stat_t
	if err := unix.Stat(d.Path, &st); err != nil {
		c.errf(field, "%s: %v", d.Path, err)
		return
	}
	mode := st.Mode & unix.S_IFMT
	if mode == unix.S_IFDIR {
		c.errf(field, "%s is a directory, not a disk image (make one with `popvmm disk pack DIR IMAGE`)", d.Path)
		return
	}
	if mode != unix.S_IFREG && mode != unix.S_IFBLK {
		c.errf(field, "%s is not a regular file or block device", d.Path)
		return
	}
	want := uint32(unix.R_OK)
	if !d.ReadOnly {
		want |= unix.W_OK
	}
	if unix.Access(d.Path, want) != nil {
		how := "readable"
		if !d.ReadOnly {
			how = "readable and writable (set read_only = true to attach it read-only)"
		}
		c.errf(field, "%s is not %s", d.Path, how)
		return
	}
	d.Size = uint64(st.Size)
	if mode == unix.S_IFBLK {
		n, err := blockDeviceSize(d.Path)
		if err != nil {
			c.errf(field, "%v", err)
			return
		}
		d.Size = n
	}
	if d.Size%512 != 0 || d.Size == 0 {
		c.errf(field, "%s is %d bytes: a disk is a non-zero whole number of 512-byte sectors", d.Path, d.Size)
		return
	}
	d.dev, d.ino = uint64(st.Dev), st.Ino
	k.Disks = append(k.Disks, d)
}

// checkDiskSharing refuses a disk (the same file: device and inode, not
// the path) that is writable in one place and attached in another, in the
// same kernel or another: only read-only disks are shared.
func (c *checker) checkDiskSharing(cl *Cluster) {
	type use struct {
		k    *Kernel
		disk Disk
	}
	seen := map[[2]uint64]use{}
	for _, k := range cl.Kernels {
		for _, d := range k.Disks {
			id := [2]uint64{d.dev, d.ino}
			first, ok := seen[id]
			if !ok {
				seen[id] = use{k, d}
				continue
			}
			if first.disk.ReadOnly && d.ReadOnly {
				continue
			}
			c.errf(d.Field, "%s is the same file as %s (kernel %q's %s), and a disk writable in one place cannot be attached in another: set read_only = true on both, or use a copy",
				d.Path, first.disk.Path, first.k.Name, first.disk.Field)
		}
	}
}

// blockDeviceSize is the size of the block device at path, which stat
// does not give (its st_size is 0).
func blockDeviceSize(path string) (uint64, error) {
	f, err := openNonBlock(path)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, unwrapPath(err))
	}
	defer f.Close()
	n, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("%s: size: %w", path, err)
	}
	return uint64(n), nil
}
