// Package guest composes what popvmm hands a guest kernel at boot besides
// its image: the kernel command line (in one place: console, network,
// identity, host workarounds, the user's extra parameters) and the small
// per-cluster initramfs overlay carrying the cluster's SSH public key and
// facts, appended to the flavour's ramdisk (Linux unpacks concatenated
// archives in order, so the overlay's files win).
package guest

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/initramfs"
	"github.com/popvmm/popvmm/internal/kvmhost"
)

// NestedFlags are the guest kernel parameters the nested software KVM
// backend needs: it cannot emulate xrstor, clac/stac, cmpxchg16b or popcnt
// (docs/kvm-backends.md, docs/kernel-images.md).
const NestedFlags = "noxsave nosmap clearcpuid=cx16,smap,umip,popcnt"

// NestedBackend reports whether the KVM serving this host's /dev/kvm is the
// nested software backend (kvm_pvm) that needs NestedFlags; a kvm_pvm
// module that serves nothing does not count.
func NestedBackend() bool {
	s := kvmhost.Probe(kvmhost.SysHost{})
	return s.Usable && s.Backend == kvmhost.PVM
}

var warnOnce sync.Once

// Cmdline composes kernel k's command line: the serial console, the static
// IP configuration from cluster.toml (ip=), its name (popvmm.name=), its
// window network address (popvmm.winnet=), the
// nested-backend workarounds when nested is true (logged once as a
// warning), and last the user's extra parameters so they can override.
func Cmdline(cl *cluster.Cluster, k *cluster.Kernel, nested bool, log *slog.Logger) string {
	mask := net.IP(net.CIDRMask(cl.Network.Subnet.Bits(), 32)).String()
	parts := []string{
		"console=ttyS0",
		fmt.Sprintf("ip=%s::%s:%s:%s:eth0:off", k.IP, cl.Network.Host, mask, k.Name),
		"popvmm.name=" + k.Name,
	}
	// The initramfs gives the window network's interface (win0) its
	// address and names every kernel's in /etc/hosts (docs/winnet.md).
	if k.WinnetIP.IsValid() {
		parts = append(parts, fmt.Sprintf("popvmm.winnet=%s/%d", k.WinnetIP, cl.Winnet.Subnet.Bits()))
	}
	// The initramfs switches root into an overlay of the root image
	// (images/initramfs/init), its upper layer on the upper disk or in RAM.
	if root, upper := k.RootDisk(); root != "" {
		parts = append(parts, "popvmm.root="+root)
		if upper != "" {
			parts = append(parts, "popvmm.upper="+upper)
		}
	}
	if nested {
		warnOnce.Do(func() {
			if log != nil {
				log.Warn("host KVM is the nested software backend; guest kernels get workaround flags", "flags", NestedFlags)
			}
		})
		parts = append(parts, NestedFlags)
	}
	if k.Cmdline != "" {
		parts = append(parts, k.Cmdline)
	}
	return strings.Join(parts, " ")
}

// Key file names in a cluster's key directory.
const (
	PrivateKeyName = "id_ed25519"
	PublicKeyName  = "id_ed25519.pub"
)

// EnsureKey returns the cluster's SSH public key in authorized_keys form,
// generating an ed25519 key pair in dir (0700; private key 0600) when there
// is none yet.
func EnsureKey(dir, comment string) ([]byte, error) {
	pubPath := filepath.Join(dir, PublicKeyName)
	if pub, err := os.ReadFile(pubPath); err == nil {
		if _, _, _, _, err := ssh.ParseAuthorizedKey(pub); err != nil {
			return nil, fmt.Errorf("cluster key %s: %w", pubPath, err)
		}
		return pub, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	sk, err := newKeyFile(filepath.Join(dir, PrivateKeyName), comment)
	if err != nil {
		return nil, fmt.Errorf("cluster key: %w", err)
	}
	sshPub, err := ssh.NewPublicKey(sk.Public())
	if err != nil {
		return nil, fmt.Errorf("encode cluster public key: %w", err)
	}
	pub := ssh.MarshalAuthorizedKey(sshPub)
	pub = append(pub[:len(pub)-1], []byte(" "+comment+"\n")...)
	// Last: the public key's presence says the pair is whole.
	if err := writeFileAtomic(pubPath, pub, 0o644); err != nil {
		return nil, fmt.Errorf("cluster public key: %w", err)
	}
	return pub, nil
}

// File is one more file for an overlay.
type File struct {
	Path string
	Mode os.FileMode
	Data []byte
}

// HostKeyOverlayFile is the overlay file carrying a kernel's SSH host key.
func HostKeyOverlayFile(k *HostKey) File {
	return File{Path: HostKeyPath, Mode: 0o600, Data: k.Dropbear()}
}

// Overlay builds kernel k's initramfs overlay: /etc/popvmm/authorized_keys
// (the cluster's public key), /etc/popvmm/cluster.env (shell variables
// the guest's /init and agent read), with a window network
// /etc/popvmm/winnet.hosts (every kernel's win0 address and name, which
// /init adds to /etc/hosts), and the extra files (the kernel's host key:
// HostKeyOverlayFile).
func Overlay(cl *cluster.Cluster, k *cluster.Kernel, authorizedKeys []byte, extra ...File) ([]byte, error) {
	var peers []string
	for _, o := range cl.Kernels {
		peers = append(peers, o.Name)
	}
	env := []struct{ k, v string }{
		{"POPVMM_CLUSTER", cl.Name},
		{"POPVMM_KERNEL", k.Name},
		{"POPVMM_PEER_ID", fmt.Sprint(k.Index)},
		{"POPVMM_FLAVOUR", string(k.Flavour)},
		{"POPVMM_IP", k.IP.String()},
		{"POPVMM_HOST_IP", cl.Network.Host.String()},
		{"POPVMM_SUBNET", cl.Network.Subnet.String()},
		{"POPVMM_PEERS", strings.Join(peers, " ")},
	}
	if k.WinnetIP.IsValid() {
		env = append(env, struct{ k, v string }{"POPVMM_WINNET", fmt.Sprintf("%s/%d", k.WinnetIP, cl.Winnet.Subnet.Bits())})
	}
	var b strings.Builder
	b.WriteString("# popvmm cluster facts for this kernel (sourced by /init)\n")
	for _, e := range env {
		fmt.Fprintf(&b, "%s=%s\n", e.k, shellQuote(e.v))
	}
	a := initramfs.New()
	if err := a.File("/etc/popvmm/authorized_keys", 0o600, authorizedKeys); err != nil {
		return nil, err
	}
	if err := a.File("/etc/popvmm/cluster.env", 0o644, []byte(b.String())); err != nil {
		return nil, err
	}
	if cl.Winnet.Enabled {
		if err := a.File(WinnetHostsPath, 0o644, WinnetHosts(cl)); err != nil {
			return nil, err
		}
	}
	for _, f := range extra {
		if err := a.File(f.Path, f.Mode, f.Data); err != nil {
			return nil, err
		}
	}
	return a.Bytes()
}

// WinnetHostsPath is the overlay file naming every kernel on the window
// network, in /etc/hosts format.
const WinnetHostsPath = "/etc/popvmm/winnet.hosts"

// WinnetHosts is that file's content: one line per kernel, its win0
// address and its name.
func WinnetHosts(cl *cluster.Cluster) []byte {
	var b strings.Builder
	b.WriteString("# the window network (win0), from popvmm\n")
	for _, k := range cl.Kernels {
		if k.WinnetIP.IsValid() {
			fmt.Fprintf(&b, "%s\t%s\n", k.WinnetIP, k.Name)
		}
	}
	return []byte(b.String())
}

func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
