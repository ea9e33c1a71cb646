package guest_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/popvmm/popvmm/guest"
)

func TestEnsureHostKey(t *testing.T) {
	dir := t.TempDir()
	k, err := guest.EnsureHostKey(dir, "primary")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(guest.HostKeyFile(dir, "primary"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("host key file: %v, mode %v; want 0600", err, st)
	}
	again, err := guest.EnsureHostKey(dir, "primary")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(k.PublicKey().Marshal(), again.PublicKey().Marshal()) {
		t.Errorf("EnsureHostKey made a new key for a kernel that had one")
	}
	other, err := guest.EnsureHostKey(dir, "secondary")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(k.PublicKey().Marshal(), other.PublicKey().Marshal()) {
		t.Errorf("two kernels got the same host key")
	}
	if err := os.WriteFile(guest.HostKeyFile(dir, "broken"), []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := guest.EnsureHostKey(dir, "broken"); err == nil {
		t.Errorf("EnsureHostKey over a garbage file = nil error")
	}
}

// TestHostKeyDropbear checks the key in dropbear's format (what `dropbear
// -r` reads: buf_get_ed25519_priv_key) against the public key ssh checks.
func TestHostKeyDropbear(t *testing.T) {
	k, err := guest.EnsureHostKey(t.TempDir(), "primary")
	if err != nil {
		t.Fatal(err)
	}
	b := k.Dropbear()
	get := func() []byte {
		if len(b) < 4 {
			t.Fatalf("dropbear key truncated")
		}
		n := binary.BigEndian.Uint32(b)
		s := b[4 : 4+n]
		b = b[4+n:]
		return s
	}
	if alg := string(get()); alg != "ssh-ed25519" {
		t.Fatalf("dropbear key type %q, want ssh-ed25519", alg)
	}
	kp := get()
	if len(kp) != 64 || len(b) != 0 {
		t.Fatalf("dropbear key: %d key bytes and %d left over, want 64 and 0", len(kp), len(b))
	}
	priv := ed25519.NewKeyFromSeed(kp[:32])
	if !bytes.Equal(priv.Public().(ed25519.PublicKey), kp[32:]) {
		t.Errorf("the public half does not belong to the seed")
	}
	pub, _ := ssh.NewPublicKey(priv.Public())
	if !bytes.Equal(pub.Marshal(), k.PublicKey().Marshal()) {
		t.Errorf("dropbear key and PublicKey differ")
	}
	line := k.KnownHostsLine(netip.MustParseAddr("10.199.0.2"))
	_, hosts, parsed, _, _, err := ssh.ParseKnownHosts([]byte(line))
	if err != nil || !bytes.Equal(parsed.Marshal(), pub.Marshal()) || len(hosts) != 1 || hosts[0] != "10.199.0.2" {
		t.Errorf("KnownHostsLine = %q: hosts %v, err %v", line, hosts, err)
	}
	path := t.TempDir() + "/known_hosts"
	os.WriteFile(path, []byte(line+"\n"), 0o600)
	cb, err := knownhosts.New(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := cb("10.199.0.2:22", &net.TCPAddr{IP: net.IPv4(10, 199, 0, 2), Port: 22}, pub); err != nil {
		t.Errorf("known_hosts refuses the kernel's key: %v", err)
	}
	other, _ := guest.EnsureHostKey(t.TempDir(), "x")
	if err := cb("10.199.0.2:22", &net.TCPAddr{IP: net.IPv4(10, 199, 0, 2), Port: 22}, other.PublicKey()); err == nil || !strings.Contains(err.Error(), "mismatch") {
		t.Errorf("known_hosts takes another key: %v", err)
	}
}
