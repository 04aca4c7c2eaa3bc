package procs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// ClockTick is the unit of the utime/stime fields of /proc/PID/stat. Linux
// fixes USER_HZ at 100 for every architecture's user-space ABI, whatever
// the kernel's internal HZ, so sysconf(_SC_CLK_TCK) is always 100 there.
const ClockTick = 10 * time.Millisecond

// FS reads process and machine accounting from a proc file system.
// Root is "/proc" except in tests.
type FS struct{ Root string }

var Host = FS{Root: "/proc"}

// Stat holds the fields of /proc/PID/stat that the benchmark uses.
type Stat struct {
	Comm    string
	State   byte
	PPID    int
	UTime   uint64 // clock ticks
	STime   uint64 // clock ticks
	Threads int
}

// CPU is utime+stime as a duration.
func (s Stat) CPU() time.Duration {
	return time.Duration(s.UTime+s.STime) * ClockTick
}

// ParseStat parses the contents of /proc/PID/stat. The command name is in
// parentheses and may itself hold spaces and parentheses, so the fields are
// counted from the last ')'.
func ParseStat(b []byte) (Stat, error) {
	var st Stat
	open := bytes.IndexByte(b, '(')
	cl := bytes.LastIndexByte(b, ')')
	if open < 0 || cl < open {
		return st, errors.New("stat: no (comm) field")
	}
	st.Comm = string(b[open+1 : cl])
	// After ")": state(3) ppid(4) pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime(14) stime(15) cutime cstime priority
	// nice num_threads(20) ...
	f := strings.Fields(string(b[cl+1:]))
	if len(f) < 18 {
		return st, fmt.Errorf("stat: %d fields after comm, want at least 18", len(f))
	}
	if len(f[0]) != 1 || !('A' <= f[0][0] && f[0][0] <= 'Z' || 'a' <= f[0][0] && f[0][0] <= 'z') {
		return st, fmt.Errorf("stat: state %q is not one letter", f[0])
	}
	st.State = f[0][0]
	var err error
	if st.PPID, err = strconv.Atoi(f[1]); err != nil {
		return st, fmt.Errorf("stat: ppid: %w", err)
	}
	if st.UTime, err = strconv.ParseUint(f[11], 10, 64); err != nil {
		return st, fmt.Errorf("stat: utime: %w", err)
	}
	if st.STime, err = strconv.ParseUint(f[12], 10, 64); err != nil {
		return st, fmt.Errorf("stat: stime: %w", err)
	}
	if st.Threads, err = strconv.Atoi(f[17]); err != nil {
		return st, fmt.Errorf("stat: num_threads: %w", err)
	}
	return st, nil
}

// ParseSchedstat returns the first field of /proc/PID/task/TID/schedstat:
// the nanoseconds the task has run on a CPU.
func ParseSchedstat(b []byte) (time.Duration, error) {
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, errors.New("schedstat: empty")
	}
	ns, err := strconv.ParseUint(f[0], 10, 63)
	if err != nil {
		return 0, fmt.Errorf("schedstat: run time: %w", err)
	}
	return time.Duration(ns), nil
}

// ParseKB finds "Key:   N kB" in a /proc/PID/status or smaps_rollup file
// and returns N*1024.
func ParseKB(b []byte, key string) (int64, error) {
	for line := range bytes.Lines(b) {
		k, v, ok := bytes.Cut(line, []byte{':'})
		if !ok || string(k) != key {
			continue
		}
		f := strings.Fields(string(v))
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("%s: %q is not \"N kB\"", key, strings.TrimSpace(string(v)))
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("%s: %q is not a size in kB", key, f[0])
		}
		return n * 1024, nil
	}
	return 0, fmt.Errorf("%s: not found", key)
}

// SysCPU is the machine-wide "cpu" line of /proc/stat, in clock ticks.
type SysCPU struct {
	User, Nice, System, Idle, IOWait, IRQ, SoftIRQ, Steal uint64
}

// Busy is the time spent running something, interrupts included.
func (s SysCPU) Busy() time.Duration {
	return time.Duration(s.User+s.Nice+s.System+s.IRQ+s.SoftIRQ) * ClockTick
}

// Total is every accounted tick, steal included.
func (s SysCPU) Total() time.Duration {
	return time.Duration(s.User+s.Nice+s.System+s.Idle+s.IOWait+s.IRQ+s.SoftIRQ+s.Steal) * ClockTick
}

