package cluster

import (
	"fmt"

	"github.com/popvmm/popvmm/vmm/boot"
)

// ImageFormat is the kind of kernel file popvmm can boot.
type ImageFormat string

// Kernel image formats.
const (
	FormatBzImage = ImageFormat(boot.FormatBzImage) // Linux/x86 boot protocol, 64-bit entry
	FormatELF     = ImageFormat(boot.FormatPVH)     // ELF vmlinux with a PVH entry note
)

// ImageInfo describes a kernel file.
type ImageInfo struct {
	Format ImageFormat `json:"format"`
	// Protocol is the bzImage boot protocol version (0x020f is 2.15).
	Protocol uint16 `json:"protocol,omitempty"`
	// PVHEntry is the 32-bit PVH entry point of an ELF kernel.
	PVHEntry uint32 `json:"pvh_entry,omitempty"`
	// Placement is where the loader puts the kernel in guest memory;
	// Check checks it against the kernel's layout with the same
	// functions the loader calls.
	Placement boot.Placement `json:"placement"`
}

func (i ImageInfo) String() string {
	if i.Format == FormatBzImage {
		return fmt.Sprintf("bzImage, boot protocol %d.%02d", i.Protocol>>8, i.Protocol&0xff)
	}
	return fmt.Sprintf("ELF vmlinux, PVH entry %#x", i.PVHEntry)
}

// ErrNotKernel is returned for a file that is neither kind of kernel.
var ErrNotKernel = boot.ErrNotKernel

// InspectKernel opens path and says which boot path can start it. The
// file is parsed and checked by boot.ParseImage, the very code the loaders
// run on the image at boot (LoadBzImage, LoadPVH): what it accepts, they
// accept, in a layout its Placement fits (Check asks Placement.Fits and
// InitrdAddr, as they do).
func InspectKernel(path string) (ImageInfo, error) {
	f, err := openNonBlock(path)
	if err != nil {
		return ImageInfo{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ImageInfo{}, err
	}
	if !st.Mode().IsRegular() {
		return ImageInfo{}, fmt.Errorf("%w: not a regular file", ErrNotKernel)
	}
	img, err := boot.ParseImage(f, st.Size())
	if err != nil {
		return ImageInfo{}, err
	}
	return ImageInfo{Format: ImageFormat(img.Format), Protocol: img.Protocol, PVHEntry: img.PVHEntry, Placement: img.Placement}, nil
}
