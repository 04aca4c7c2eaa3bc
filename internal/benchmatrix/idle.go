package benchmatrix

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/mcptun/mcptun/internal/procs"
)

// memFigures is one process's memory, from its own accounting: the kernel's
// (RSS, PSS) and, through its pprof endpoint, the Go runtime's after a
// forced collection.
type memFigures struct {
	memSample
	HeapLive   int64 `json:"heap_live_bytes,omitempty"` // HeapAlloc after runtime.GC
	Stack      int64 `json:"stack_bytes,omitempty"`     // StackInuse
	Goroutines int   `json:"goroutines,omitempty"`
	Runtime    bool  `json:"runtime"` // HeapLive, Stack and Goroutines were read
}

// idleMem is what a phase of idle sessions cost one process.
type idleMem struct {
	Before memFigures `json:"before"`
	After  memFigures `json:"after"`
	// Per opened session, in bytes (goroutines: count).
	RSSPerSession        float64 `json:"rss_per_session_bytes"`
	PSSPerSession        float64 `json:"pss_per_session_bytes"`
	HeapPerSession       float64 `json:"heap_stack_per_session_bytes,omitempty"`
	GoroutinesPerSession float64 `json:"goroutines_per_session,omitempty"`
}

func newIdleMem(before, after memFigures, n int) *idleMem {
	m := &idleMem{Before: before, After: after}
	if n <= 0 {
		return m
	}
	m.RSSPerSession = float64(after.RSS-before.RSS) / float64(n)
	m.PSSPerSession = float64(after.PSS-before.PSS) / float64(n)
	if before.Runtime && after.Runtime {
		m.HeapPerSession = float64(after.HeapLive+after.Stack-before.HeapLive-before.Stack) / float64(n)
		m.GoroutinesPerSession = float64(after.Goroutines-before.Goroutines) / float64(n)
	}
	return m
}

// IdleRow is one phase of the many-idle-sessions benchmark.
type IdleRow struct {
	Label       string   `json:"label"`
	Sessions    int      `json:"sessions"` // asked for in this phase
	Opened      int      `json:"opened"`
	Errors      int      `json:"errors"`
	FirstError  string   `json:"first_error,omitempty"`
	OpenSeconds float64  `json:"open_s"`
	Relay       *idleMem `json:"relay,omitempty"`
	Agent       *idleMem `json:"agent,omitempty"`
	// HeadersAtOnce: whether a GET stream's response header reached the
	// client before any event was sent on it (stream phases only).
	HeadersAtOnce *bool `json:"get_headers_at_once,omitempty"`
	// Stdio phase: the children's memory per session (not the agent's).
	ChildRSSPerSession float64 `json:"child_rss_per_session_bytes,omitempty"`
	ChildPSSPerSession float64 `json:"child_pss_per_session_bytes,omitempty"`
}

// idleWorkers is how many sessions are opened at once.
const idleWorkers = 16

// idleOpen is what openIdle managed to open.
type idleOpen struct {
	sessions []mcpSession
	streams  []*heldStream
	errs     int
	first    error
	// headersAtOnce reports whether a GET stream's response header arrived
	// before any event was sent on it (nil: no stream was opened).
	headersAtOnce *bool
}

func (o *idleOpen) fail(err error) {
	o.errs++
	if o.first == nil {
		o.first = err
	}
}

// openIdle opens n sessions with c, each with a held GET stream if
// stream; it stops early if ctx ends. c's transport must not keep
// connections, so that an idle session holds one only through its stream.
//
// A stream's response header may be held back until the first event (a
// proxy that flushes only with body bytes does that), so the header is
// awaited briefly on the first stream only; then the fixture's
// broadcast_list_changed tool, called through fixture (directly: through
// the tunnel it would need one more stream), sends every stream an event
// and all headers are read.
func openIdle(ctx context.Context, c *mcpClient, n int, stream bool, fixture *mcpClient) *idleOpen {
	out := &idleOpen{}
	var mu sync.Mutex
	jobs := make(chan struct{})
	var wg sync.WaitGroup
	for range min(idleWorkers, n) {
		wg.Go(func() {
			for range jobs {
				octx, cancel := context.WithTimeout(ctx, 30*time.Second)
				s, err := c.initialize(octx)
				var h *heldStream
				if err == nil && stream {
					h, err = c.startStream(octx, s)
				}
				cancel()
				mu.Lock()
				if err != nil {
					out.fail(err)
				} else {
					out.sessions = append(out.sessions, s)
					if stream {
						out.streams = append(out.streams, h)
					}
				}
				mu.Unlock()
			}
		})
	}
feed:
	for range n {
		select {
		case jobs <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if len(out.streams) == 0 {
		return out
	}

	var ok []*heldStream
	first := out.streams[0]
	err := first.readHeader(time.Now().Add(2 * time.Second))
	var ne net.Error
	atOnce := !(errors.As(err, &ne) && ne.Timeout())
	out.headersAtOnce = &atOnce
	rest := out.streams
	if atOnce {
		rest = rest[1:]
		if err != nil {
			first.Close()
			out.fail(err)
		} else {
			ok = append(ok, first)
		}
	} else if err := fixture.broadcast(ctx); err != nil {
		out.fail(fmt.Errorf("broadcast_list_changed: %w", err))
	}
	deadline := time.Now().Add(60 * time.Second)
	work := make(chan *heldStream)
	for range min(idleWorkers, len(rest)) {
		wg.Go(func() {
			for h := range work {
				err := h.readHeader(deadline)
				mu.Lock()
				if err != nil {
					h.Close()
					out.fail(err)
				} else {
					ok = append(ok, h)
				}
				mu.Unlock()
			}
		})
	}
	for _, h := range rest {
		work <- h
	}
	close(work)
	wg.Wait()
	out.streams = ok
	return out
}

// measureMem reads a process's memory after forcing a collection through
// its pprof endpoint (when it has one) and letting RSS settle.
func measureMem(ctx context.Context, fs procFS, pid int, pprof string) (memFigures, error) {
	var m memFigures
	if pprof != "" {
		if err := readRuntimeMem(ctx, pprof, &m); err == nil {
			m.Runtime = true
		}
	}
	s, err := settledMem(ctx, fs, pid)
	m.memSample = s
	return m, err
}

// settledMem polls RSS until two readings 200 ms apart differ by under
// 64 KiB, for at most 5 s, so that pages still being touched or returned
// are not caught half way.
func settledMem(ctx context.Context, fs procFS, pid int) (memSample, error) {
	prev, err := fs.Mem(pid)
	if err != nil {
		return prev, err
	}
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return prev, ctx.Err()
		case <-tick.C:
		}
		cur, err := fs.Mem(pid)
		if err != nil {
			return prev, err
		}
		d := cur.RSS - prev.RSS
		prev = cur
		if d < 64<<10 && d > -64<<10 {
			break
		}
	}
	return prev, nil
}

// readRuntimeMem fetches the Go runtime's figures through a pprof server.
func readRuntimeMem(ctx context.Context, base string, m *memFigures) error {
	r, err := procs.ReadRuntime(ctx, base)
	if err != nil {
		return err
	}
	m.HeapLive, m.Stack, m.Goroutines = r.HeapLive, r.Stack, r.Goroutines
	return nil
}

// childMem sums the memory of pid's children.
func childMem(fs procFS, pid int) (memSample, int) {
	kids, _ := fs.Children(pid)
	var sum memSample
	for _, k := range kids {
		if m, err := fs.Mem(k); err == nil {
			sum.RSS += m.RSS
			sum.PSS += m.PSS
		}
	}
	return sum, len(kids)
}
