package vmm

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/popvmm/popvmm/internal/ratelog"
	"github.com/popvmm/popvmm/internal/syncbuf"
)

// TestRebootLogBounded: a guest that resets in a loop under
// RestartAlways made the VM log "rebooting" once per reboot, without
// limit, to the supervisor's log (never rotated). The line is
// rate-limited (internal/ratelog) and the lines held back are counted.
// Without KVM this drives the VM's reboot logging directly, with the
// loggers New makes.
func TestRebootLogBounded(t *testing.T) {
	var buf syncbuf.Buffer
	log, guestLog := vmLogs(Config{Name: "loop", Log: slog.New(slog.NewTextHandler(&buf, nil))})
	v := &VM{log: log, guestLog: guestLog}
	const reboots = 200
	for range reboots {
		v.logReboot("reset by the guest (i8042)")
	}
	if n := strings.Count(buf.String(), `msg=rebooting`); n < 1 || n > ratelog.DefaultBurst {
		t.Fatalf("%d reboots logged %d lines, want 1 to %d:\n%s", reboots, n, ratelog.DefaultBurst, buf.String())
	}
	v.guestLog.Flush() // as watch does when the VM ends
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	last := lines[len(lines)-1]
	if want := ratelog.SuppressedKey + "=195"; !strings.Contains(last, "msg=rebooting") || !strings.Contains(last, want) || !strings.Contains(last, "kernel=loop") {
		t.Errorf("last line %q, want the rebooting line with kernel=loop and %s", last, want)
	}
}
