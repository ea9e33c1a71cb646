// Command mkinitramfs builds a popvmm flavour's initramfs from unpacked
// Debian packages (see images/fetch.sh): busybox from busybox-static for
// both flavours, and for both flavours dropbear from dropbear-bin with
// the shared libraries it needs, taken from the pinned library packages (not
// from the host). The output is reproducible: the same inputs give the same
// bytes.
//
//	mkinitramfs -flavour full -debs images/build/debs -src images/initramfs -o out.cpio
//	mkinitramfs -list out.cpio
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/cavaliergopher/cpio"

	"github.com/popvmm/popvmm/initramfs"
)

func main() {
	flavour := flag.String("flavour", "full", "full or light")
	debs := flag.String("debs", "images/build/debs", "directory of unpacked packages, one subdirectory each")
	src := flag.String("src", "images/initramfs", "directory with init, passwd, group, 50-popagent")
	agent := flag.String("agent", "", "popagent binary to include, started from /etc/popvmm/init.d")
	module := flag.String("module", "", "kernel module to include as /lib/modules/NAME (the window network's winnet.ko), loaded by /init")
	out := flag.String("o", "", "output file")
	list := flag.String("list", "", "print the contents of this archive and exit")
	flag.Parse()
	var err error
	if *list != "" {
		err = listArchive(os.Stdout, *list)
	} else if *out == "" {
		err = errors.New("-o is required")
	} else {
		err = build(*flavour, *debs, *src, *agent, *module, *out)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "mkinitramfs: %v\n", err)
		os.Exit(1)
	}
}

// libDirs are where Debian's bookworm packages keep x86-64 libraries.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64"}

// libPackages hold the libraries dropbear links against.
var libPackages = []string{"libc6", "libcrypt1", "zlib1g", "libtomcrypt1", "libtommath1", "libgmp10"}

func build(flavour, debs, src, agent, module, out string) error {
	if flavour != "full" && flavour != "light" {
		return fmt.Errorf("flavour %q: want full or light", flavour)
	}
	a := initramfs.New()
	for _, d := range []string{"/dev", "/proc", "/sys", "/tmp", "/run", "/root", "/etc/popvmm/init.d"} {
		if err := a.Dir(d, 0o755); err != nil {
			return err
		}
	}
	initScript, err := os.ReadFile(filepath.Join(src, "init"))
	if err != nil {
		return err
	}
	if err := a.File("/init", 0o755, initScript); err != nil { // the kernel runs it
		return err
	}
	for _, f := range []string{"passwd", "group"} {
		if err := a.HostFile("/etc/"+f, filepath.Join(src, f)); err != nil {
			return err
		}
	}
	if err := addBusybox(a, filepath.Join(debs, "busybox-static", "bin", "busybox")); err != nil {
		return err
	}
	{ // dropbear in every flavour: Popcorn's secondaries are reached by ssh
		var roots []string
		for _, p := range append([]string{"dropbear-bin"}, libPackages...) {
			roots = append(roots, filepath.Join(debs, p))
		}
		dropbear := filepath.Join(debs, "dropbear-bin", "usr", "sbin", "dropbear")
		if err := a.ELF("/usr/sbin/dropbear", dropbear, roots, libDirs); err != nil {
			return fmt.Errorf("dropbear: %w", err)
		}
		// Its client, for ssh from kernel to kernel (the window network's
		// key, guest.PeerKeyFiles).
		dbclient := filepath.Join(debs, "dropbear-bin", "usr", "bin", "dbclient")
		if err := a.ELF("/usr/bin/dbclient", dbclient, roots, libDirs); err != nil {
			return fmt.Errorf("dbclient: %w", err)
		}
	}
	if agent != "" {
		for dst, from := range map[string]string{"/usr/bin/popagent": agent, "/etc/popvmm/init.d/50-popagent": filepath.Join(src, "50-popagent")} {
			data, err := os.ReadFile(from)
			if err != nil {
				return err
			}
			if err := a.File(dst, 0o755, data); err != nil {
				return err
			}
		}
	}
	if module != "" {
		ko, err := os.ReadFile(module)
		if err != nil {
			return fmt.Errorf("module: %w", err)
		}
		if err := a.File("/lib/modules/"+filepath.Base(module), 0o644, ko); err != nil {
			return err
		}
	}
	data, err := a.Bytes()
	if err != nil {
		return err
	}
	tmp := out + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, out)
}

// addBusybox adds the static busybox and a symlink for each of its applets,
// as `busybox --list-full` names them.
func addBusybox(a *initramfs.Archive, bin string) error {
	if err := a.HostFile("/bin/busybox", bin); err != nil {
		return fmt.Errorf("busybox: %w", err)
	}
	var stdout bytes.Buffer
	cmd := exec.Command(bin, "--list-full")
	cmd.Stdout = &stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		applet := strings.TrimSpace(sc.Text())
		if applet == "" || applet == "bin/busybox" {
			continue
		}
		if err := a.Symlink("/"+applet, "/bin/busybox"); err != nil {
			return err
		}
	}
	return sc.Err()
}

// listArchive prints mode, size and path of every entry, like `cpio -tv`.
func listArchive(w io.Writer, file string) error {
	f, err := os.Open(file)
	if err != nil {
		return err
	}
	defer f.Close()
	r := cpio.NewReader(f)
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		line := fmt.Sprintf("%v %9d /%s", h.Mode, h.Size, h.Name)
		if h.Linkname != "" {
			line += " -> " + h.Linkname
		}
		fmt.Fprintln(w, line)
	}
}