// ParseSystemStat parses the aggregate "cpu " line of /proc/stat.
func ParseSystemStat(b []byte) (SysCPU, error) {
	var s SysCPU
	for line := range bytes.Lines(b) {
		f := strings.Fields(string(line))
		if len(f) == 0 || f[0] != "cpu" {
			continue
		}
		if len(f) < 9 {
			return s, fmt.Errorf("/proc/stat: cpu line has %d fields, want at least 9", len(f))
		}
		dst := []*uint64{&s.User, &s.Nice, &s.System, &s.Idle, &s.IOWait, &s.IRQ, &s.SoftIRQ, &s.Steal}
		for i, p := range dst {
			v, err := strconv.ParseUint(f[i+1], 10, 64)
			if err != nil {
				return s, fmt.Errorf("/proc/stat: cpu field %d: %w", i+1, err)
			}
			*p = v
		}
		return s, nil
	}
	return s, errors.New("/proc/stat: no aggregate cpu line")
}

// ParseChildren parses /proc/PID/task/TID/children: space-separated pids.
func ParseChildren(b []byte) ([]int, error) {
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("children: %q is not a pid", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// CPUSample is the CPU a process has used so far, by two accountings.
type CPUSample struct {
	// Sched sums the run time of the process's live threads in
	// nanoseconds (schedstat); it loses the time of threads that exited.
	Sched time.Duration
	// Stat is utime+stime of the whole thread group, dead threads
	// included, in 10 ms ticks.
	Stat time.Duration
}

// CPUDelta is the CPU used between two samples of one process: the precise
// schedstat figure, unless the coarse stat figure shows more than its
// rounding allows, which means threads exited and took their run time with
// them.
func CPUDelta(a, b CPUSample) time.Duration {
	sched, stat := b.Sched-a.Sched, b.Stat-a.Stat
	if sched < 0 || stat > sched+sched/20+3*ClockTick {
		return max(stat, 0)
	}
	return sched
}

func (p FS) pidDir(pid int) string { return filepath.Join(p.Root, strconv.Itoa(pid)) }

func (p FS) stat(pid int) (Stat, error) {
	b, err := os.ReadFile(filepath.Join(p.pidDir(pid), "stat"))
	if err != nil {
		return Stat{}, err
	}
	st, err := ParseStat(b)
	if err != nil {
		return st, fmt.Errorf("pid %d: %w", pid, err)
	}
	return st, nil
}

// CPU samples a process's CPU time.
func (p FS) CPU(pid int) (CPUSample, error) {
	var s CPUSample
	st, err := p.stat(pid)
	if err != nil {
		return s, err
	}
	s.Stat = st.CPU()
	tasks, err := os.ReadDir(filepath.Join(p.pidDir(pid), "task"))
	if err != nil {
		return s, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(p.pidDir(pid), "task", t.Name(), "schedstat"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		ns, err := ParseSchedstat(b)
		if err != nil {
			return s, fmt.Errorf("pid %d task %s: %w", pid, t.Name(), err)
		}
		s.Sched += ns
	}
	return s, nil
}

// MemSample is a process's memory, in bytes.
type MemSample struct {
	RSS int64 `json:"rss_bytes"` // VmRSS of /proc/PID/status
	PSS int64 `json:"pss_bytes"` // Pss of /proc/PID/smaps_rollup (0 if unavailable)
}

// Mem samples a process's resident memory.
func (p FS) Mem(pid int) (MemSample, error) {
	var m MemSample
	b, err := os.ReadFile(filepath.Join(p.pidDir(pid), "status"))
	if err != nil {
		return m, err
	}
	if m.RSS, err = ParseKB(b, "VmRSS"); err != nil {
		return m, fmt.Errorf("pid %d status: %w", pid, err)
	}
	if b, err = os.ReadFile(filepath.Join(p.pidDir(pid), "smaps_rollup")); err == nil {
		m.PSS, _ = ParseKB(b, "Pss")
	}
	return m, nil
}

// Children lists the live child processes of pid.
func (p FS) Children(pid int) ([]int, error) {
	tasks, err := os.ReadDir(filepath.Join(p.pidDir(pid), "task"))
	if err != nil {
		return nil, err
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(p.pidDir(pid), "task", t.Name(), "children"))
		if err != nil {
			continue
		}
		c, err := ParseChildren(b)
		if err != nil {
			return nil, fmt.Errorf("pid %d task %s: %w", pid, t.Name(), err)
		}
		out = append(out, c...)
	}
	return out, nil
}

// System samples the machine-wide CPU counters.
func (p FS) System() (SysCPU, error) {
	b, err := os.ReadFile(filepath.Join(p.Root, "stat"))
	if err != nil {
		return SysCPU{}, err
	}
	return ParseSystemStat(b)
}

// FDs counts the open descriptors of pid (entries of /proc/PID/fd).
func (p FS) FDs(pid int) (int, error) {
	ents, err := os.ReadDir(filepath.Join(p.pidDir(pid), "fd"))
	if err != nil {
		return 0, err
	}
	return len(ents), nil
}
