// Package ratelog bounds the log lines that something outside popvmm's
// control can make it write: a guest (a refused write, a bad doorbell, a
// broken virtqueue, a BAR moved where it cannot go, again and again) or
// the host (an accept that fails for as long as the process is out of file
// descriptors). Each kind of line, its message, is written at most Burst
// times per Interval; the lines held back are counted, and once the
// interval is over one line reports how many there were, so nothing is
// lost but the repetition.
package ratelog

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Defaults: up to DefaultBurst lines of one message per DefaultInterval.
const (
	DefaultBurst    = 5
	DefaultInterval = time.Minute
)

// SuppressedKey is the attribute of the summary line that counts the lines
// held back: "suppressed=N" after the message and the last held-back
// line's attributes.
const SuppressedKey = "suppressed"

// Logger writes through an slog.Logger, each message at most Burst times
// per Interval. Messages must be constants (they key the limit); what
// varies goes in the attributes. Its methods are safe for concurrent use
// and never block on anything but the underlying handler. A nil *Logger
// discards everything.
type Logger struct {
	log      *slog.Logger
	burst    int
	interval time.Duration

	mu   sync.Mutex
	msgs map[string]*window
	held uint64 // lines held back in all, ever
}

// window is one message's current interval.
type window struct {
	start   time.Time
	written int
	held    int        // held back in this interval, not yet reported
	level   slog.Level // of the last held-back line
	args    []any      // its attributes
	timer   *time.Timer
}

// New returns a Logger writing to log (nil: discard) at most burst lines
// of each message per interval; burst < 1 or interval <= 0 take the
// defaults.
func New(log *slog.Logger, burst int, interval time.Duration) *Logger {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if burst < 1 {
		burst = DefaultBurst
	}
	if interval <= 0 {
		interval = DefaultInterval
	}
	return &Logger{log: log, burst: burst, interval: interval, msgs: map[string]*window{}}
}

// Default is New(log, DefaultBurst, DefaultInterval).
func Default(log *slog.Logger) *Logger { return New(log, 0, 0) }

// Slog is the underlying logger, for lines that need no limit (one per
// device lifetime, say).
func (l *Logger) Slog() *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.log
}

// Log writes msg at level unless msg has been written Burst times in the
// current interval; then it is counted, and reported when the interval
// ends. It reports whether the line was written.
func (l *Logger) Log(level slog.Level, msg string, args ...any) bool {
	if l == nil || !l.log.Enabled(context.Background(), level) {
		return false
	}
	now := time.Now()
	l.mu.Lock()
	w := l.msgs[msg]
	if w == nil {
		w = &window{start: now}
		l.msgs[msg] = w
	}
	if now.Sub(w.start) >= l.interval && w.held == 0 {
		w.start, w.written = now, 0 // a quiet interval passed: a new one
	}
	if w.written < l.burst && w.held == 0 {
		w.written++
		l.mu.Unlock()
		l.log.Log(context.Background(), level, msg, args...)
		return true
	}
	w.held++
	l.held++
	w.level, w.args = level, args
	if w.timer == nil {
		wait := max(w.start.Add(l.interval).Sub(now), 0)
		w.timer = time.AfterFunc(wait, func() { l.report(msg) })
	}
	l.mu.Unlock()
	return false
}

// report writes the summary of msg's interval: the last held-back line
// with the count, and starts a new interval that counts that line.
func (l *Logger) report(msg string) {
	l.mu.Lock()
	w := l.msgs[msg]
	if w == nil || w.held == 0 {
		l.mu.Unlock()
		return
	}
	n, level, args := w.held, w.level, w.args
	w.held, w.args, w.timer = 0, nil, nil
	w.start, w.written = time.Now(), 1
	l.mu.Unlock()
	l.log.Log(context.Background(), level, msg, append(append([]any(nil), args...), SuppressedKey, n)...)
}

// Flush reports every message's held-back lines now (at shutdown, so a
// count is not lost with the process).
func (l *Logger) Flush() {
	if l == nil {
		return
	}
	l.mu.Lock()
	var pending []string
	for msg, w := range l.msgs {
		if w.held > 0 {
			if w.timer != nil {
				w.timer.Stop()
			}
			pending = append(pending, msg)
		}
	}
	l.mu.Unlock()
	for _, msg := range pending {
		l.report(msg)
	}
}

// Held is how many lines were held back so far, reported or not.
func (l *Logger) Held() uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held
}

// Debug, Info, Warn and Error are Log at their level.
func (l *Logger) Debug(msg string, args ...any) { l.Log(slog.LevelDebug, msg, args...) }
func (l *Logger) Info(msg string, args ...any)  { l.Log(slog.LevelInfo, msg, args...) }
func (l *Logger) Warn(msg string, args ...any)  { l.Log(slog.LevelWarn, msg, args...) }
func (l *Logger) Error(msg string, args ...any) { l.Log(slog.LevelError, msg, args...) }
