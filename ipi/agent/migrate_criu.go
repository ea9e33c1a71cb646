package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// Checkpointer dumps a process tree into a directory and restores it from
// one: CRIU (CRIUCommand) in the agent, a fake in tests.
type Checkpointer interface {
	// Available says why this kernel cannot checkpoint or restore, or nil.
	Available() error
	// Dump checkpoints the tree rooted at pid into images and leaves it
	// stopped; on failure the tree is left as the tool left it (CRIU
	// resumes it; the caller sends SIGCONT all the same). work is a
	// directory for logs, apart from the images.
	Dump(ctx context.Context, pid int, images, work string, o CheckpointOptions) error
	// Restore recreates the tree from images, detached and stopped, and
	// returns its root's PID.
	Restore(ctx context.Context, images, work string, o CheckpointOptions) (int, error)
}

// CheckpointOptions are the choices a migration passes to the tool.
type CheckpointOptions struct {
	DropTCP bool // dump established connections, restore them closed
}

// CRIUCommand runs Debian's criu.
type CRIUCommand struct {
	Path string // default: criu from PATH

	once sync.Once
	path string
	err  error
}

func (c *CRIUCommand) find() (string, error) {
	c.once.Do(func() {
		p := c.Path
		if p == "" {
			p = "criu"
		}
		c.path, c.err = exec.LookPath(p)
		if c.err != nil {
			c.err = fmt.Errorf("no criu on this kernel (%w): boot it from the Debian root image (docs/storage.md)", c.err)
		}
	})
	return c.path, c.err
}

// Available reports whether criu is installed.
func (c *CRIUCommand) Available() error {
	_, err := c.find()
	return err
}

// Dump runs `criu dump --leave-stopped`.
func (c *CRIUCommand) Dump(ctx context.Context, pid int, images, work string, o CheckpointOptions) error {
	args := []string{"dump", "-t", strconv.Itoa(pid), "-D", images, "-W", work, "-o", "dump.log", "-v2",
		"--leave-stopped", "--file-locks"}
	if o.DropTCP {
		// The image has no iptables: the network lock around the
		// connections is nftables' (docs/kernel-images.md).
		args = append(args, "--tcp-established", "--network-lock", "nftables")
	}
	return c.run(ctx, work, "dump.log", args)
}

// Restore runs `criu restore --restore-detached --leave-stopped` and reads
// the root's PID from its pidfile.
func (c *CRIUCommand) Restore(ctx context.Context, images, work string, o CheckpointOptions) (int, error) {
	pidfile := filepath.Join(work, "restore.pid")
	args := []string{"restore", "-D", images, "-W", work, "-o", "restore.log", "-v2",
		"--restore-detached", "--leave-stopped", "--file-locks", "--pidfile", pidfile}
	if o.DropTCP {
		args = append(args, "--tcp-close", "--network-lock", "nftables")
	}
	if err := c.run(ctx, work, "restore.log", args); err != nil {
		return 0, err
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		return 0, fmt.Errorf("criu restore left no pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("criu restore's pid file says %q", b)
	}
	return pid, nil
}

// run runs criu and turns a failure into an error carrying its log's
// errors.
func (c *CRIUCommand) run(ctx context.Context, work, log string, args []string) error {
	path, err := c.find()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, path, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(filepath.Join(work, log))
		why := criuErrors(string(b) + out.String())
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return fmt.Errorf("criu %s: %w: %s", args[0], err, why)
	}
	return nil
}

// criuErrors picks the lines of a CRIU log that say what went wrong: its
// "Error" lines, else its last lines.
func criuErrors(log string) string {
	var errs []string
	lines := strings.Split(strings.TrimSpace(log), "\n")
	for _, l := range lines {
		if strings.Contains(l, "Error") || strings.Contains(l, "error") {
			errs = append(errs, strings.TrimSpace(l))
		}
	}
	if len(errs) == 0 {
		errs = lines[max(0, len(lines)-3):]
	}
	if len(errs) > 5 {
		errs = errs[len(errs)-5:]
	}
	s := strings.Join(errs, "; ")
	if s == "" {
		return "no log"
	}
	return s
}

var _ Checkpointer = (*CRIUCommand)(nil)

// errNotRestored is an answer about a session with nothing restored.
var errNotRestored = errors.New("nothing restored in this session")
