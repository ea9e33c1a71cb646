package supervisor_test

import (
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// outOfFds lowers RLIMIT_NOFILE to a few above the fds open now and dials
// sock until the process runs out of them (EMFILE on both ends), for a
// while; then it closes the connections, restores the limit and returns
// how many it made.
func outOfFds(t *testing.T, sock string) int {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &old); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	lim := old
	lim.Cur = uint64(len(fds) + 16)
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	for range 64 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			break
		}
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond) // the server's accepts meet EMFILE
	for _, c := range conns {
		c.Close()
	}
	unix.Setrlimit(unix.RLIMIT_NOFILE, &old)
	return len(conns)
}

// TestControlSocketOutlivesFdExhaustion: a supervisor whose process runs
// out of file descriptors for a while (a burst of control clients, the
// VMs' eventfds, host peers) keeps running: accept waits and tries again
// (internal/retry), Run does not return (its cleanup would stop every
// kernel), and the control socket answers once fds are back.
func TestControlSocketOutlivesFdExhaustion(t *testing.T) {
	c, done := start(t, testCluster(t, t.TempDir(), "fds"))
	for round := range 2 { // and again: the back-off starts over
		if n := outOfFds(t, c.Socket); n == 0 {
			t.Fatal("no control connection made under the lowered limit")
		}
		select {
		case err := <-done:
			t.Fatalf("round %d: Run returned %v while out of fds", round, err)
		case <-time.After(500 * time.Millisecond):
		}
		st, err := c.Status(ctxT(t))
		if err != nil || st.Cluster != "fds" {
			t.Fatalf("round %d: status once fds are back: %+v, %v", round, st, err)
		}
	}
}
