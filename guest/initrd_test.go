package guest_test

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/cluster"
	"github.com/popvmm/popvmm/guest"
	"github.com/popvmm/popvmm/internal/testkernel"
)

type roomyHost struct{}

func (roomyHost) OnlineCPUs() ([]int, error)           { return []int{0, 1}, nil }
func (roomyHost) MemAvailable() (uint64, error)        { return 8 << 30, nil }
func (roomyHost) OnlineNUMANodes() ([]int, error)      { return []int{0}, nil }
func (roomyHost) FreeHugePages(uint64) (uint64, error) { return 0, nil }

// checkedCluster checks a one-kernel cluster (testkernel.InitrdCluster)
// whose initrd is a sparse file of size bytes.
func checkedCluster(t *testing.T, dir string, size int64) (*cluster.Cluster, error) {
	t.Helper()
	f, err := cluster.Load(testkernel.InitrdCluster(t, dir, nil, size))
	if err != nil {
		t.Fatal(err)
	}
	return cluster.Check(f, roomyHost{})
}

// TestCheckInitramfs: validate sizes the initrd as the supervisor boots
// it, the image then 0-3 NUL bytes then the kernel's overlay
// (guest.Initramfs). It sized the image alone, so an image that only
// just fit passed validate and failed to load at `up`.
func TestCheckInitramfs(t *testing.T) {
	cl, err := checkedCluster(t, t.TempDir(), 4)
	if err != nil {
		t.Fatal(err)
	}
	k := cl.Kernels[0]
	room := testkernel.InitrdRoom(k)
	if room == 0 || room%4 != 0 {
		t.Fatalf("room for an initrd %d bytes, want some and a multiple of 4", room)
	}
	size, ok, err := guest.BootInitrdSize(cl, k)
	if err != nil || !ok {
		t.Fatalf("BootInitrdSize = %d, %v, %v", size, ok, err)
	}
	overlay := size - 4
	for _, tt := range []struct {
		image uint64
		fits  bool
	}{
		{room, false},               // fits alone: cluster.Check takes it
		{room - overlay, true},      // image and overlay fill the room exactly
		{room - overlay - 1, true},  // and one NUL byte of padding
		{room - overlay + 1, false}, // three bytes of padding take it past the room
		{room - overlay - 4, true},
	} {
		cl, err := checkedCluster(t, t.TempDir(), int64(tt.image))
		if err != nil {
			t.Fatalf("image of %d bytes (room %d): cluster.Check = %v, want it to take an image that fits alone", tt.image, room, err)
		}
		err = guest.CheckInitramfs(cl)
		switch fes := cluster.FieldErrors(err); {
		case tt.fits && err != nil:
			t.Errorf("image of %d bytes + %d-byte overlay in %d bytes of room: CheckInitramfs = %v, want nil", tt.image, overlay, room, err)
		case !tt.fits && (len(fes) != 1 || fes[0].Path != "kernel[0].initrd" || !strings.Contains(fes[0].Msg, "overlay")):
			t.Errorf("image of %d bytes + %d-byte overlay in %d bytes of room: CheckInitramfs = %v, want one error at kernel[0].initrd", tt.image, overlay, room, err)
		}
	}
}

// TestInitramfsSize: Initramfs is the image, 0-3 NUL bytes to a multiple
// of 4, then the overlay, and InitramfsSize is its length.
func TestInitramfsSize(t *testing.T) {
	for n := range 9 {
		image := []byte(strings.Repeat("i", n))
		got := guest.Initramfs(image, []byte("0707"))
		at := len(got) - 4
		if uint64(len(got)) != guest.InitramfsSize(uint64(n), 4) || at%4 != 0 || at-n > 3 || string(got[:n]) != string(image) ||
			strings.Trim(string(got[n:at]), "\x00") != "" || string(got[at:]) != "0707" {
			t.Errorf("Initramfs(%d bytes, 4 bytes) = %q, InitramfsSize %d", n, got, guest.InitramfsSize(uint64(n), 4))
		}
	}
}

// TestBootInitrdSizeMatchesKeys: the overlay validate sizes, with stand-in
// keys, is as long as the one built from the keys `up` makes, with and
// without a window network (which adds the kernels' key pair and
// known_hosts).
func TestBootInitrdSizeMatchesKeys(t *testing.T) {
	for _, winnet := range []bool{false, true} {
		cl, k := testCluster()
		cl.RunDir = t.TempDir()
		for i, o := range cl.Kernels {
			o.Index = i
		}
		if winnet {
			cl.Winnet = cluster.Winnet{Enabled: true, Size: 64 << 20, Subnet: netip.MustParsePrefix("10.200.0.0/24")}
			for _, o := range cl.Kernels {
				o.WinnetIP = cluster.WinnetAddr(cl.Winnet.Subnet, o.Index)
			}
		}
		k.InitrdPath = testkernel.Write(t, cl.RunDir, "initrd.img", []byte("07070"))
		sshDir := filepath.Join(cl.RunDir, "ssh")
		pub, err := guest.EnsureKey(sshDir, guest.ClusterKeyComment(cl))
		if err != nil {
			t.Fatal(err)
		}
		keys := guest.Keys{Authorized: pub, Host: map[string]*guest.HostKey{}}
		for _, o := range cl.Kernels {
			if keys.Host[o.Name], err = guest.EnsureHostKey(sshDir, o.Name); err != nil {
				t.Fatal(err)
			}
		}
		if winnet {
			if keys.Peer, err = guest.EnsurePeerKey(sshDir, cl); err != nil {
				t.Fatal(err)
			}
		}
		ov, err := guest.KernelOverlay(cl, k, keys)
		if err != nil {
			t.Fatal(err)
		}
		want := uint64(len(guest.Initramfs([]byte("07070"), ov)))
		if got, ok, err := guest.BootInitrdSize(cl, k); got != want || !ok || err != nil {
			t.Errorf("winnet %v: BootInitrdSize = %d, %v, %v; the initrd booted with up's keys is %d bytes", winnet, got, ok, err, want)
		}
	}
}
