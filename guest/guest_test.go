package guest_test

import (
	"bytes"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"golang.org/x/crypto/ssh"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
)

func testCluster() (*cluster.Cluster, *cluster.Kernel) {
	k := &cluster.Kernel{Index: 1, Name: "secondary", Flavour: cluster.FlavourLight, IP: netip.MustParseAddr("10.199.0.3"), Cmdline: "loglevel=7 quiet"}
	cl := &cluster.Cluster{
		Name:    "demo",
		Network: cluster.Network{Subnet: netip.MustParsePrefix("10.199.0.0/24"), Host: netip.MustParseAddr("10.199.0.1")},
		Kernels: []*cluster.Kernel{{Name: "primary"}, k},
	}
	return cl, k
}

func TestCmdline(t *testing.T) {
	cl, k := testCluster()
	got := guest.Cmdline(cl, k, false, nil)
	want := "console=ttyS0 ip=10.199.0.3::10.199.0.1:255.255.255.0:secondary:eth0:off popvmm.name=secondary loglevel=7 quiet"
	if got != want {
		t.Errorf("Cmdline = %q\nwant      %q", got, want)
	}
	nested := guest.Cmdline(cl, k, true, nil)
	if !strings.Contains(nested, " "+guest.NestedFlags+" ") || !strings.HasSuffix(nested, "loglevel=7 quiet") {
		t.Errorf("nested Cmdline = %q, want the workaround flags before the user's", nested)
	}
	k.Cmdline = ""
	if got := guest.Cmdline(cl, k, false, nil); strings.HasSuffix(got, " ") {
		t.Errorf("Cmdline without extras ends in a space: %q", got)
	}
	// A root image (and its upper disk) are named for the initramfs by
	// the guest's device names, in the order the disks are attached.
	k.Disks = []cluster.Disk{{Role: cluster.RoleRoot}, {Role: cluster.RoleRootUpper}, {Role: cluster.RoleData}}
	if got := guest.Cmdline(cl, k, false, nil); !strings.HasSuffix(got, " popvmm.name=secondary popvmm.root=/dev/vda popvmm.upper=/dev/vdb") {
		t.Errorf("Cmdline with a root image = %q", got)
	}
	k.Disks = []cluster.Disk{{Role: cluster.RoleData}, {Role: cluster.RoleData}}
	if got := guest.Cmdline(cl, k, false, nil); strings.Contains(got, "popvmm.root") {
		t.Errorf("Cmdline with data disks only = %q", got)
	}
}

func TestEnsureKey(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ssh")
	pub, err := guest.EnsureKey(dir, "popvmm-demo")
	if err != nil {
		t.Fatal(err)
	}
	pk, comment, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil || pk.Type() != ssh.KeyAlgoED25519 || comment != "popvmm-demo" {
		t.Fatalf("public key %q: %v %v %q", pub, err, pk, comment)
	}
	priv, err := os.ReadFile(filepath.Join(dir, guest.PrivateKeyName))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil || !bytes.Equal(signer.PublicKey().Marshal(), pk.Marshal()) {
		t.Fatalf("private key does not match the public key: %v", err)
	}
	for name, want := range map[string]os.FileMode{guest.PrivateKeyName: 0o600, ".": 0o700} {
		st, _ := os.Stat(filepath.Join(dir, name))
		if st.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", name, st.Mode().Perm(), want)
		}
	}
	again, err := guest.EnsureKey(dir, "popvmm-demo")
	if err != nil || !bytes.Equal(again, pub) {
		t.Errorf("second EnsureKey = %q, %v; want the same key", again, err)
	}
	os.WriteFile(filepath.Join(dir, guest.PublicKeyName), []byte("garbage\n"), 0o644)
	if _, err := guest.EnsureKey(dir, "x"); err == nil {
		t.Error("EnsureKey accepted a garbage public key file")
	}
}

func TestOverlay(t *testing.T) {
	cl, k := testCluster()
	k.Name = "it's"
	b, err := guest.Overlay(cl, k, []byte("ssh-ed25519 AAAA popvmm-demo\n"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	r := cpio.NewReader(bytes.NewReader(b))
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(r)
		files[h.Name] = string(data)
	}
	if files["etc/popvmm/authorized_keys"] != "ssh-ed25519 AAAA popvmm-demo\n" {
		t.Errorf("authorized_keys = %q", files["etc/popvmm/authorized_keys"])
	}
	env := files["etc/popvmm/cluster.env"]
	for _, w := range []string{"POPVMM_CLUSTER='demo'\n", `POPVMM_KERNEL='it'\''s'` + "\n", "POPVMM_PEER_ID='1'\n",
		"POPVMM_IP='10.199.0.3'\n", "POPVMM_PEERS='primary it'\\''s'\n"} {
		if !strings.Contains(env, w) {
			t.Errorf("cluster.env lacks %q:\n%s", w, env)
		}
	}
	if len(b)%4 != 0 {
		t.Errorf("overlay is %d bytes; concatenated archives must stay 4-byte aligned", len(b))
	}
}

// TestWinnetCmdlineAndOverlay: with a window network the command line
// gives the kernel its win0 address and the overlay names every kernel's;
// without one, neither.
func TestWinnetCmdlineAndOverlay(t *testing.T) {
	cl, k := testCluster()
	if got := guest.Cmdline(cl, k, false, nil); strings.Contains(got, "popvmm.winnet") {
		t.Errorf("Cmdline without a window network = %q", got)
	}
	cl.Winnet = cluster.Winnet{Enabled: true, Size: 64 << 20, Subnet: netip.MustParsePrefix("10.200.0.0/24")}
	for _, o := range cl.Kernels {
		o.WinnetIP = cluster.WinnetAddr(cl.Winnet.Subnet, o.Index)
	}
	if got := guest.Cmdline(cl, k, false, nil); !strings.Contains(got, " popvmm.winnet=10.200.0.2/24 ") {
		t.Errorf("Cmdline = %q, want popvmm.winnet=10.200.0.2/24 before the user's parameters", got)
	}
	if got := string(guest.WinnetHosts(cl)); !strings.Contains(got, "10.200.0.1\tprimary\n") || !strings.Contains(got, "10.200.0.2\tsecondary\n") {
		t.Errorf("WinnetHosts = %q", got)
	}
	ov, err := guest.Overlay(cl, k, []byte("ssh-ed25519 AAAA popvmm-demo\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(ov, []byte("POPVMM_WINNET='10.200.0.2/24'")) || !bytes.Contains(ov, []byte("etc/popvmm/winnet.hosts")) {
		t.Error("overlay lacks POPVMM_WINNET or winnet.hosts")
	}
}
