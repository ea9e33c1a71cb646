package lab

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	_ "embed"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/popvmm/popvmm/initramfs"
)

//go:embed init.sh
var initScript []byte

// KernelPackage is the Debian package whose kernel and modules the lab host
// runs (pinned, with its sha256, in images/packages.lock).
const KernelPackage = "linux-image-6.1.0-57-amd64"

// BusyboxPackage gives the lab initramfs its shell and tools.
const BusyboxPackage = "busybox-static"

// Image is a built lab host: Dir/vmlinux (the Debian kernel, decompressed
// at build time so QEMU starts it at its PVH entry without firmware and
// without an XZ decompression under emulation) and Dir/lab.cpio (busybox,
// the modules and /init), with Dir/key naming the inputs it was built from.
type Image struct{ Dir string }

// Kernel is the lab host's kernel, an ELF file with a PVH entry note.
func (im Image) Kernel() string { return filepath.Join(im.Dir, "vmlinux") }

// Initrd is the lab host's initramfs.
func (im Image) Initrd() string { return filepath.Join(im.Dir, "lab.cpio") }

// CacheDir is where built images and downloads are kept across clones:
// $POPVMM_CACHE, else $XDG_CACHE_HOME/popvmm, else ~/.cache/popvmm (the same
// rule as images/cache.sh).
func CacheDir() string {
	if d := os.Getenv("POPVMM_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "popvmm")
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "popvmm")
}

// DefaultImage is the image `make lab` builds and `popvmm lab` uses: a
// directory named by the image's key, so binaries built from different
// commits each find their own image in one cache.
func DefaultImage() Image { return Image{filepath.Join(CacheDir(), "lab", key())} }

// imageFormat changes whenever Build writes something different from the
// same inputs.
const imageFormat = "2 vmlinux"

// key names this binary's idea of the image: its /init, module list and
// format.
func key() string {
	h := sha256.New()
	h.Write(initScript)
	fmt.Fprintf(h, "%s\n%s\n%s\n", KernelPackage, strings.Join(Modules, " "), imageFormat)
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// ErrNoImage says the lab image is missing or was built for another
// version of the lab; `make lab` builds it.
var ErrNoImage = errors.New("lab image not built (run `make lab`)")

// Check reports whether the image is there and matches this binary.
func (im Image) Check() error {
	for _, f := range []string{im.Kernel(), im.Initrd()} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%w: %s missing", ErrNoImage, f)
		}
	}
	k, err := os.ReadFile(filepath.Join(im.Dir, "key"))
	if err != nil || strings.TrimSpace(string(k)) != key() {
		return fmt.Errorf("%w: %s was built for another version of popvmm", ErrNoImage, im.Dir)
	}
	return nil
}

// Build makes the image in im.Dir from Debian packages unpacked under debs
// (images/fetch.sh: debs/NAME/...): the kernel from KernelPackage, busybox
// from BusyboxPackage, and Modules with their dependencies. An image whose
// key matches is left as it is. The initramfs is reproducible.
func (im Image) Build(debs string) (rebuilt bool, err error) {
	if im.Check() == nil {
		return false, nil
	}
	pkg := filepath.Join(debs, KernelPackage)
	versions, err := filepath.Glob(filepath.Join(pkg, "lib", "modules", "*"))
	if err != nil || len(versions) != 1 {
		return false, fmt.Errorf("%s: want one lib/modules/VERSION (fetch it: images/fetch.sh %s)", pkg, KernelPackage)
	}
	version := filepath.Base(versions[0])
	idx, err := moduleIndex(filepath.Join(versions[0], "kernel"))
	if err != nil {
		return false, err
	}
	order, err := LoadOrder(idx, Modules, moduleDepends)
	if err != nil {
		return false, err
	}
	a := initramfs.New()
	for _, d := range []string{"/bin", "/dev", "/proc", "/sys", "/tmp", "/newroot", "/lab", "/lab/mod"} {
		if err := a.Dir(d, 0o755); err != nil {
			return false, err
		}
	}
	if err := a.File("/init", 0o755, initScript); err != nil {
		return false, err
	}
	if err := a.HostFile("/bin/busybox", filepath.Join(debs, BusyboxPackage, "bin", "busybox")); err != nil {
		return false, fmt.Errorf("busybox (fetch it: images/fetch.sh %s): %w", BusyboxPackage, err)
	}
	for _, applet := range []string{"sh", "mount", "insmod", "mkdir", "cat", "echo", "stty", "setsid", "chroot", "sync", "poweroff", "ip", "hostname", "dmesg", "grep", "tail", "sleep", "ln", "rm"} {
		if err := a.Symlink("/bin/"+applet, "busybox"); err != nil {
			return false, err
		}
	}
	for _, m := range order {
		if err := a.HostFile("/lab/mod/"+m+".ko", idx[m]); err != nil {
			return false, err
		}
	}
	if err := a.File("/lab/modules", 0o644, []byte(strings.Join(order, "\n")+"\n")); err != nil {
		return false, err
	}
	if err := a.File("/lab/version", 0o644, []byte(version+"\n")); err != nil {
		return false, err
	}
	cpio, err := a.Bytes()
	if err != nil {
		return false, err
	}
	kernel, err := os.ReadFile(filepath.Join(pkg, "boot", "vmlinuz-"+version))
	if err != nil {
		return false, fmt.Errorf("lab kernel: %w", err)
	}
	vmlinux, err := extractVmlinux(kernel)
	if err != nil {
		return false, fmt.Errorf("lab kernel %s: %w", version, err)
	}
	// Written beside the image and renamed into place: a reader never sees
	// half an image, and a failed build leaves the old one.
	if err := os.MkdirAll(filepath.Dir(im.Dir), 0o755); err != nil {
		return false, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(im.Dir), filepath.Base(im.Dir)+".tmp-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o755); err != nil {
		return false, err
	}
	for name, data := range map[string][]byte{"vmlinux": vmlinux, "lab.cpio": cpio, "key": []byte(key() + "\n")} {
		if err := os.WriteFile(filepath.Join(tmp, name), data, 0o644); err != nil {
			return false, err
		}
	}
	if err := os.RemoveAll(im.Dir); err != nil {
		return false, err
	}
	if err := os.Rename(tmp, im.Dir); err != nil {
		return false, fmt.Errorf("install lab image: %w", err)
	}
	return true, nil
}

// extractVmlinux returns the ELF kernel inside a bzImage whose payload is
// XZ-compressed (Debian's: CONFIG_KERNEL_XZ), decompressed by xz(1), and
// checks that it has the PVH entry note QEMU needs to start it directly.
func extractVmlinux(bz []byte) ([]byte, error) {
	i := bytes.Index(bz, []byte{0xfd, '7', 'z', 'X', 'Z', 0})
	if i < 0 {
		return nil, errors.New("no XZ payload in the bzImage")
	}
	var out, errb bytes.Buffer
	cmd := exec.Command("xz", "-dc", "--single-stream")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(bz[i:]), &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("xz (make deps installs xz-utils): %v: %s", err, strings.TrimSpace(errb.String()))
	}
	f, err := elf.NewFile(bytes.NewReader(out.Bytes()))
	if err != nil {
		return nil, fmt.Errorf("decompressed kernel: %w", err)
	}
	defer f.Close()
	if !hasPVHNote(f) {
		return nil, errors.New("the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY; CONFIG_PVH)")
	}
	return out.Bytes(), nil
}

// hasPVHNote looks for the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (18),
// where QEMU's PVH loader finds the 32-bit entry point.
func hasPVHNote(f *elf.File) bool {
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			return false
		}
		for len(data) >= 12 {
			nameSz, descSz, typ := binary.LittleEndian.Uint32(data), binary.LittleEndian.Uint32(data[4:]), binary.LittleEndian.Uint32(data[8:])
			name := (uint64(nameSz) + 3) &^ 3
			desc := (uint64(descSz) + 3) &^ 3
			if uint64(len(data)) < 12+name+desc {
				break
			}
			if typ == 18 && strings.TrimRight(string(data[12:12+nameSz]), "\x00") == "Xen" {
				return true
			}
			data = data[12+name+desc:]
		}
	}
	return false
}
