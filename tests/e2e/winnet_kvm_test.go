package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
)

// TestKVMWinnet is the window network's tier-3 test (docs/winnet.md): two
// kernels with [cluster.winnet] each get win0 with their address (the
// driver loaded by the initramfs) and every kernel's name in /etc/hosts;
// the agents still take the messaging window (msg ping); they ping each
// other over win0 and move a TCP stream across it (busybox httpd and wget,
// the file's checksum compared on both sides); status shows both up with
// their per-peer counters.
func TestKVMWinnet(tt *testing.T) {
	testenv.RequireRoot(tt)
	c := newKVMCluster(tt, "e2ewin",
		kvmKernel{"primary", "light", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "up"})
	t := c.t
	f, err := os.OpenFile(c.config, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "[cluster.winnet]\nenabled = true\nsize = \"16M\"\n")
	f.Close()
	t.Log(c.must("up", "-d", c.config))
	st := c.status()
	t.Cleanup(func() { c.killAll(st) })
	addr := map[string]string{"primary": "10.200.0.1", "secondary": "10.200.0.2"}
	for name, a := range addr {
		c.waitConsole(name, "popvmm-init: win0 "+a+"/24", bootDeadline)
	}
	c.waitSSHD("primary")
	c.waitSSHD("secondary")
	if out := c.mustSSH("primary", "cat", "/etc/hosts"); !strings.Contains(out, "10.200.0.2\tsecondary") {
		t.Errorf("primary's /etc/hosts does not name the secondary on win0:\n%s", out)
	}
	// The agents took the messaging window's function, not this one.
	for _, k := range []string{"primary", "secondary"} {
		t.Logf("msg ping %s: %s", k, strings.TrimSpace(c.retry(agentDeadline, "msg", "ping", "-c", c.config, k)))
	}

	// Each pings the other over win0.
	out := c.mustSSH("primary", "ping", "-c", "3", "-w", "60", addr["secondary"])
	t.Logf("primary pings secondary over win0:\n%s", out)
	out = c.mustSSH("secondary", "ping", "-c", "3", "-w", "60", addr["primary"])
	t.Logf("secondary pings primary over win0:\n%s", out)

	// A TCP stream: 8 MiB from the secondary's httpd to the primary's wget.
	sum := c.mustSSH("secondary", "mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1M count=8 2>/dev/null && "+
		"httpd -p 8080 -h /tmp/www && md5sum /tmp/www/blob")
	start := time.Now()
	got := c.mustSSH("primary", "wget -q -O /tmp/blob http://"+addr["secondary"]+":8080/blob && md5sum /tmp/blob")
	if strings.Fields(sum)[0] != strings.Fields(got)[0] {
		t.Fatalf("the stream over win0 arrived as %q, sent %q", got, sum)
	}
	t.Logf("8 MiB over win0 in %v (lab: emulated), md5 %s", time.Since(start).Round(time.Millisecond), strings.Fields(got)[0])

	st = c.status()
	if st.Winnet == nil || len(st.Winnet.Kernels) != 2 {
		t.Fatalf("status has no window network: %+v", st.Winnet)
	}
	for _, k := range st.Winnet.Kernels {
		if !k.Up || k.Address != addr[k.Name] || len(k.Peers) != 1 || k.Peers[0].RxPackets == 0 || k.Peers[0].TxPackets == 0 {
			t.Errorf("status: %s on the window network: %+v", k.Name, k)
		}
	}
	p := st.Winnet.Kernels[0].Peers[0]
	if p.RxBytes < 8<<20 {
		t.Errorf("status: primary received %d bytes from the secondary over win0, want the 8 MiB stream", p.RxBytes)
	}
	t.Logf("status: primary from secondary: %+v", p)
	t.Log(c.must("status", "-c", c.config))
	c.must("down", "-c", c.config)
	checkGone(t, c, st)
}
