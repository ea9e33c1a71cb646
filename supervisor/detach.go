package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
)

// Readiness handshake between `popvmm up -d` and the supervisor it starts:
// the child gets a pipe as fd 3, writes ReadyWord to it once its control
// socket is up, or an error text if it fails first, and closes it.
const (
	NotifyFD  = 3
	ReadyWord = "ready"
)

// Detach starts exe with args as a supervisor in its own session, its output
// appended to runDir/supervisor.log, and waits until it reports ready (its
// pid is returned) or fails (its report is the error).
func Detach(exe string, args []string, runDir string) (int, error) {
	if err := PrepareDir(runDir); err != nil {
		return 0, err
	}
	logPath := filepath.Join(runDir, LogName)
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return 0, fmt.Errorf("open supervisor log: %w", err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return 0, fmt.Errorf("readiness pipe: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w} // becomes fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return 0, fmt.Errorf("start supervisor: %w", err)
	}
	said, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	if bytes.Equal(bytes.TrimSpace(said), []byte(ReadyWord)) {
		pid := cmd.Process.Pid
		cmd.Process.Release()
		return pid, nil
	}
	werr := cmd.Wait()
	if len(bytes.TrimSpace(said)) > 0 {
		return 0, errors.New(string(bytes.TrimSpace(said)))
	}
	return 0, fmt.Errorf("supervisor exited before it was ready (%v); see %s", werr, logPath)
}

// Notifier sends the readiness report of a detached supervisor, once.
type Notifier struct {
	f *os.File
}

// NewNotifier takes over the inherited pipe at fd (NotifyFD).
func NewNotifier(fd int) *Notifier {
	return &Notifier{f: os.NewFile(uintptr(fd), "notify")}
}

// Notify writes ReadyWord when err is nil, else the error's text, and
// closes the pipe. Later calls do nothing; a nil Notifier does nothing.
func (n *Notifier) Notify(err error) {
	if n == nil || n.f == nil {
		return
	}
	if err != nil {
		fmt.Fprintln(n.f, err.Error())
	} else {
		fmt.Fprintln(n.f, ReadyWord)
	}
	n.f.Close()
	n.f = nil
}
