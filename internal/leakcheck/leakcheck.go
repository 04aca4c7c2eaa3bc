// Package leakcheck finds what a test binary left behind when its tests
// are done: processes it started (however far they were reparented or
// whatever process group they moved to), sockets it still listens on, and
// goroutines (through goleak). TestMain calls Run in place of m.Run, so the
// check runs after failing tests too.
//
// Processes are recognised three ways: descendants of the test process (by
// parent PID), processes whose executable lies under the run's directory
// (the fixtures the test built there), and processes whose environment
// carries the run's TMPDIR (Run points TMPDIR at a directory of its own;
// the agent passes TMPDIR on to stdio servers, and npm, node and the
// shell pass it to theirs). A process that moved to its own process group
// and lost its parent is still found; another test binary's processes,
// with another TMPDIR, are not.
//
// Linux only (it reads /proc); elsewhere only goroutines are checked.
package leakcheck

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// Options tune Run.
type Options struct {
	// Setup runs after the run's directory exists and before the tests
	// (for building fixtures into Dir); a non-nil error stops the run.
	Setup func(dir string) error
	// Grace is how long leftovers may take to go away after the last
	// test (a child reaped a moment late). Default 5 s.
	Grace time.Duration
	// Goleak are extra goleak options (IgnoreTopFunction, ...).
	Goleak []goleak.Option
}

// Run makes the run's directory (its TMPDIR), calls Setup, runs the tests,
// then checks for leftovers. What it finds is printed, processes are
// killed, and the exit code is 1. It removes the directory and does not
// return.
func Run(m *testing.M, o Options) {
	os.Exit(run(m, o))
}

func run(m *testing.M, o Options) int {
	dir, err := os.MkdirTemp("", "leakcheck-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "leakcheck:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "tmp")
	if err := os.Mkdir(tmp, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "leakcheck:", err)
		return 1
	}
	// Every process this run starts inherits it: the mark Processes
	// looks for.
	if err := os.Setenv("TMPDIR", tmp); err != nil {
		fmt.Fprintln(os.Stderr, "leakcheck:", err)
		return 1
	}
	if o.Setup != nil {
		if err := o.Setup(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	code := m.Run()
	if err := Check(dir, o); err != nil {
		fmt.Fprintln(os.Stderr, "leakcheck: after the tests:", err)
		code = 1
	}
	return code
}

// Check reports the leftovers of the run whose directory is dir (see Run),
// waiting up to o.Grace for processes and sockets to go. Leftover
// processes are killed (after being reported), so one failed run does not
// leave them to the next.
func Check(dir string, o Options) error {
	if o.Grace == 0 {
		o.Grace = 5 * time.Second
	}
	var errs []error
	if runtime.GOOS == "linux" {
		deadline := time.Now().Add(o.Grace)
		var procs []Process
		var socks []string
		for {
			procs = Processes(dir)
			socks = Listening()
			if (len(procs) == 0 && len(socks) == 0) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		for _, p := range procs {
			errs = append(errs, fmt.Errorf("process left: %s", p))
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
		for _, s := range socks {
			errs = append(errs, fmt.Errorf("socket left listening: %s", s))
		}
	}
	if err := goleak.Find(o.Goleak...); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Process is a leftover process.
type Process struct {
	PID     int
	Why     string // descendant, executable, environment
	Cmdline string
}

func (p Process) String() string {
	return fmt.Sprintf("pid %d (%s): %s", p.PID, p.Why, p.Cmdline)
}

// Processes lists the live processes of the run whose directory is dir:
// descendants of this process, processes running an executable under
// dir, and processes whose TMPDIR is dir/tmp. Zombies are not counted
// (their parent reaps them, or init does).
func Processes(dir string) []Process {
	self := os.Getpid()
	parent := map[int]int{}
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		ppid, state, ok := stat(pid)
		if !ok || state == 'Z' || state == 'X' {
			continue
		}
		parent[pid] = ppid
		pids = append(pids, pid)
	}
	mark := []byte("TMPDIR=" + filepath.Join(dir, "tmp") + "\x00")
	var out []Process
	for _, pid := range pids {
		why := ""
		for p, n := parent[pid], 0; p > 1 && n < 64; p, n = parent[p], n+1 {
			if p == self {
				why = "descendant"
				break
			}
		}
		if why == "" {
			if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && strings.HasPrefix(exe, dir+"/") {
				why = "executable"
			}
		}
		if why == "" {
			if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err == nil && bytes.Contains(append([]byte{0}, env...), append([]byte{0}, mark...)) {
				why = "environment"
			}
		}
		if why == "" {
			continue
		}
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		out = append(out, Process{PID: pid, Why: why, Cmdline: strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))})
	}
	return out
}

// stat reads a process's parent and state from /proc/PID/stat.
func stat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses, so
	// cut at the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	return ppid, f[0][0], err == nil
}

// Listening lists the TCP sockets this process listens on and the UDP
// sockets it has bound, as "tcp 127.0.0.1:PORT" and the like.
func Listening() []string {
	mine := map[string]bool{} // socket inodes of this process
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		l, err := os.Readlink("/proc/self/fd/" + fd.Name())
		if err != nil {
			continue
		}
		if ino, ok := strings.CutPrefix(l, "socket:["); ok {
			mine[strings.TrimSuffix(ino, "]")] = true
		}
	}
	var out []string
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile("/proc/self/net/" + proto)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
			if len(f) < 10 || !mine[f[9]] {
				continue
			}
			// TCP: only listeners (0A); UDP: every bound socket (07,
			// "closed", is how unconnected UDP sockets show).
			if strings.HasPrefix(proto, "tcp") && f[3] != "0A" {
				continue
			}
			out = append(out, proto+" "+hexAddr(f[1]))
		}
	}
	slices.Sort(out)
	return out
}

// hexAddr turns /proc/net's "0100007F:1F90" into "127.0.0.1:8080" (IPv6
// left in hex: it names the socket well enough).
func hexAddr(s string) string {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return s
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return s
	}
	if len(host) == 8 {
		v, err := strconv.ParseUint(host, 16, 32)
		if err == nil {
			// Little-endian on the architectures Go's race detector runs on.
			return fmt.Sprintf("%d.%d.%d.%d:%d", byte(v), byte(v>>8), byte(v>>16), byte(v>>24), p)
		}
	}
	return fmt.Sprintf("[%s]:%d", host, p)
}
