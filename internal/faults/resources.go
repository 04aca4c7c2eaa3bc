package faults

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/mcptun/mcptun/internal/procs"
)

// usage is one relay or agent's resources at rest (no load, sessions
// ended, the client's idle connections closed).
type usage struct {
	Process    string
	RSS        int64
	Goroutines int
	FDs        int
	Children   int   // agents: live child processes (stdio servers)
	Orphans    []int // stdio children alive before the fault, alive still, no longer the agent's
	Err        string
}

// measurement is every node's usage at one moment.
type measurement []usage

func (c *cluster) measure(ctx context.Context) measurement {
	var m measurement
	for _, n := range c.nodes() {
		u := usage{Process: n.role}
		pid := n.p.Pid()
		var errs []string
		if mem, err := procs.Host.Mem(pid); err == nil {
			u.RSS = mem.RSS
		} else {
			errs = append(errs, "rss: "+err.Error())
		}
		if fds, err := procs.Host.FDs(pid); err == nil {
			u.FDs = fds
		} else {
			errs = append(errs, "fds: "+err.Error())
		}
		if rt, err := procs.ReadRuntime(ctx, n.pprof); err == nil {
			u.Goroutines = rt.Goroutines
		} else {
			errs = append(errs, "goroutines: "+err.Error())
		}
		if n.role != "relay" {
			kids, _ := procs.Host.Children(pid)
			u.Children = len(kids)
		}
		u.Err = strings.Join(errs, "; ")
		m = append(m, u)
	}
	return m
}

// children snapshots each agent's child pids.
func (c *cluster) children() map[string][]int {
	out := make(map[string][]int)
	for _, a := range agentNames {
		out[a], _ = procs.Host.Children(c.agents[a].p.Pid())
	}
	return out
}

// orphans are the pids of before still alive and no longer their agent's
// child: a stdio server that outlived its agent.
func (c *cluster) orphans(before map[string][]int) map[string][]int {
	now := c.children()
	out := make(map[string][]int)
	for a, pids := range before {
		for _, pid := range pids {
			if slices.Contains(now[a], pid) {
				continue
			}
			if _, err := procs.Host.Mem(pid); err == nil { // alive (a zombie has no VmRSS)
				out[a] = append(out[a], pid)
			}
		}
	}
	return out
}

// Margins of "returned to baseline". Each pooled keep-alive connection
// (the agent's to the HTTP upstream, one per concurrent session at most)
// costs a descriptor and up to two goroutines, and the pool empties on an
// idle timeout rather than when the load stops; a process restarted by
// the fault starts with none. RSS moves with the Go heap's goal and the
// scavenger, which returns freed pages over minutes: within the margin
// it is noise, a leak of sessions or buffers is far above it (issue 11
// measured 21 → 248 MB).
func (o Options) margins() (goroutines, fds int, rss int64) {
	per := 2 * o.Workers // sessions per agent and server kind
	return 2*per + 6, per + 4, 16 << 20
}

func rssMargin(base int64) int64 { return max(16<<20, base/4) }

// settle waits, at most Settle, until every node is back within margin of
// base and no stdio child of before is alive, and returns the last
// measurement (with orphans filled in).
func (c *cluster) settle(ctx context.Context, base measurement, before map[string][]int) measurement {
	deadline := time.Now().Add(c.o.Settle)
	for {
		m := c.measure(ctx)
		orphans := c.orphans(before)
		for i := range m {
			m[i].Orphans = orphans[strings.TrimPrefix(m[i].Process, "agent ")]
		}
		ok := len(orphans) == 0
		for _, r := range compareWith(c.o, base, m) {
			if r.Failed() != "" {
				ok = false
			}
		}
		if ok || time.Now().After(deadline) || !sleepCtx(ctx, 250*time.Millisecond) {
			return m
		}
	}
}

// Resource is one process's usage before and after a fault.
type Resource struct {
	Process                           string
	RSSBefore, RSSAfter               int64
	GoroutinesBefore, GoroutinesAfter int
	FDsBefore, FDsAfter               int
	ChildrenBefore, ChildrenAfter     int
	Orphans                           []int
	goroutineMargin, fdMargin         int
	rssMargin                         int64
	err                               string
}

// Failed says which resource did not return ("" if all did).
func (r Resource) Failed() string {
	var why []string
	if r.err != "" {
		why = append(why, "not measured: "+r.err)
	}
	if r.RSSAfter > r.RSSBefore+r.rssMargin {
		why = append(why, fmt.Sprintf("RSS %s > %s+%s", mib(r.RSSAfter), mib(r.RSSBefore), mib(r.rssMargin)))
	}
	if r.GoroutinesAfter > r.GoroutinesBefore+r.goroutineMargin {
		why = append(why, fmt.Sprintf("goroutines %d > %d+%d", r.GoroutinesAfter, r.GoroutinesBefore, r.goroutineMargin))
	}
	if r.FDsAfter > r.FDsBefore+r.fdMargin {
		why = append(why, fmt.Sprintf("descriptors %d > %d+%d", r.FDsAfter, r.FDsBefore, r.fdMargin))
	}
	if r.ChildrenAfter > r.ChildrenBefore {
		why = append(why, fmt.Sprintf("children %d > %d", r.ChildrenAfter, r.ChildrenBefore))
	}
	if len(r.Orphans) > 0 {
		why = append(why, fmt.Sprintf("stdio children outlived their session: pids %v", r.Orphans))
	}
	return strings.Join(why, ", ")
}

func mib(b int64) string { return fmt.Sprintf("%.1fMiB", float64(b)/(1<<20)) }

func compareWith(o Options, base, after measurement) []Resource {
	g, f, _ := o.margins()
	var out []Resource
	for i, a := range after {
		b := base[i]
		r := Resource{Process: a.Process,
			RSSBefore: b.RSS, RSSAfter: a.RSS,
			GoroutinesBefore: b.Goroutines, GoroutinesAfter: a.Goroutines,
			FDsBefore: b.FDs, FDsAfter: a.FDs,
			ChildrenBefore: b.Children, ChildrenAfter: a.Children,
			Orphans:         a.Orphans,
			goroutineMargin: g, fdMargin: f, rssMargin: rssMargin(b.RSS),
			err: a.Err}
		if b.Err != "" {
			r.err = strings.TrimPrefix(r.err+"; before: "+b.Err, "; ")
		}
		out = append(out, r)
	}
	return out
}
