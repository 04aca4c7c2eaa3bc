// Package ratelimit admits or refuses requests one at a time against a
// token bucket (golang.org/x/time/rate) and says when to come back. The
// relay limits each client with it, the agent each server.
package ratelimit

import (
	"fmt"
	"strconv"
	"time"

	"golang.org/x/time/rate"
)

// Limiter allows perSecond requests a second on average, in bursts of up
// to burst. A nil *Limiter allows everything, so "no limit" needs no
// branch at the call site.
type Limiter struct {
	lim       *rate.Limiter
	perSecond float64
}

// New returns a Limiter, or nil (no limit) if perSecond is not above 0.
// A burst below 1 is 1.
func New(perSecond float64, burst int) *Limiter {
	if !(perSecond > 0) {
		return nil
	}
	return &Limiter{lim: rate.NewLimiter(rate.Limit(perSecond), max(burst, 1)), perSecond: perSecond}
}

// Take admits one request, or refuses it and says how long until one
// would be admitted. A refused request takes nothing from the allowance.
func (l *Limiter) Take() (retryIn time.Duration, ok bool) {
	if l == nil {
		return 0, true
	}
	now := time.Now()
	r := l.lim.ReserveN(now, 1) // burst ≥ 1: always granted, maybe in the future
	if d := r.DelayFrom(now); d > 0 {
		r.CancelAt(now)
		return d, false
	}
	return 0, true
}

// String describes the limit for an error message: "20 requests/s (burst 40)".
func (l *Limiter) String() string {
	if l == nil {
		return "no limit"
	}
	return fmt.Sprintf("%g requests/s (burst %d)", l.perSecond, l.lim.Burst())
}

// RetryAfter is the Retry-After value for a wait: whole seconds, rounded
// up, at least 1.
func RetryAfter(d time.Duration) string {
	return strconv.FormatInt(max(int64((d+time.Second-1)/time.Second), 1), 10)
}
