package httpfwd

import (
	"context"
	"sync/atomic"
)

// Inflight counts the exchanges a server has in progress and refuses new
// ones once it drains, so that a process told to stop finishes what it
// took and takes no more. Make one with NewInflight; its methods are safe
// for concurrent use and cost an exchange two atomic operations.
type Inflight struct {
	n        atomic.Int64
	draining atomic.Bool
	// zero holds a token whenever n dropped to zero since Wait last
	// looked, so Wait cannot miss the last exchange ending.
	zero chan struct{}
}

// NewInflight returns an Inflight with nothing in progress.
func NewInflight() *Inflight {
	return &Inflight{zero: make(chan struct{}, 1)}
}

// Enter counts an exchange in, or reports false once Drain was called: the
// exchange must then be refused (and not Left).
func (f *Inflight) Enter() bool {
	f.n.Add(1)
	// Checked after the increment: Drain followed by Wait either sees
	// this exchange counted or is seen here.
	if f.draining.Load() {
		f.Leave()
		return false
	}
	return true
}

// Leave counts an exchange out.
func (f *Inflight) Leave() {
	if f.n.Add(-1) == 0 {
		select {
		case f.zero <- struct{}{}:
		default: // a token is there already
		}
	}
}

// Count is the number of exchanges in progress.
func (f *Inflight) Count() int { return int(f.n.Load()) }

// Drain makes Enter refuse from now on. It may be called more than once.
func (f *Inflight) Drain() { f.draining.Store(true) }

// Draining reports whether Drain was called: a readiness check answers
// "not ready" then.
func (f *Inflight) Draining() bool { return f.draining.Load() }

// Wait returns nil once no exchange is in progress, or ctx's error. After
// Drain, nil means none will be again.
func (f *Inflight) Wait(ctx context.Context) error {
	for f.n.Load() != 0 {
		select {
		case <-f.zero:
		case <-ctx.Done():
			if f.n.Load() == 0 {
				return nil
			}
			return ctx.Err()
		}
	}
	return nil
}
