//go:build unix

package mcpproxy

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// process is one stdio server child, leader of its own process group so
// that killing the group also ends whatever it started.
type process struct {
	cmd    *exec.Cmd
	pgid   int
	stdin  *os.File // write end
	stdout *os.File // read end
	stderr *os.File // read end

	mu     sync.Mutex
	exited bool        // reaped: the group may be gone, signal no more
	grace  *time.Timer // SIGKILL after KillGrace
}

// startProcess starts sc's command with pipes for stdin, stdout and stderr.
// The pipes are os.Pipe files rather than exec's copying goroutines, so
// writes can be interrupted by Close and reads bounded by deadlines.
func startProcess(sc ServerConfig) (*process, error) {
	cmd := exec.Command(sc.Command[0], sc.Command[1:]...)
	cmd.Env = childEnv(sc.Env)
	cmd.Dir = sc.Dir
	cmd.SysProcAttr = sysProcAttr()

	var files []*os.File
	closeAll := func() {
		for _, f := range files {
			f.Close()
		}
	}
	pipe := func() (r, w *os.File, err error) {
		r, w, err = os.Pipe()
		if err == nil {
			files = append(files, r, w)
		}
		return r, w, err
	}
	inR, inW, err := pipe()
	if err != nil {
		return nil, fmt.Errorf("stdin pipe: %w", err)
	}
	outR, outW, err := pipe()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("stdout pipe: %w", err)
	}
	errR, errW, err := pipe()
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("stderr pipe: %w", err)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	if err := cmd.Start(); err != nil {
		closeAll()
		return nil, fmt.Errorf("start %q: %w", sc.Command[0], err)
	}
	// The child holds its ends now; ours would keep the pipes open forever.
	inR.Close()
	outW.Close()
	errW.Close()
	return &process{cmd: cmd, pgid: cmd.Process.Pid, stdin: inW, stdout: outR, stderr: errR}, nil
}

// stop asks the child to exit (stdin closed, SIGTERM to the group) and
// kills the group after grace. It returns at once; wait reaps.
func (p *process) stop(grace time.Duration) {
	p.stdin.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited || p.grace != nil {
		return
	}
	_ = syscall.Kill(-p.pgid, syscall.SIGTERM)
	p.grace = time.AfterFunc(grace, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if !p.exited {
			_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
		}
	})
}

// wait reaps the child, then kills what is left of its process group:
// a grandchild must not outlive the session.
func (p *process) wait() error {
	err := p.cmd.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.grace != nil {
		p.grace.Stop()
	}
	// The group id cannot be reused while any member lives, so this reaches
	// only our stragglers (or nothing: ESRCH).
	_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
	p.exited = true
	return err
}

// exitReason describes how the child ended, for logs and client errors.
func exitReason(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			// By name: Signal().String() is "killed" for SIGKILL, which
			// made "killed by killed".
			if name := unix.SignalName(ws.Signal()); name != "" {
				return "killed by " + name
			}
			return fmt.Sprintf("killed by signal %d", int(ws.Signal()))
		}
		return fmt.Sprintf("exit status %d", ee.ExitCode())
	}
	if err != nil {
		return err.Error()
	}
	return "exit status 0"
}
