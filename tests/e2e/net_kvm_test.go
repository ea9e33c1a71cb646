package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/popvmm/popvmm/internal/linkname"
	"github.com/popvmm/popvmm/internal/testenv"
	"github.com/popvmm/popvmm/supervisor"
	"github.com/popvmm/popvmm/vnet"
)

// The network of a cluster brought up by bin/popvmm (kvmCluster,
// cluster_kvm_test.go): the host reaches every kernel, kernels reach each
// other, and nothing of the network outlives the cluster, even a killed
// supervisor's.

// sshTimeout bounds one `popvmm ssh`: dropbear in a guest under the lab's
// emulated KVM takes many seconds for a login.
const sshTimeout = 5 * time.Minute

// ssh runs `popvmm ssh NAME CMD...` and returns its combined output.
func (c *kvmCluster) ssh(name string, cmd ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), sshTimeout)
	defer cancel()
	args := append([]string{"ssh", "-c", c.config, name}, cmd...)
	out, err := exec.CommandContext(ctx, c.bin, args...).CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (after %v)", ctx.Err(), sshTimeout)
	}
	return string(out), err
}

func (c *kvmCluster) mustSSH(name string, cmd ...string) string {
	c.t.Helper()
	out, err := c.ssh(name, cmd...)
	if err != nil {
		c.t.Fatalf("popvmm ssh %s %s: %v\n%s", name, strings.Join(cmd, " "), err, out)
	}
	return out
}

// waitSSHD waits for kernel name's /init to start dropbear, failing as
// soon as the kernel is seen crashed (watchConsole asks the supervisor
// once the console falls silent).
func (c *kvmCluster) waitSSHD(name string) {
	c.t.Helper()
	start := time.Now()
	c.waitConsole(name, "dropbear listening", bootDeadline)
	c.t.Logf("%s: ssh server up %v after boot", name, time.Since(start).Round(time.Second))
}

func (c *kvmCluster) kernel(name string) *supervisor.KernelStatus {
	c.t.Helper()
	k := c.status().Kernel(name)
	if k == nil {
		c.t.Fatalf("status has no kernel %q", name)
	}
	return k
}

// killAll is a cleanup for the tests that kill the supervisor: a
// supervisor still there gets SIGKILL, and the bridge it leaves is removed.
func (c *kvmCluster) killAll(st *supervisor.Status) {
	if st.PID > 0 && syscall.Kill(st.PID, 0) == nil {
		syscall.Kill(st.PID, syscall.SIGKILL)
		waitGone(st.PID, 30*time.Second)
	}
	vnet.RemoveStaleBridge(st.Bridge, vnet.OwnedBy(supervisor.BridgeOwner(st.Cluster, st.RunDir)))
}

// waitUntil polls cond every 250 ms until it holds or timeout passes.
func waitUntil(timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		<-tick.C
	}
	return nil
}

// waitGone waits for process pid (not a child of ours) to exit.
func waitGone(pid int, timeout time.Duration) error {
	return waitUntil(timeout, func() bool { return syscall.Kill(pid, 0) == syscall.ESRCH })
}

// linksOf lists the host's links that belong to a cluster: its bridge and
// the taps linkname.Tap gives its kernels.
func linksOf(t testing.TB, bridge, cluster string) []string {
	t.Helper()
	ls, err := netlink.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		n := l.Attrs().Name
		if n == bridge || strings.HasPrefix(n, strings.TrimSuffix(linkname.Tap(cluster, 0), "0")) {
			names = append(names, n)
		}
	}
	return names
}

// kvmAndTapHolders lists the processes started for config (its path on
// their command line: the supervisor, anything it left running) that hold
// /dev/kvm, a KVM VM or a tap (/dev/net/tun) open. A tap's link goes only
// with its last fd, so linksOf covers taps held by any process.
func kvmAndTapHolders(config string) []string {
	var found []string
	fds, _ := filepath.Glob("/proc/[0-9]*/fd/*")
	for _, fd := range fds {
		target, err := os.Readlink(fd)
		if err != nil {
			continue
		}
		if target != "/dev/kvm" && target != "/dev/net/tun" && !strings.HasPrefix(target, "anon_inode:kvm-vm") {
			continue
		}
		pid := strings.Split(fd, "/")[2]
		cmdline, _ := os.ReadFile("/proc/" + pid + "/cmdline")
		if bytes.Contains(cmdline, []byte(config)) {
			found = append(found, fmt.Sprintf("pid %s (%s): %s", pid, strings.ReplaceAll(string(cmdline), "\x00", " "), target))
		}
	}
	return found
}

