package guest

import (
	"encoding/pem"
	"fmt"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/popvmm/popvmm/cluster"
)

// The kernels' own SSH key: with a window network, every kernel of a
// cluster can ssh to every other (mpirun launches its ranks so) with one
// key pair made for that, never the host's cluster key, and knows every
// kernel's host key beforehand. Its files in the overlay; /init copies
// them into /root/.ssh.
const (
	// PeerKeyName is the key pair's private half in RUNDIR/ssh.
	PeerKeyName = "kernels_ed25519"
	// PeerKeyPath is the private key in dropbear's format (dbclient's
	// ~/.ssh/id_dropbear), PeerKeyOpenSSHPath in OpenSSH's (a root
	// image's ssh, ~/.ssh/id_ed25519).
	PeerKeyPath        = "/etc/popvmm/kernel_key"
	PeerKeyOpenSSHPath = "/etc/popvmm/kernel_key.openssh"
	// PeerKnownHostsPath names every kernel's host key by its name and
	// addresses (~/.ssh/known_hosts).
	PeerKnownHostsPath = "/etc/popvmm/known_hosts"
)

// EnsurePeerKey returns cluster cl's kernels' key pair, kept in dir,
// making it when there is none yet.
func EnsurePeerKey(dir string, cl *cluster.Cluster) (*HostKey, error) {
	return ensureKey(filepath.Join(dir, PeerKeyName), peerKeyComment(cl), "kernels' key")
}

// AuthorizedLine is the key's authorized_keys line.
func (k *HostKey) AuthorizedLine(comment string) []byte {
	line := ssh.MarshalAuthorizedKey(k.PublicKey())
	return append(line[:len(line)-1], []byte(" "+comment+"\n")...)
}

// PeerKeyFiles are the overlay files that let a kernel of cl ssh to every
// other: the kernels' private key in both formats, and known_hosts naming
// each kernel's host key (hostKeys, by name) by its name, its window
// network address and its address on the cluster's bridge.
func PeerKeyFiles(cl *cluster.Cluster, key *HostKey, hostKeys map[string]*HostKey) ([]File, error) {
	block, err := ssh.MarshalPrivateKey(key.priv, peerKeyComment(cl))
	if err != nil {
		return nil, fmt.Errorf("kernels' key: %w", err)
	}
	var known []string
	for _, k := range cl.Kernels {
		hk := hostKeys[k.Name]
		if hk == nil {
			return nil, fmt.Errorf("no host key for kernel %s", k.Name)
		}
		// One line per name: dbclient takes a line's first field as one
		// host name, not OpenSSH's comma-separated list.
		names := []string{k.Name}
		if k.WinnetIP.IsValid() {
			names = append(names, k.WinnetIP.String())
		}
		if k.IP.IsValid() {
			names = append(names, k.IP.String())
		}
		for _, n := range names {
			known = append(known, knownhosts.Line([]string{n}, hk.PublicKey()))
		}
	}
	return []File{
		{Path: PeerKeyPath, Mode: 0o600, Data: key.Dropbear()},
		{Path: PeerKeyOpenSSHPath, Mode: 0o600, Data: pem.EncodeToMemory(block)},
		{Path: PeerKnownHostsPath, Mode: 0o644, Data: []byte(strings.Join(known, "\n") + "\n")},
	}, nil
}
