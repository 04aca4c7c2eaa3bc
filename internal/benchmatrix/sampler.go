package benchmatrix

import (
	"context"
	"os"
	"time"
)

// Roles whose CPU time the benchmark accounts separately.
const (
	roleRelay     = "relay"
	roleAgent     = "agent"
	roleServer    = "server"    // the MCP server: HTTP fixture, or the stdio children
	roleGenerator = "generator" // this process: the load generator
)

// role is a set of processes whose CPU time is summed: a function because
// the stdio children of an agent come and go between samples.
type role struct {
	name string
	pids func() []int
}

func pidsOf(pids ...int) func() []int { return func() []int { return pids } }

// childrenOf lists the children of pid at each call.
func childrenOf(fs procFS, pid int) func() []int {
	return func() []int {
		c, _ := fs.Children(pid)
		return c
	}
}

// sampler takes CPU snapshots of a fixed list of roles.
type sampler struct {
	fs    procFS
	roles []role
}

type snapshot struct {
	at    time.Time
	cpu   []map[int]cpuSample // by role index, then pid
	sys   sysCPU
	sysOK bool
}

func (s *sampler) take() snapshot {
	snap := snapshot{at: time.Now(), cpu: make([]map[int]cpuSample, len(s.roles))}
	for i, r := range s.roles {
		m := make(map[int]cpuSample)
		for _, pid := range r.pids() {
			if c, err := s.fs.CPU(pid); err == nil {
				m[pid] = c
			}
		}
		snap.cpu[i] = m
	}
	sys, err := s.fs.System()
	snap.sys, snap.sysOK = sys, err == nil
	return snap
}

// windowCPU is the CPU used between two snapshots.
type windowCPU struct {
	Elapsed time.Duration
	ByRole  map[string]time.Duration
	// ByRoleStat is the same from utime+stime alone (10 ms ticks), a
	// cross-check of ByRole.
	ByRoleStat map[string]time.Duration
	// Machine-wide busy and total CPU time (all CPUs) in the window, from
	// /proc/stat; zero when unavailable.
	SysBusy  time.Duration
	SysTotal time.Duration
}

// delta sums, per role, the CPU each process used between a and b. A
// process that appeared after a counts in full; one that exited before b
// is lost (the stdio children live for the whole measured window).
func (s *sampler) delta(a, b snapshot) windowCPU {
	w := windowCPU{Elapsed: b.at.Sub(a.at), ByRole: make(map[string]time.Duration, len(s.roles)),
		ByRoleStat: make(map[string]time.Duration, len(s.roles))}
	for i, r := range s.roles {
		var sum, stat time.Duration
		for pid, cb := range b.cpu[i] {
			sum += cpuDelta(a.cpu[i][pid], cb)
			stat += cb.Stat - a.cpu[i][pid].Stat
		}
		w.ByRole[r.name] = sum
		w.ByRoleStat[r.name] = stat
	}
	if a.sysOK && b.sysOK {
		w.SysBusy = b.sys.Busy() - a.sys.Busy()
		w.SysTotal = b.sys.Total() - a.sys.Total()
	}
	return w
}

// Ours is the CPU of every role together.
func (w windowCPU) Ours() time.Duration {
	var sum time.Duration
	for _, d := range w.ByRole {
		sum += d
	}
	return sum
}

// measureWindow takes a snapshot when warm-up ends (warmup after the time
// received on started) and another when the measured phase ends
// (duration later), calling atStart (if set) right after the first. It
// returns false if ctx ends first.
func (s *sampler) measureWindow(ctx context.Context, started <-chan time.Time, warmup, duration time.Duration, atStart func()) (windowCPU, bool) {
	var t0 time.Time
	select {
	case t0 = <-started:
	case <-ctx.Done():
		return windowCPU{}, false
	}
	if !sleepUntil(ctx, t0.Add(warmup)) {
		return windowCPU{}, false
	}
	a := s.take()
	if atStart != nil {
		atStart()
	}
	if !sleepUntil(ctx, t0.Add(warmup+duration)) {
		return windowCPU{}, false
	}
	return s.delta(a, s.take()), true
}

// sleepUntil waits for the wall clock to reach t; false if ctx ends first.
func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func selfRole() role { return role{name: roleGenerator, pids: pidsOf(os.Getpid())} }
