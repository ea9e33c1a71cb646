package vmm

import (
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// commMax is the longest thread name Linux keeps (TASK_COMM_LEN - 1).
const commMax = 15

// ThreadName is vCPU n's thread name for kernel: full is
// "popvmm/<kernel>/vcpu<n>", shown by status; comm is what the host's
// kernel can hold (15 bytes, what ps and top show): "<kernel>/vcpu<n>",
// the kernel name cut short so the vCPU number always survives.
func ThreadName(kernel string, n int) (comm, full string) {
	suffix := fmt.Sprintf("/vcpu%d", n)
	full = "popvmm/" + kernel + suffix
	k := kernel
	if len(k)+len(suffix) > commMax {
		k = k[:max(commMax-len(suffix), 0)]
	}
	comm = k + suffix
	if len(comm) > commMax {
		comm = comm[len(comm)-commMax:]
	}
	return comm, full
}

// pinThread restricts the calling thread to host core cpu.
func pinThread(cpu int) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin to host core %d: %w", cpu, err)
	}
	return nil
}

// threadAffinity reads thread tid's allowed host cores.
func threadAffinity(tid int) ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(tid, &set); err != nil {
		return nil, err
	}
	var cpus []int
	for i := range 1024 {
		if set.IsSet(i) {
			cpus = append(cpus, i)
		}
	}
	return cpus, nil
}

// offMainThread runs f with the calling goroutine locked to an OS thread
// that is not the process's main thread, and never unlocks it (f's
// thread ends with it). Any goroutine may be running on the main thread
// (the Go scheduler puts goroutines there like on any other), and a vCPU
// thread is pinned and renamed: on the main thread that renamed the whole
// process in ps, top and pgrep and pinned it to the vCPU's core (issue 21,
// item 11). So when the caller finds itself on the main thread it stays
// locked there until a fresh goroutine has locked itself to another thread
// (it cannot be scheduled onto the main thread meanwhile: a locked thread
// runs only its own goroutine), hands f to it, and lets the main thread go.
func offMainThread(f func()) {
	runtime.LockOSThread()
	if !onMainThread() {
		f()
		return
	}
	locked := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		close(locked)
		f()
	}()
	<-locked
	runtime.UnlockOSThread()
}

// onMainThread says whether the calling thread is the process's main
// thread (its thread id is the process id).
func onMainThread() bool { return unix.Gettid() == unix.Getpid() }
