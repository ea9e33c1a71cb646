// Package supervisor runs one cluster: it owns the cluster's run directory
// (a 0700 directory holding an exclusive lock, the supervisor's pid and the
// 0600 control socket), serves the control protocol that the popvmm command
// line speaks, and tracks each kernel's lifecycle state.
//
// One supervisor process runs per cluster; a second `popvmm up` of the same
// cluster finds the lock taken and is refused with ErrAlreadyUp.
package supervisor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/cluster"
)

// Names inside a run directory. Socket names come from package cluster,
// which checks that they fit a Unix socket address in the run directory.
const (
	lockName   = "lock"
	pidName    = "pid"
	SocketName = cluster.ControlSocketName
	LogName    = "supervisor.log"
)

// ErrAlreadyUp is returned by Lock when another supervisor holds the run
// directory.
var ErrAlreadyUp = errors.New("cluster is already up")

// AlreadyUpError says which process holds the run directory.
type AlreadyUpError struct {
	RunDir string
	PID    int // 0 when unknown
}

func (e *AlreadyUpError) Error() string {
	who := "another popvmm"
	if e.PID > 0 {
		who = fmt.Sprintf("popvmm pid %d", e.PID)
	}
	return fmt.Sprintf("%v: %s holds %s", ErrAlreadyUp, who, e.RunDir)
}

func (e *AlreadyUpError) Unwrap() error { return ErrAlreadyUp }

// RunDir is a locked run directory. Release undoes Lock and may be called
// more than once.
type RunDir struct {
	Path string
	lock *os.File
}

// PrepareDir creates dir with mode 0700 (tightening an existing one) and
// checks that it is a directory this user owns.
func PrepareDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create run directory: %w", err)
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("run directory %s is not a directory", dir)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("run directory %s belongs to uid %d, not to this user (uid %d)", dir, sys.Uid, os.Geteuid())
	}
	if st.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("run directory: %w", err)
		}
	}
	return nil
}

// Lock takes the run directory at dir for this process: it creates the
// directory (0700), takes an exclusive flock on dir/lock and writes dir/pid.
// The kernel drops the flock when the process dies, so a killed supervisor
// never leaves the cluster locked.
func Lock(dir string) (*RunDir, error) {
	if err := PrepareDir(dir); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(dir, lockName), os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &AlreadyUpError{RunDir: dir, PID: ReadPID(dir)}
		}
		return nil, fmt.Errorf("lock %s: %w", dir, os.NewSyscallError("flock", err))
	}
	rd := &RunDir{Path: dir, lock: f}
	if err := os.WriteFile(filepath.Join(dir, pidName), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		rd.Release()
		return nil, fmt.Errorf("write pid file: %w", err)
	}
	return rd, nil
}

// Held reports whether a live process holds the run directory at dir
// (Lock), and the pid it recorded. It takes the lock shared for a moment,
// without waiting: a supervisor holds it exclusively until it exits.
func Held(dir string) (pid int, held bool) {
	f, err := os.Open(filepath.Join(dir, lockName))
	if err != nil {
		return 0, false
	}
	defer f.Close() // drops the shared lock, if it was taken
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); errors.Is(err, unix.EWOULDBLOCK) {
		return ReadPID(dir), true
	}
	return 0, false
}

// Socket is the control socket's path.
func (rd *RunDir) Socket() string { return filepath.Join(rd.Path, SocketName) }

// Release removes the pid file and socket and drops the lock. The directory
// and its logs stay.
func (rd *RunDir) Release() {
	if rd.lock == nil {
		return
	}
	os.Remove(filepath.Join(rd.Path, pidName))
	os.Remove(rd.Socket())
	rd.lock.Close() // drops the flock
	rd.lock = nil
}

// ReadPID returns the pid recorded in dir, or 0.
func ReadPID(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, pidName))
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}
