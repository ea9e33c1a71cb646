// Package vtty connects each kernel's serial console to the host: the 16550A
// UART model, the Console that carries it to a host PTY with a log on disk
// and a replay of recent output, and the console log reader behind
// `popvmm logs`.
package vtty

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// pollInterval is how often Follow looks for new console output. Console
// logs are written by another process, so there is no event to wait on
// short of inotify; a quarter second is below what a person notices.
const pollInterval = 250 * time.Millisecond

// CopyLog writes the console log at path to w, after its rotated part
// (RotatedLog) when there is one. With follow it keeps writing what is
// appended, across truncation or replacement of the file (a rotation, a
// reboot starting a new log), until ctx ends; ending that way is not an
// error. What was appended to a replaced file before it was replaced is
// written before the new file.
func CopyLog(ctx context.Context, path string, w io.Writer, follow bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	defer func() { f.Close() }()
	if old, err := os.Open(RotatedLog(path)); err == nil {
		_, err := io.Copy(w, old)
		old.Close()
		if err != nil {
			return fmt.Errorf("copy console log: %w", err)
		}
	}
	var off int64
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		n, err := io.Copy(w, f)
		off += n
		if err != nil {
			return fmt.Errorf("copy console log: %w", err)
		}
		if !follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		// Reopen when the file was replaced or truncated.
		cur, err1 := f.Stat()
		now, err2 := os.Stat(path)
		if err := errors.Join(err1, err2); err != nil {
			if errors.Is(err2, os.ErrNotExist) {
				continue // between remove and create
			}
			return fmt.Errorf("console log: %w", err)
		}
		if !os.SameFile(cur, now) || now.Size() < off {
			nf, err := os.Open(path)
			if err != nil {
				continue
			}
			if !os.SameFile(cur, now) { // replaced: take its last lines first
				if _, err := io.Copy(w, f); err != nil {
					nf.Close()
					return fmt.Errorf("copy console log: %w", err)
				}
				// Rotated twice since the last look: the generation
				// between is the rotated log now.
				if mid, err := os.Open(RotatedLog(path)); err == nil {
					if st, err := mid.Stat(); err == nil && !os.SameFile(st, cur) && !os.SameFile(st, now) {
						io.Copy(w, mid)
					}
					mid.Close()
				}
			}
			f.Close()
			f, off = nf, 0
		}
	}
}
