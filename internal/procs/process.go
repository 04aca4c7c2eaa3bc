package procs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long a process gets to exit after SIGTERM before its
// whole process group is killed.
const stopGrace = 10 * time.Second

// Process is a child process of a harness (benchmark, fault suite): relay,
// agent or fixture. Its output goes to a log file and is kept in memory
// (bounded) so that startup lines can be waited for and failures quoted.
type Process struct {
	name string
	cmd  *exec.Cmd

	mu      sync.Mutex
	lines   []string // the first maxKeptLines lines
	tail    []string // the last lines, once lines is full
	changed chan struct{}

	done chan struct{} // closed when the process has exited and output is drained
	err  error         // Wait's error, set before done closes
}

const maxKeptLines = 200

// Start starts bin with args, its output appended to logPath and env
// (NAME=value) added to the inherited environment. The process gets its
// own process group, and SIGKILL if the harness dies.
func Start(name, logPath string, env []string, bin string, args ...string) (*Process, error) {
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("start %s: log: %w", name, err)
	}
	p := &Process{name: name, changed: make(chan struct{}), done: make(chan struct{})}
	p.cmd = exec.Command(bin, args...)
	if len(env) > 0 {
		p.cmd.Env = append(os.Environ(), env...)
	}
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	pr, pw, err := os.Pipe()
	if err != nil {
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	if err := p.cmd.Start(); err != nil {
		pr.Close()
		pw.Close()
		lf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pw.Close() // the child holds its own copy
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		defer lf.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(lf, line)
			p.add(line)
		}
		_, _ = io.Copy(lf, pr)
		pr.Close()
	}()
	go func() {
		err := p.cmd.Wait()
		<-scanned
		p.err = err
		close(p.done)
	}()
	return p, nil
}

// Pid is the process id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Name is the name given to Start.
func (p *Process) Name() string { return p.name }

// Done is closed once the process has exited and its output is drained.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process (not its group).
func (p *Process) Signal(sig syscall.Signal) error {
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, p.name, err)
	}
	return nil
}

// Kill sends SIGKILL to the process's whole group (its children too, as a
// crash of the machine would take them) and waits for the exit. A process
// that has already exited is left as it is.
func (p *Process) Kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

func (p *Process) add(line string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.lines) < maxKeptLines {
		p.lines = append(p.lines, line)
	} else {
		p.tail = append(p.tail, line)
		if len(p.tail) > 2*maxKeptLines {
			p.tail = append(p.tail[:0], p.tail[len(p.tail)-maxKeptLines:]...)
		}
	}
	close(p.changed)
	p.changed = make(chan struct{})
}

// Output returns the kept output for an error report, its last lines if long.
func (p *Process) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	all := append(append([]string(nil), p.lines...), p.tail...)
	if len(all) > 30 {
		all = all[len(all)-30:]
	}
	return strings.Join(all, "\n")
}

// WaitLine waits until an output line matches re and returns its
// submatches. It fails if the Process exits first or timeout passes.
func (p *Process) WaitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	seen := 0
	for {
		p.mu.Lock()
		lines, changed := p.lines, p.changed
		p.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if m := re.FindStringSubmatch(lines[seen]); m != nil {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-p.done:
			p.mu.Lock()
			more := len(p.lines) > seen
			p.mu.Unlock()
			if !more {
				return nil, fmt.Errorf("%s exited (%v) before printing a line matching %q; output:\n%s", p.name, p.err, re, p.Output())
			}
		case <-ctx.Done():
			return nil, fmt.Errorf("%s printed no line matching %q within %s: %w; output:\n%s", p.name, re, timeout, ctx.Err(), p.Output())
		}
	}
}

// Exited reports whether the Process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM and waits for the exit; after stopGrace it kills the
// Process group. It returns an error if the Process had to be killed or
// had already died on its own.
func (p *Process) Stop() error {
	select {
	case <-p.done:
		return fmt.Errorf("%s had exited on its own: %v", p.name, p.err)
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(stopGrace)
	defer t.Stop()
	select {
	case <-p.done:
		var ee *exec.ExitError
		if p.err != nil && !(errors.As(p.err, &ee) && ee.ExitCode() == 0) {
			// A clean SIGTERM exit is code 0 for our binaries.
			return fmt.Errorf("%s: exit after SIGTERM: %w", p.name, p.err)
		}
		return nil
	case <-t.C:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, stopGrace)
	}
}
