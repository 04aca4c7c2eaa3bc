package httpfwd

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// A client that reads nothing of its answer holds more than its own
// connection: the answer's upstream stream stops being read too, and over
// QUIC its unread bytes count against the window the whole tunnel
// connection shares. The write timeout cuts such a client in the end; a
// StallBudget bounds how many may be waiting at once meanwhile, so that
// however many clients stop reading together, the bytes they hold stay
// below what would stop the connection: a client whose write has been
// blocked for a while takes a place in the budget until the write goes
// on, and one that finds no place left is cut at once.

// ErrClientBacklog is the error (wrapped) of an answer cut because its
// client read nothing while the stall budget of its upstream was spent.
var ErrClientBacklog = errors.New("the client read nothing while too many clients of the same upstream read nothing")

// StallBudget bounds the answers of one upstream (an agent) whose clients
// read nothing at the same time. It is safe for concurrent use.
type StallBudget struct {
	max  int64
	n    atomic.Int64
	cuts atomic.Uint64
}

// NewStallBudget returns a budget of max stalled answers (at least 1).
func NewStallBudget(n int) *StallBudget {
	return &StallBudget{max: int64(max(n, 1))}
}

// Stalled reports the answers waiting on their clients now.
func (b *StallBudget) Stalled() int64 { return b.n.Load() }

// Cuts reports the clients cut for want of a place in the budget.
func (b *StallBudget) Cuts() uint64 { return b.cuts.Load() }

func (b *StallBudget) take() bool {
	if b.n.Add(1) > b.max {
		b.n.Add(-1)
		b.cuts.Add(1)
		return false
	}
	return true
}

func (b *StallBudget) give() { b.n.Add(-1) }

// StallWatch watches the writes of answers to one client connection: a
// write blocked for longer than after takes a place in the budget until it
// returns; with no place left, cut is called to make it fail. The zero
// StallWatch watches nothing. Begin and End bracket each write and are
// called by one goroutine, as is Watch.
type StallWatch struct {
	mu      sync.Mutex
	budget  *StallBudget
	after   time.Duration
	cut     func()
	t       *time.Timer
	writing bool
	counted bool // the write in progress holds a place in budget
	over    bool // it found none: the client is being cut
}

// Watch starts watching with budget (nil: stop watching).
func (w *StallWatch) Watch(budget *StallBudget, after time.Duration, cut func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.budget, w.after, w.cut, w.over = budget, after, cut, false
	if budget == nil && w.t != nil {
		w.t.Stop()
	}
}

// Begin is called before a write.
func (w *StallWatch) Begin() {
	if w.budget == nil { // set only by this goroutine
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writing = true
	if w.t == nil {
		w.t = time.AfterFunc(w.after, w.fire)
	} else {
		w.t.Reset(w.after)
	}
}

// End is called after the write; it reports whether the write was cut for
// want of a place in the budget.
func (w *StallWatch) End() (cut bool) {
	if w.budget == nil {
		return false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writing = false
	w.t.Stop()
	if w.counted {
		w.counted = false
		w.budget.give()
	}
	return w.over
}

// fire runs when a write has been blocked for after.
func (w *StallWatch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.writing || w.counted || w.over || w.budget == nil {
		return // the write ended meanwhile
	}
	if w.budget.take() {
		w.counted = true
		return
	}
	w.over = true
	w.cut()
}

// Stop stops the timer for good.
func (w *StallWatch) Stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.t != nil {
		w.t.Stop()
	}
	w.budget = nil
}
