package lab

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeQEMUEnv names what the fake emulator does: TestFakeQEMU, re-run by
// a wrapper script as Run's QEMU, reads it.
const fakeQEMUEnv = "POPVMM_LAB_FAKE_QEMU"

// TestFakeQEMU is not a test: it is the fake emulator when fakeQEMUEnv is
// set. It connects the three serial sockets of its command line as QEMU
// does, then plays the lab host's part of the scenario named there.
func TestFakeQEMU(t *testing.T) {
	scenario := os.Getenv(fakeQEMUEnv)
	if scenario == "" {
		t.Skip("the fake emulator of TestRunFakeEmulator")
	}
	var sock []string
	var job string
	for _, a := range flag.Args() {
		for _, f := range strings.Split(a, ",") {
			if p, ok := strings.CutPrefix(f, "path="); ok && strings.HasPrefix(a, "socket,") {
				sock = append(sock, p)
			} else if ok && strings.Contains(a, "id=ctl,") {
				job = p
			}
		}
	}
	var tty [3]net.Conn
	for i := range tty {
		c, err := net.Dial("unix", sock[i])
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			os.Exit(1)
		}
		tty[i] = c
	}
	say := func(i int, s string) { fmt.Fprint(tty[i], s) }
	switch scenario {
	case "ok":
		say(0, "popvmm-lab: kernel\npopvmm-lab: modules\nsome kernel line\npopvmm-lab: ready\n")
		say(1, "out\n")
		say(2, "err\n")
		os.WriteFile(filepath.Join(job, "status"), []byte("3\n"), 0o644)
		say(0, "popvmm-lab: done\n")
	case "fail":
		say(0, "popvmm-lab: kernel\n[   1.5] popvmm-lab: fail module kvm_amd did not load\n")
	case "early exit":
		say(0, "popvmm-lab: kernel\n")
		fmt.Fprintln(os.Stderr, "qemu: the last word")
	case "hang":
		say(0, "popvmm-lab: kernel\n")
		select {}
	}
	os.Exit(0)
}

// TestRunFakeEmulator runs Run end to end over a fake emulator (the test
// binary, through a wrapper script): the markers make the timing, the
// serial ports reach stdout, stderr and the console, the job's status
// file is the exit status, and each way the lab host can stop is the
// failure it should be.
func TestRunFakeEmulator(t *testing.T) {
	img := Image{t.TempDir()}
	for _, f := range []string{"vmlinux", "lab.cpio"} {
		os.WriteFile(filepath.Join(img.Dir, f), nil, 0o644)
	}
	os.WriteFile(filepath.Join(img.Dir, "key"), []byte(key()+"\n"), 0o644)
	qemu := filepath.Join(t.TempDir(), "qemu")
	script := fmt.Sprintf("#!/bin/sh\nexec %q -test.run='^TestFakeQEMU$' -- \"$@\"\n", os.Args[0])
	if err := os.WriteFile(qemu, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(scenario string, boot time.Duration, ctx context.Context) (Result, string, string, error) {
		t.Helper()
		t.Setenv(fakeQEMUEnv, scenario)
		var out, errb bytes.Buffer
		res, err := Run(ctx, Config{Image: img, QEMU: qemu, Args: []string{"true"}, Dir: t.TempDir(), TSCkHz: 1,
			BootTimeout: boot, Stdout: &out, Stderr: &errb})
		return res, out.String(), errb.String(), err
	}

	res, out, errOut, err := run("ok", time.Minute, context.Background())
	tm := res.Timing
	switch {
	case err != nil || res.ExitCode != 3:
		t.Errorf("ok: exit %d, %v; want 3, nil", res.ExitCode, err)
	case out != "out\n" || errOut != "err\n":
		t.Errorf("ok: stdout %q, stderr %q; want out, err", out, errOut)
	case !strings.Contains(res.Console, "some kernel line\n"):
		t.Errorf("ok: console %q lacks the kernel's line", res.Console)
	case tm.QEMU <= 0 || tm.Kernel < tm.QEMU || tm.Modules < tm.Kernel || tm.Ready < tm.Modules || tm.Done < tm.Ready || tm.Exit < tm.Ready:
		t.Errorf("ok: timing %+v out of order", tm)
	}

	for _, tc := range []struct {
		scenario string
		boot     time.Duration
		want     string
	}{
		{"fail", time.Minute, "module kvm_amd did not load"},
		{"early exit", time.Minute, "stopped while booting (QEMU: qemu: the last word)"},
		{"hang", 100 * time.Millisecond, "not ready within 100ms"},
	} {
		_, _, _, err := run(tc.scenario, tc.boot, context.Background())
		var le *Error
		if !errors.As(err, &le) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(le.Console, "popvmm-lab: kernel") {
			t.Errorf("%s: Run = %v; want an *Error saying %q with the console's tail", tc.scenario, err, tc.want)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	t.Setenv(fakeQEMUEnv, "hang")
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err = Run(ctx, Config{Image: img, QEMU: qemu, Args: []string{"true"}, Dir: t.TempDir(), TSCkHz: 1,
			Progress: writerFunc(func(p []byte) {
				if bytes.Contains(p, []byte("booting")) {
					cancel()
				}
			})})
	}()
	<-done
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: Run = %v, want context.Canceled", err)
	}
}

type writerFunc func([]byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }
