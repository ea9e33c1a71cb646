package guest

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/memmap"
)

// Keys are the SSH keys a cluster's overlays carry.
type Keys struct {
	// Authorized is the cluster's public key in authorized_keys form
	// (EnsureKey).
	Authorized []byte
	// Host is each kernel's host key, by kernel name (EnsureHostKey).
	Host map[string]*HostKey
	// Peer is the kernels' own key pair (EnsurePeerKey), with a window
	// network only; nil without one.
	Peer *HostKey
}

// ClusterKeyComment is the comment on cluster cl's SSH key (EnsureKey).
func ClusterKeyComment(cl *cluster.Cluster) string { return "popvmm-" + cl.Name }

// peerKeyComment is the comment on cluster cl's kernels' key pair.
func peerKeyComment(cl *cluster.Cluster) string { return "popvmm kernels of " + cl.Name }

// KernelOverlay builds kernel k's overlay from the cluster's keys: its host
// key, and with a window network the kernels' key pair (PeerKeyFiles) and
// its public half authorized beside the cluster's key. The supervisor
// writes it to RUNDIR/NAME.overlay.cpio; CheckInitramfs sizes it.
func KernelOverlay(cl *cluster.Cluster, k *cluster.Kernel, keys Keys) ([]byte, error) {
	hk := keys.Host[k.Name]
	if hk == nil {
		return nil, fmt.Errorf("overlay for %s: no host key", k.Name)
	}
	authorized, extra := keys.Authorized, []File{HostKeyOverlayFile(hk)}
	if cl.Winnet.Enabled {
		if keys.Peer == nil {
			return nil, fmt.Errorf("overlay for %s: a window network and no kernels' key", k.Name)
		}
		files, err := PeerKeyFiles(cl, keys.Peer, keys.Host)
		if err != nil {
			return nil, fmt.Errorf("overlay for %s: %w", k.Name, err)
		}
		extra = append(extra, files...)
		authorized = append(append([]byte{}, authorized...), keys.Peer.AuthorizedLine(peerKeyComment(cl))...)
	}
	ov, err := Overlay(cl, k, authorized, extra...)
	if err != nil {
		return nil, fmt.Errorf("overlay for %s: %w", k.Name, err)
	}
	return ov, nil
}

// standInKeys are keys of the size the supervisor's will have, for
// sizing overlays before `up` makes them: every key popvmm makes is
// ed25519 (ensureKey refuses others), and the cluster's public key is the
// one in RUNDIR/ssh when there is one (EnsureKey keeps it), else one
// written as EnsureKey writes it.
func standInKeys(cl *cluster.Cluster) Keys {
	sk := &HostKey{priv: ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))}
	keys := Keys{Authorized: sk.AuthorizedLine(ClusterKeyComment(cl)), Host: map[string]*HostKey{}}
	if pub, err := os.ReadFile(filepath.Join(cl.RunDir, "ssh", PublicKeyName)); err == nil {
		if _, _, _, _, err := ssh.ParseAuthorizedKey(pub); err == nil {
			keys.Authorized = pub
		}
	}
	for _, k := range cl.Kernels {
		keys.Host[k.Name] = sk
	}
	if cl.Winnet.Enabled {
		keys.Peer = sk
	}
	return keys
}

// Initramfs is what kernel boots as its initrd: the image, 0-3 NUL bytes,
// then the overlay. The kernel unpacks concatenated newc archives in
// order, so the overlay's files land over the image's; it takes an archive
// only at a multiple of 4 bytes and skips NUL bytes between archives
// (init/initramfs.c), and a compressed image ends anywhere: an overlay
// right after it would be dropped ("invalid magic at start of compressed
// archive"). Its length is InitramfsSize.
func Initramfs(image, overlay []byte) []byte {
	out := make([]byte, 0, InitramfsSize(uint64(len(image)), uint64(len(overlay))))
	out = append(out, image...)
	out = append(out, make([]byte, initramfsPad(uint64(len(image))))...)
	return append(out, overlay...)
}

// InitramfsSize is the length in bytes of Initramfs for an image and an
// overlay of these lengths.
func InitramfsSize(image, overlay uint64) uint64 {
	return image + initramfsPad(image) + overlay
}

// initramfsPad is how many NUL bytes put the overlay on a 4-byte boundary
// after an image of n bytes.
func initramfsPad(n uint64) uint64 { return -n & 3 }

// BootInitrdSize is the length in bytes of the initrd kernel k boots
// (Initramfs: its image, the padding and its overlay as KernelOverlay
// builds it), with keys of the sizes `up` makes; ok is false when k's
// image cannot be read (cluster.Check reports that).
func BootInitrdSize(cl *cluster.Cluster, k *cluster.Kernel) (size uint64, ok bool, err error) {
	return bootInitrdSize(cl, k, standInKeys(cl))
}

func bootInitrdSize(cl *cluster.Cluster, k *cluster.Kernel, keys Keys) (uint64, bool, error) {
	st, err := os.Stat(k.InitrdPath)
	if err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
		return 0, false, nil
	}
	ov, err := KernelOverlay(cl, k, keys)
	if err != nil {
		return 0, false, err
	}
	return InitramfsSize(uint64(st.Size()), uint64(len(ov))), true, nil
}

// CheckInitramfs checks that each kernel's initrd fits in its memory as
// the supervisor boots it (BootInitrdSize: with its padding and overlay),
// where cluster.Check sized the image alone. Problems are
// cluster.FieldErrors at kernel[N].initrd; a kernel whose initrd cannot
// be read was reported by cluster.Check and is skipped.
func CheckInitramfs(cl *cluster.Cluster) error {
	keys := standInKeys(cl)
	var errs []error
	for _, k := range cl.Kernels {
		size, ok, err := bootInitrdSize(cl, k, keys)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue
		}
		if err := k.InitrdFits(size); err != nil {
			errs = append(errs, &cluster.FieldError{Path: fmt.Sprintf("kernel[%d].initrd", k.Index),
				Msg: fmt.Sprintf("%s with the kernel's initramfs overlay and padding appended (%s in all): %v with this kernel in %s of memory",
					k.InitrdPath, memmap.FormatSize(size), err, memmap.FormatSize(k.Memory))})
		}
	}
	return errors.Join(errs...)
}
