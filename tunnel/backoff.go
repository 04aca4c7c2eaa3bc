package tunnel

import "time"

// Clock is the time source of the reconnect loop; tests substitute a fake
// to check the waits without waiting.
type Clock interface {
	Now() time.Time
	// After is like time.After.
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// stableSession is how long a session must live for the next reconnect to
// start again from MinBackoff.
const stableSession = 10 * time.Second

// backoffDelay is the wait after the n-th consecutive failure (n from 0):
// uniform in [lo, min(hi, lo·2^(n+1))), with u in [0, 1) choosing the point.
// Waits spread over the whole range so that agents cut off together by a
// relay restart do not come back together; the floor keeps even an unlucky
// draw from hammering the relay.
func backoffDelay(n int, lo, hi time.Duration, u float64) time.Duration {
	if lo >= hi {
		return hi
	}
	ceil := hi
	if n < 62 {
		if c := lo << (n + 1); c > 0 && c < hi && c>>(n+1) == lo {
			ceil = c
		}
	}
	if u < 0 {
		u = 0
	}
	d := lo + time.Duration(u*float64(ceil-lo))
	if d >= hi {
		// u close to 1 can round up to the ceiling.
		d = hi
	}
	return d
}
