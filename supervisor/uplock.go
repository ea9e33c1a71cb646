package supervisor

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"golang.org/x/sys/unix"
)

// upLockName is the lock `popvmm up` holds in a run root while it checks
// the clusters that are up and starts its own.
const upLockName = ".up.lock"

// LockUp serialises `popvmm up` under runRoot: the caller checks the
// clusters that are up for conflicts (Conflicts) while it holds the lock
// and lets it go once its own supervisor answers on its control socket
// (or has failed), so that two `up`s at once cannot both take a core, a
// bridge or a subnet the other is taking: each sees the other as up, or
// not yet started. The lock is an exclusive flock(2) on
// RUNROOT/.up.lock (released by the kernel if the process
// dies). When another `up` holds it, waiting is called once and LockUp
// blocks until it is free or ctx ends. unlock may be called more than
// once. An empty runRoot (no registry) locks nothing.
func LockUp(ctx context.Context, runRoot string, waiting func()) (unlock func(), err error) {
	if runRoot == "" {
		return func() {}, nil
	}
	if err := os.MkdirAll(runRoot, 0o700); err != nil {
		return nil, fmt.Errorf("lock %s: %w", runRoot, err)
	}
	path := filepath.Join(runRoot, upLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	fd := int(f.Fd())
	err = flock(fd, unix.LOCK_EX|unix.LOCK_NB)
	if errors.Is(err, unix.EWOULDBLOCK) {
		if waiting != nil {
			waiting()
		}
		done := make(chan error, 1)
		go func() { done <- flock(fd, unix.LOCK_EX) }()
		select {
		case err = <-done:
		case <-ctx.Done():
			go func() { <-done; f.Close() }() // a lock taken after all goes with the file
			return nil, fmt.Errorf("lock %s: %w", path, ctx.Err())
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	var once sync.Once
	return func() { once.Do(func() { f.Close() }) }, nil
}

// flock is flock(2), restarted when a signal interrupts it.
func flock(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}