// ping sends ICMP echo requests to addr until one is answered or timeout
// passes, and returns the round-trip time of the answered one.
func ping(addr netip.Addr, timeout time.Duration) (time.Duration, error) {
	c, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
	if err != nil {
		return 0, err
	}
	defer c.Close()
	id := uint16(os.Getpid())
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 1500)
	for seq := uint16(1); time.Now().Before(deadline); seq++ {
		sent := time.Now()
		if _, err := c.WriteTo(echoRequest(id, seq), &net.IPAddr{IP: addr.AsSlice()}); err != nil {
			return 0, err
		}
		rd := sent.Add(time.Second)
		if rd.After(deadline) {
			rd = deadline
		}
		c.SetReadDeadline(rd)
		for {
			n, from, err := c.ReadFrom(buf)
			if err != nil {
				break // next request
			}
			ip, _ := from.(*net.IPAddr)
			if ip == nil || !ip.IP.Equal(addr.AsSlice()) || n < 8 || buf[0] != 0 {
				continue
			}
			if binary.BigEndian.Uint16(buf[4:]) == id && binary.BigEndian.Uint16(buf[6:]) == seq {
				return time.Since(sent), nil
			}
		}
	}
	return 0, fmt.Errorf("no echo reply from %s within %v", addr, timeout)
}

// echoRequest is an ICMP echo request (type 8) with a 56-byte payload.
func echoRequest(id, seq uint16) []byte {
	b := make([]byte, 8+56)
	b[0] = 8
	binary.BigEndian.PutUint16(b[4:], id)
	binary.BigEndian.PutUint16(b[6:], seq)
	copy(b[8:], "popvmm e2e ping")
	binary.BigEndian.PutUint16(b[2:], icmpChecksum(b))
	return b
}

func icmpChecksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// TestKVMClusterNetwork brings the example cluster's shape up with popvmm (a
// full primary booted with the cluster, a light secondary booted later with
// `popvmm boot`), reaches each kernel from the host (ICMP echo, `popvmm ssh
// NAME uname -a` with the host key checked), has the primary reach the
// secondary (ping, an HTTP fetch over TCP), takes the cluster down and
// checks that no link, process or open KVM or tap file is left.
func TestKVMClusterNetwork(tt *testing.T) {
	testenv.RequireRoot(tt)
	// The example's primary is full; POPVMM_E2E_PRIMARY=full makes it so
	// here (light by default: the light image boots fastest in the lab).
	primary := "light"
	if f := os.Getenv("POPVMM_E2E_PRIMARY"); f != "" {
		primary = f
	}
	c := newKVMCluster(tt, "e2enet",
		kvmKernel{"primary", primary, "0", "384M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "manual"})
	t := c.t
	t.Log(c.must("up", "-d", c.config))
	st := c.status()
	t.Cleanup(func() { c.killAll(st) })
	for _, k := range st.Kernels {
		if want := linkname.Tap(st.Cluster, k.PeerID); k.Tap != want {
			t.Errorf("status: kernel %s has tap %q, want %q", k.Name, k.Tap, want)
		}
	}

	// The primary, booted with the cluster.
	c.waitSSHD("primary")
	reach(t, c, "primary")

	// The secondary, booted later.
	t.Log(c.must("boot", "-c", c.config, "secondary"))
	c.waitSSHD("secondary")
	reach(t, c, "secondary")

	// Guest to guest: ICMP, then TCP (busybox httpd on the secondary,
	// wget on the primary).
	sec := c.kernel("secondary").IP
	out := c.mustSSH("primary", "ping", "-c", "3", "-w", "60", sec)
	t.Logf("primary pings secondary:\n%s", out)
	token := fmt.Sprintf("popvmm-%d", time.Now().UnixNano())
	c.mustSSH("secondary", fmt.Sprintf("mkdir -p /tmp/www && echo %s > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && echo httpd started", token))
	out = c.mustSSH("primary", "wget", "-q", "-O", "-", "http://"+sec+":8080/index.html")
	if !strings.Contains(out, token) {
		t.Fatalf("primary fetched %q from the secondary over TCP, want %q", out, token)
	}
	t.Logf("primary fetched %q from the secondary over TCP", strings.TrimSpace(out))

	// Down: nothing left.
	c.must("down", "-c", c.config)
	checkGone(t, c, st)
}

// checkGone waits for the supervisor of st to exit and checks that it left
// no link of the cluster and that no process holds KVM or a tap open.
func checkGone(t testing.TB, c *kvmCluster, st *supervisor.Status) {
	t.Helper()
	if err := waitGone(st.PID, 2*time.Minute); err != nil {
		t.Fatalf("supervisor %d still runs 2 minutes after down", st.PID)
	}
	if ls := linksOf(t, st.Bridge, st.Cluster); len(ls) > 0 {
		t.Errorf("links left after down: %v", ls)
	}
	if h := kvmAndTapHolders(c.config); len(h) > 0 {
		t.Errorf("KVM or tap files still open after down: %v", h)
	}
}

// reach checks kernel name from the host: ICMP echo, then ssh with the
// cluster key and its known host key.
func reach(t testing.TB, c *kvmCluster, name string) {
	t.Helper()
	k := c.kernel(name)
	ip := netip.MustParseAddr(k.IP)
	rtt, err := ping(ip, 2*time.Minute)
	if err != nil {
		t.Fatalf("ping %s (%s): %v", name, ip, err)
	}
	t.Logf("ping %s (%s): %v", name, ip, rtt)
	out := c.mustSSH(name, "uname", "-a")
	if !strings.Contains(out, "Linux "+name+" ") {
		t.Fatalf("popvmm ssh %s uname -a = %q, want the kernel's uname with host name %s", name, out, name)
	}
	t.Logf("popvmm ssh %s uname -a: %s", name, strings.TrimSpace(out))
}

// TestKVMClusterKilled kills a supervisor with SIGKILL while its kernels
// run: the taps go with its fds, the bridge stays behind marked as the
// cluster's, and the next `up` removes it and makes it afresh; `down` then
// leaves nothing.
func TestKVMClusterKilled(tt *testing.T) {
	testenv.RequireRoot(tt)
	c := newKVMCluster(tt, "e2ekill",
		kvmKernel{"primary", "light", "0", "256M", "up"},
		kvmKernel{"secondary", "light", "1", "256M", "up"})
	t := c.t
	c.must("up", "-d", c.config)
	st := c.status()
	t.Cleanup(func() { c.killAll(st) })
	if got := linksOf(t, st.Bridge, st.Cluster); len(got) != 3 {
		t.Fatalf("links while up: %v, want the bridge and two taps", got)
	}
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(st.PID, time.Minute); err != nil {
		t.Fatalf("supervisor %d survives SIGKILL", st.PID)
	}
	var left []string
	if err := waitUntil(30*time.Second, func() bool {
		left = linksOf(t, st.Bridge, st.Cluster)
		return len(left) == 1 && left[0] == st.Bridge
	}); err != nil {
		t.Fatalf("links after kill -9: %v, want only the bridge", left)
	}
	t.Logf("after kill -9: %v left, for the next up to clean", left)

	c.must("up", "-d", c.config)
	st2 := c.status()
	t.Cleanup(func() { c.killAll(st2) })
	log, _ := os.ReadFile(filepath.Join(c.runDir, supervisor.LogName))
	if !bytes.Contains(log, []byte("removed the bridge a killed supervisor")) {
		t.Errorf("the second up did not report removing the stale bridge; its log:\n%s", log)
	}
	if got := linksOf(t, st2.Bridge, st2.Cluster); len(got) != 3 {
		t.Errorf("links after the second up: %v, want the bridge and two taps", got)
	}
	c.must("down", "-c", c.config)
	checkGone(t, c, st2)
}
