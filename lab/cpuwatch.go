package lab

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// CPUWatch is one lab host CPU's watcher (popvmm lab watch-cpu, started
// for every CPU by the job's KVM holder). Its whole process runs pinned to
// CPU; every Beat it marks the file CPU in Dir (holding its pid), so the
// file's age says how long that CPU has run nothing, and it checks the
// other CPUs' files. A file older than Silence means that CPU stopped
// running tasks: seen under QEMU's multi-threaded TCG, a lab CPU now and
// then stops for good while the other runs on; being idle, it reports no
// RCU stall or soft lockup, and every task woken onto it waits forever.
// The watcher then sends one NMI to the other CPUs (sysrq l, with the
// console's log level raised so that their backtraces show where each
// was) and says so on the kernel log ("popvmm-lab: CPU N ..."). Measured:
// the NMI does not bring the CPU back (once the backtrace request waited
// out its 10 s, once it returned at once; the CPU ran nothing after
// either), so after FailAfter the watcher ends the lab host: it writes
// "popvmm-lab: fail CPU N ran nothing ..." on the console, which `popvmm
// lab run` reports, exiting 125, and crashes the lab kernel (sysrq c; the
// lab boots with panic=-1 and QEMU with -no-reboot), so that
// scripts/test-kvm.sh resumes the tests in a fresh lab instead of letting
// them fail one after another in a lab with one CPU.
//
// No false alarms: a file whose watcher has exited (its pid is gone) is
// no silent CPU, and a watcher that itself ran late by a Silence (the
// whole lab host stalled, its emulator starved on the machine) judges
// nobody for the next Silence.
type CPUWatch struct {
	CPU     int
	Dir     string        // one file per watched CPU, named by its number
	Beat    time.Duration // how often this CPU marks its file (default 500 ms)
	Silence time.Duration // a file this old means its CPU is stuck: one NMI (default 5 s)
	Log     io.Writer     // where the watcher says what it did (with the kernel log)
	// FailAfter: a CPU silent this long ends the lab host (default 20 s).
	FailAfter time.Duration
	// Nudge sends the NMI; nil writes "l" to /proc/sysrq-trigger.
	Nudge func() error
	// Fail ends the lab host with reason; nil writes the fail marker on
	// the console (through /dev/kmsg) and "c" to /proc/sysrq-trigger.
	Fail func(reason string) error
	// Kmsg is the kernel log the watcher writes to; "" is /dev/kmsg, "-"
	// none.
	Kmsg string
}

// PinProcess restricts every thread of this process to host CPU cpu and,
// with realtime, schedules them SCHED_FIFO at priority 1, so that a busy
// CPU still runs a watcher's beat at once (the beat sleeps between
// marks). Threads made later inherit both from the one that makes them;
// the task list is walked until a pass finds no new thread.
func PinProcess(cpu int, realtime bool) error {
	var set unix.CPUSet
	set.Set(cpu)
	fifo := &unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_FIFO, Priority: 1}
	done := map[int]bool{}
	for {
		tasks, err := os.ReadDir("/proc/self/task")
		if err != nil {
			return fmt.Errorf("pin to CPU %d: %w", cpu, err)
		}
		fresh := 0
		for _, t := range tasks {
			tid, err := strconv.Atoi(t.Name())
			if err != nil || done[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && err != unix.ESRCH {
				return fmt.Errorf("pin thread %d to CPU %d: %w", tid, cpu, err)
			}
			if realtime {
				if err := unix.SchedSetAttr(tid, fifo, 0); err != nil && err != unix.ESRCH {
					return fmt.Errorf("thread %d: SCHED_FIFO: %w", tid, err)
				}
			}
			done[tid], fresh = true, fresh+1
		}
		if fresh == 0 {
			return nil
		}
	}
}

func (w *CPUWatch) defaults() {
	if w.Beat <= 0 {
		w.Beat = 500 * time.Millisecond
	}
	if w.Silence <= 0 {
		w.Silence = 5 * time.Second
	}
	if w.Log == nil {
		w.Log = io.Discard
	}
	if w.FailAfter <= 0 {
		w.FailAfter = 20 * time.Second
	}
	if w.Nudge == nil {
		w.Nudge = sysrqBacktrace
	}
	if w.Fail == nil {
		w.Fail = crashLab
	}
}

// crashLab ends the lab host: the fail marker on the console, for popvmm
// lab run to report, then a kernel crash on this CPU (a power-off would
// first move to the boot CPU, maybe the silent one). The marker goes
// through the kernel log, whose console writes poll the UART: a write to
// /dev/ttyS0 waits for the UART's interrupt, which the lost CPU may be
// the one to take (seen: the marker never reached the console).
func crashLab(reason string) error {
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		f.WriteString("<0>popvmm-lab: fail " + reason + "\n")
		f.Close()
	}
	return os.WriteFile("/proc/sysrq-trigger", []byte("c"), 0)
}

// sysrqBacktrace asks the kernel for every CPU's backtrace, which it
// gathers with an NMI to each other CPU, with the console's log level
// raised first (the lab boots with loglevel=4, and backtraces are info):
// the lab host is about to end, and its console should say where each
// CPU was.
func sysrqBacktrace() error {
	os.WriteFile("/proc/sys/kernel/printk", []byte("7"), 0)
	return os.WriteFile("/proc/sysrq-trigger", []byte("l"), 0)
}

// Run beats and watches until ctx ends. The caller has pinned the process
// (PinProcess). The beat file is removed when Run returns.
func (w *CPUWatch) Run(ctx context.Context) error {
	w.defaults()
	if err := os.MkdirAll(w.Dir, 0o755); err != nil {
		return err
	}
	own := filepath.Join(w.Dir, strconv.Itoa(w.CPU))
	if err := os.WriteFile(own, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}
	defer os.Remove(own)        // an ended watcher is no silent CPU
	nudged := map[string]bool{} // CPUs sent an NMI in their current silence
	tick := time.NewTicker(w.Beat)
	defer tick.Stop()
	var lastBeat, judgeFrom time.Time
	for {
		if ctx.Err() != nil {
			return nil
		}
		now := time.Now()
		if err := os.Chtimes(own, now, now); err != nil {
			return err
		}
		if !lastBeat.IsZero() && now.Sub(lastBeat) >= w.Silence {
			judgeFrom = now.Add(w.Silence) // this watcher ran late: so may all have
		}
		lastBeat = now
		if !now.Before(judgeFrom) {
			if err := w.judge(now, own, nudged); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// judge checks every other CPU's beat file once. It returns Fail's result
// when it ended the lab host.
func (w *CPUWatch) judge(now time.Time, own string, nudged map[string]bool) error {
	others, _ := os.ReadDir(w.Dir)
	for _, o := range others {
		name := o.Name()
		if name == filepath.Base(own) || !watcherAlive(filepath.Join(w.Dir, name)) {
			continue
		}
		fi, err := o.Info()
		if err != nil {
			continue
		}
		age := now.Sub(fi.ModTime())
		switch {
		case age < w.Silence:
			if nudged[name] {
				delete(nudged, name)
				w.say("popvmm-lab: CPU %s runs again (seen from CPU %d)", name, w.CPU)
			}
		case age >= w.FailAfter:
			reason := fmt.Sprintf("CPU %s ran nothing for %.1f s (seen from CPU %d): the lab host lost it (QEMU TCG, docs/lab.md)",
				name, age.Seconds(), w.CPU)
			w.say("popvmm-lab: %s; ending the lab host", reason)
			return w.Fail(reason)
		case !nudged[name]:
			nudged[name] = true
			err := w.Nudge()
			w.say("popvmm-lab: CPU %s ran nothing for %.1f s (seen from CPU %d): NMI to the other CPUs (sysrq l): %v",
				name, age.Seconds(), w.CPU, errText(err))
		}
	}
	return nil
}

// watcherAlive says whether the watcher that writes beat file path still
// runs: the file holds its pid. A file without one counts as alive.
func watcherAlive(path string) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil || pid <= 0 {
		return true
	}
	return unix.Kill(pid, 0) != unix.ESRCH
}

func errText(err error) string {
	if err == nil {
		return "sent"
	}
	return err.Error()
}

// say writes a line to the watcher's log and to the kernel log at error
// level, so that the lab host's console (loglevel=4) shows it where it
// happened.
func (w *CPUWatch) say(format string, args ...any) {
	line := fmt.Sprintf(format, args...)
	fmt.Fprintln(w.Log, line)
	path := w.Kmsg
	switch path {
	case "-":
		return
	case "":
		path = "/dev/kmsg"
	}
	if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0); err == nil {
		f.WriteString("<3>" + line + "\n") // an error: the lab console (loglevel=4) shows it
		f.Close()
	}
}
