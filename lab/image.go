package lab

import (
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
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

// Image is a built lab host: Dir/vmlinuz (the Debian kernel) and
// Dir/lab.cpio (busybox, the modules and /init), with Dir/key naming the
// inputs it was built from.
type Image struct{ Dir string }

// Kernel is the lab host's kernel.
func (im Image) Kernel() string { return filepath.Join(im.Dir, "vmlinuz") }

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

// DefaultImage is the image `make lab` builds and `popvmm lab` uses.
func DefaultImage() Image { return Image{filepath.Join(CacheDir(), "lab")} }

// key names this binary's idea of the image: its /init and module list.
func key() string {
	h := sha256.New()
	h.Write(initScript)
	fmt.Fprintf(h, "%s\n%s\n", KernelPackage, strings.Join(Modules, " "))
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
	// Written beside the image and renamed into place: a reader never sees
	// half an image, and a failed build leaves the old one.
	tmp := im.Dir + ".tmp"
	os.RemoveAll(tmp)
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return false, err
	}
	defer os.RemoveAll(tmp)
	for name, data := range map[string][]byte{"vmlinuz": kernel, "lab.cpio": cpio, "key": []byte(key() + "\n")} {
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
