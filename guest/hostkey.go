package guest

import (
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Where a kernel's SSH host key goes: popvmm makes each kernel's host key
// itself, so that `popvmm ssh` checks the key it talks to against one it
// knew before the kernel booted (no trust on first use, nothing read back
// from a console the guest writes).
const (
	// HostKeyPath is the key in the overlay, in dropbear's own format;
	// /init starts dropbear with it (-r) and with no other key.
	HostKeyPath = "/etc/popvmm/dropbear_ed25519_host_key"
	// KnownHostsName is the known_hosts file in the run directory.
	KnownHostsName = "known_hosts"
)

// HostKey is one kernel's SSH host key.
type HostKey struct {
	priv ed25519.PrivateKey
}

// HostKeyFile is the file kernel name's host key is kept in, in dir.
func HostKeyFile(dir, name string) string {
	return filepath.Join(dir, "host_"+name+"_ed25519")
}

// EnsureHostKey returns kernel name's host key, kept in dir (OpenSSH
// format, 0600), generating it when there is none yet: the kernel keeps its
// identity from one `up` to the next.
func EnsureHostKey(dir, name string) (*HostKey, error) {
	return ensureKey(HostKeyFile(dir, name), "popvmm host key of "+name, "host key")
}

// ensureKey reads the ed25519 key at p (OpenSSH format), or makes one
// there with comment; what names the key in errors.
func ensureKey(p, comment, what string) (*HostKey, error) {
	if b, err := os.ReadFile(p); err == nil {
		k, err := ssh.ParseRawPrivateKey(b)
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, p, err)
		}
		sk, ok := k.(*ed25519.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("%s %s: a %T, want an ed25519 key", what, p, k)
		}
		return &HostKey{priv: *sk}, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	sk, err := newKeyFile(p, comment)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &HostKey{priv: sk}, nil
}

// Dropbear is the key in dropbear's private key format (what dropbearkey
// writes and `dropbear -r` reads): string "ssh-ed25519", then a string of
// the 32-byte seed followed by the 32-byte public key.
func (k *HostKey) Dropbear() []byte {
	var b []byte
	putString := func(s []byte) {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	putString([]byte(ssh.KeyAlgoED25519))
	putString(append(k.priv.Seed(), k.priv.Public().(ed25519.PublicKey)...))
	return b
}

// PublicKey is the key's public half.
func (k *HostKey) PublicKey() ssh.PublicKey {
	pk, err := ssh.NewPublicKey(k.priv.Public())
	if err != nil {
		panic(err) // an ed25519 public key always converts
	}
	return pk
}

// KnownHostsLine is the known_hosts line for the key at addr (port 22).
func (k *HostKey) KnownHostsLine(addr netip.Addr) string {
	return knownhosts.Line([]string{addr.String()}, k.PublicKey())
}
