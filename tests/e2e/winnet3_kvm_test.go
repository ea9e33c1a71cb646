package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
)

// TestKVMWinnetThree is the window network with three kernels (each on a
// core of its own, which newKVMCluster requires: the KVM tier's lab has
// three besides its housekeeping CPU, LAB_CPUS): every kernel
// reaches both others directly over win0; the third, crashed on purpose,
// is seen down by both others while a ping from the first to the second,
// running across the crash, loses nothing; booted again, the third is
// reachable from both over win0 again.
func TestKVMWinnetThree(tt *testing.T) {
	testenv.RequireRoot(tt)
	c := newKVMCluster(tt, "e2ewin3",
		kvmKernel{"primary", "light", "0", "192M", "up"},
		kvmKernel{"secondary", "light", "1", "192M", "up"},
		kvmKernel{"tertiary", "light", "2", "192M", "up"})
	t := c.t
	enableWinnet(t, c, "")
	t.Log(c.must("up", "-d", c.config))
	st := c.status()
	t.Cleanup(func() { c.killAll(st) })
	names := []string{"primary", "secondary", "tertiary"}
	addr := map[string]string{"primary": "10.200.0.1", "secondary": "10.200.0.2", "tertiary": "10.200.0.3"}
	for _, k := range names {
		c.waitConsole(k, "popvmm-init: win0 "+addr[k]+"/24", bootDeadline)
	}
	for _, k := range names {
		c.waitSSHD(k)
	}

	// All pairs, each way, by name (/etc/hosts) over win0.
	for _, from := range names {
		for _, to := range names {
			if from == to {
				continue
			}
			out := c.mustSSH(from, "ping", "-c", "2", "-w", "60", to)
			if !strings.Contains(out, addr[to]) || !strings.Contains(out, " 0% packet loss") {
				t.Errorf("%s pinging %s over win0:\n%s", from, to, out)
			}
		}
	}
	if st := c.status(); st.Winnet == nil || len(st.Winnet.Kernels) != 3 {
		t.Fatalf("status has not three kernels on the window network: %+v", st.Winnet)
	} else {
		for _, k := range st.Winnet.Kernels {
			if !k.Up || len(k.Peers) != 2 {
				t.Errorf("status: %s on the window network: %+v, want up with two peers", k.Name, k)
			}
		}
	}

	// A ping from the primary to the secondary runs across the tertiary's
	// crash (20 s, a packet every half second) and loses nothing.
	c.mustSSH("primary", "(ping -c 40 -i 0.5 "+addr["secondary"]+" >/tmp/ping.out 2>&1; echo done >>/tmp/ping.out) </dev/null >/dev/null 2>&1 &")
	c.mustSSH("tertiary", "(sleep 2; "+crashCmd+") </dev/null >/dev/null 2>&1 &") // after the session ends
	c.waitState("tertiary", supervisor.StateCrashed, time.Minute)
	crashed := time.Now()
	for _, k := range []string{"primary", "secondary"} {
		c.waitConsole(k, "win0: peer 2 down", time.Minute)
	}
	t.Logf("both others saw the tertiary down %.1f s after popvmm did (lab time; the drivers' heartbeat)", time.Since(crashed).Seconds())
	out := c.mustSSH("primary", "timeout 120 sh -c 'until grep -q done /tmp/ping.out; do sleep 1; done'; cat /tmp/ping.out")
	if !strings.Contains(out, "40 packets transmitted, 40 packets received, 0% packet loss") {
		t.Errorf("the primary's ping of the secondary across the tertiary's crash:\n%s", out)
	} else {
		t.Logf("primary to secondary across the crash: %s", lastLines(out, 2))
	}
	if k := c.status().Winnet.Kernels[2]; k.Up {
		t.Errorf("status after the tertiary's crash: %+v, want it down", k)
	}

	// Booted again, the tertiary is reachable from both over win0.
	c.must("boot", "-c", c.config, "tertiary")
	c.waitConsoleCount("tertiary", "popvmm-init: win0 "+addr["tertiary"]+"/24", 2, bootDeadline)
	for _, from := range []string{"primary", "secondary"} {
		out := c.mustSSH(from, "ping", "-c", "2", "-w", "60", addr["tertiary"])
		if !strings.Contains(out, " 0% packet loss") {
			t.Errorf("%s pinging the rebooted tertiary over win0:\n%s", from, out)
		}
	}
	if k := c.status().Winnet.Kernels[2]; !k.Up || k.Generation != 2 {
		t.Errorf("status after the tertiary's reboot: %+v, want it up, its second incarnation", k)
	}
	c.must("down", "-c", c.config)
	checkGone(t, c, st)
}

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(l[max(0, len(l)-n):], "\n")
}
