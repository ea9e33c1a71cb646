package guest_test

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
)

// TestPeerKeyFiles: the kernels' key is kept from one call to the next,
// its files carry it in dropbear's and OpenSSH's formats, and known_hosts
// names every kernel's host key by name and by each address, one name a
// line (as dbclient reads it).
func TestPeerKeyFiles(t *testing.T) {
	dir := t.TempDir()
	cl := &cluster.Cluster{Name: "demo", Kernels: []*cluster.Kernel{
		{Index: 0, Name: "primary", IP: netip.MustParseAddr("10.199.0.2"), WinnetIP: netip.MustParseAddr("10.200.0.1")},
		{Index: 1, Name: "secondary", IP: netip.MustParseAddr("10.199.0.3"), WinnetIP: netip.MustParseAddr("10.200.0.2")},
	}}
	key, err := guest.EnsurePeerKey(dir, cl)
	if err != nil {
		t.Fatal(err)
	}
	again, err := guest.EnsurePeerKey(dir, cl)
	if err != nil || !bytes.Equal(again.Dropbear(), key.Dropbear()) {
		t.Fatalf("EnsurePeerKey again = a different key, %v", err)
	}
	line := key.AuthorizedLine("popvmm kernels of demo")
	if pk, comment, _, _, err := ssh.ParseAuthorizedKey(line); err != nil || comment != "popvmm kernels of demo" ||
		!bytes.Equal(pk.Marshal(), key.PublicKey().Marshal()) {
		t.Errorf("AuthorizedLine = %q: %v", line, err)
	}
	hostKeys := map[string]*guest.HostKey{}
	for _, k := range cl.Kernels {
		if hostKeys[k.Name], err = guest.EnsureHostKey(dir, k.Name); err != nil {
			t.Fatal(err)
		}
	}
	files, err := guest.PeerKeyFiles(cl, key, hostKeys)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]guest.File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	if f := byPath[guest.PeerKeyPath]; !bytes.Equal(f.Data, key.Dropbear()) || f.Mode != 0o600 {
		t.Errorf("%s: mode %v, not the key in dropbear's format", f.Path, f.Mode)
	}
	if raw, err := ssh.ParseRawPrivateKey(byPath[guest.PeerKeyOpenSSHPath].Data); err != nil || raw == nil {
		t.Errorf("%s does not parse as an OpenSSH key: %v", guest.PeerKeyOpenSSHPath, err)
	}
	known := string(byPath[guest.PeerKnownHostsPath].Data)
	for _, k := range cl.Kernels {
		pub := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKeys[k.Name].PublicKey())))
		for _, n := range []string{k.Name, k.WinnetIP.String(), k.IP.String()} {
			if !strings.Contains(known, n+" "+pub+"\n") {
				t.Errorf("known_hosts lacks %s's key for %s:\n%s", k.Name, n, known)
			}
		}
	}
	delete(hostKeys, "secondary")
	if _, err := guest.PeerKeyFiles(cl, key, hostKeys); err == nil {
		t.Error("PeerKeyFiles without the secondary's host key succeeded")
	}
}
