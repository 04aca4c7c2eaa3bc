package benchmatrix

import (
	"time"

	"github.com/mcptun/mcptun/internal/procs"
)

// The benchmark's child processes and their /proc accounting live in
// internal/procs, shared with the fault suite (internal/faults).

type process = procs.Process

// startProcess starts bin with args, its output appended to logPath.
func startProcess(name, logPath string, bin string, args ...string) (*process, error) {
	return procs.Start(name, logPath, nil, bin, args...)
}

// startProcessEnv is startProcess with env (NAME=value) added to the
// inherited environment.
func startProcessEnv(name, logPath string, env []string, bin string, args ...string) (*process, error) {
	return procs.Start(name, logPath, env, bin, args...)
}

type (
	procFS    = procs.FS
	memSample = procs.MemSample
	cpuSample = procs.CPUSample
	sysCPU    = procs.SysCPU
)

var hostProc = procs.Host

func cpuDelta(a, b cpuSample) time.Duration { return procs.CPUDelta(a, b) }
