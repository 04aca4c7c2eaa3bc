package logging

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// Defaults of NewLimit's callers: a kind of line others can cause at will
// (failed authentication, clients cut) may come 20 at once, then 5 a
// second.
const (
	LimitRate  = 5
	LimitBurst = 20
)

// Limit caps a kind of log line that others can cause at will, so that
// the log cannot be flooded: up to burst lines at once, perSecond after
// that. The lines left out are counted in the next one's
// "lines_suppressed". A Limit is safe for concurrent use.
type Limit struct {
	lim        *rate.Limiter
	suppressed atomic.Int64
}

// NewLimit returns a Limit of perSecond lines a second after a burst.
func NewLimit(perSecond float64, burst int) *Limit {
	return &Limit{lim: rate.NewLimiter(rate.Limit(perSecond), burst)}
}

// Log writes the line to log at level, unless the limit is spent. A level
// log does not write takes nothing from the limit.
func (l *Limit) Log(log *slog.Logger, level slog.Level, msg string, args ...any) {
	l.logAt(time.Now(), log, level, msg, args...)
}

func (l *Limit) logAt(now time.Time, log *slog.Logger, level slog.Level, msg string, args ...any) {
	if !log.Enabled(context.Background(), level) {
		return
	}
	if !l.lim.AllowN(now, 1) {
		l.suppressed.Add(1)
		return
	}
	if n := l.suppressed.Swap(0); n > 0 {
		args = append(args, "lines_suppressed", n)
	}
	log.Log(context.Background(), level, msg, args...)
}

// Every lets one line through per interval, for a condition that lasts
// (a full table, a flood of connections) and is worth a line now and
// then, not one per occurrence. The zero Every lets the first line
// through; it is safe for concurrent use.
type Every struct {
	last atomic.Int64 // unix nanos of the last line let through
}

// Allow reports whether a line may go out now, interval after the last
// one, and if so counts it as sent.
func (e *Every) Allow(interval time.Duration) bool {
	return e.allowAt(time.Now(), interval)
}

func (e *Every) allowAt(now time.Time, interval time.Duration) bool {
	n := now.UnixNano()
	last := e.last.Load()
	return n-last > int64(interval) && e.last.CompareAndSwap(last, n)
}
