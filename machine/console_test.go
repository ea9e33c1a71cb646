package machine

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/popvmm/popvmm/vmm"
	"github.com/popvmm/popvmm/vtty"
)

// TestPanicWatch: the console scanner on the UART's output finds the
// guest's /init line and a kernel panic line, each once, whatever the
// write sizes, and passes every byte on.
func TestPanicWatch(t *testing.T) {
	c, err := vtty.OpenConsole(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	inits, panics := make(chan struct{}, 4), make(chan string, 4)
	p := &panicWatch{w: c, onInit: func() { inits <- struct{}{} }, onPanic: func(l string) { panics <- l }}
	out := "[ 1.0] Run /init\npopvmm-ini popvmm-init: primary up\npopvmm-init: again\n" +
		"[ 9.1] KKernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\r\n[ 9.2] Kernel panic - not syncing: second\n"
	for i := 0; i < len(out); i++ {
		if i%3 == 0 {
			p.WriteByte(out[i])
		} else {
			p.Write([]byte{out[i]})
		}
	}
	wait := func(what string, ch <-chan struct{}) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s", what)
		}
	}
	wait("init", inits)
	select {
	case l := <-panics:
		if l != "Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b" {
			t.Errorf("panic line %q", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no panic seen")
	}
	c.Flush()
	if got := string(c.Replay()); got != out {
		t.Errorf("console got %q, want every byte %q", got, out)
	}
	select {
	case <-inits:
		t.Error("init reported twice")
	case l := <-panics:
		t.Errorf("panic reported twice (%q)", l)
	case <-time.After(100 * time.Millisecond): // nothing more may come: a bounded look
	}
}

// TestExitKind: how a VM ended comes from vmm's typed Ending, never from
// the reason's text.
func TestExitKind(t *testing.T) {
	for _, c := range []struct {
		st   vmm.Status
		want ExitKind
	}{
		{vmm.Status{State: vmm.StateStopped, Ending: vmm.EndingHostStop, Reason: "power off"}, ExitStopped},
		{vmm.Status{State: vmm.StateStopped, Ending: vmm.EndingPowerOff, Reason: "stopped by the host"}, ExitPoweroff},
		{vmm.Status{State: vmm.StateCrashed, Ending: vmm.EndingReset}, ExitCrash},
		{vmm.Status{State: vmm.StateCrashed, Ending: vmm.EndingCrash, Reason: "triple fault"}, ExitCrash},
	} {
		if got := exitKind(c.st); got != c.want {
			t.Errorf("exitKind(%+v) = %s, want %s", c.st, got, c.want)
		}
	}
}
