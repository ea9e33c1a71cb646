// Package retry keeps popvmm's long-running loops running through errors
// that pass: an accept or a read that fails because the process (or the
// host) is out of file descriptors, buffers or memory for a moment, a
// connection aborted before it was accepted, a call interrupted by a
// signal. Every accept loop and every long-lived reader takes its errors
// through here: a transient one waits (with back-off: 5 ms doubling to
// 1 s, as Go's net/http server does) and tries again, logged rate-limited;
// any other error is the caller's to handle.
package retry

import (
	"context"
	"errors"
	"time"

	"golang.org/x/sys/unix"

	"github.com/popvmm/popvmm/internal/ratelog"
)

// Back-off bounds.
const (
	MinDelay = 5 * time.Millisecond
	MaxDelay = time.Second
)

// transient are the errors a server outlives (accept(2) and read(2) on
// Linux): out of file descriptors (per process or system-wide), socket
// buffers or memory; a connection aborted, or a protocol error on it,
// before it was accepted; a signal; nothing there yet.
var transient = []error{unix.EMFILE, unix.ENFILE, unix.ENOBUFS, unix.ENOMEM, unix.ECONNABORTED, unix.EPROTO, unix.EINTR, unix.EAGAIN}

// Transient reports whether err (wrapped or not) is one that passes: a
// loop should wait and try again rather than end.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	for _, e := range transient {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Backoff is the wait before the next try: MinDelay after the first
// failure, doubling up to MaxDelay; Reset after a success. The zero value
// is ready to use.
type Backoff struct {
	next time.Duration
}

// Next returns the delay to wait now and doubles the following one.
func (b *Backoff) Next() time.Duration {
	d := max(b.next, MinDelay)
	b.next = min(2*d, MaxDelay)
	return d
}

// Reset starts again from MinDelay.
func (b *Backoff) Reset() { b.next = 0 }

// Wait sleeps for Next, or until ctx ends; it reports whether the full
// delay passed (false: ctx ended).
func (b *Backoff) Wait(ctx context.Context) bool { return Sleep(ctx, b.Next()) }

// Sleep sleeps for d, or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Accept calls accept until it returns a connection, an error that is not
// Transient, or ctx ends (then it returns accept's error, or ctx's if
// accept had none: the caller checks ctx.Err() as after any failed
// accept). A transient error is logged through log as "<what>: accept
// failed; retrying" (rate-limited, with the error and the delay) and
// retried after a back-off.
func Accept[C any](ctx context.Context, accept func() (C, error), log *ratelog.Logger, what string) (C, error) {
	var b Backoff
	for {
		c, err := accept()
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil || !Transient(err) {
			return c, err
		}
		d := b.Next()
		log.Warn("accept failed; retrying", "what", what, "err", err, "in", d)
		if !Sleep(ctx, d) {
			var zero C
			return zero, err
		}
	}
}
