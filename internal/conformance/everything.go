package conformance

import (
	"bufio"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// bindLoopbackJS is preloaded (node --require) in front of server-everything,
// which binds every interface: it forces loopback and reports the bound
// address on an inherited pipe.
//
//go:embed testdata/bind-loopback.cjs
var bindLoopbackJS []byte

// EverythingStdioCommand returns the command line (argv) that runs
// server-everything over stdio with Node 22, for an agent config or
// exec.Command.
func EverythingStdioCommand() ([]string, error) {
	node, err := FindNode()
	if err != nil {
		return nil, err
	}
	js, err := FindEverythingJS()
	if err != nil {
		return nil, err
	}
	return []string{node, js, "stdio"}, nil
}

// EverythingServer is a running server-everything in streamableHttp mode,
// bound to 127.0.0.1.
type EverythingServer struct {
	// URL is its MCP endpoint, http://127.0.0.1:PORT/mcp.
	URL string

	cmd       *exec.Cmd
	tmp       string
	stderr    *tailBuffer
	waitDone  chan struct{}
	waitErr   error
	closeOnce sync.Once
}

// StartEverythingHTTP starts server-everything over Streamable HTTP on a free
// loopback port and returns once it listens. Its stderr is kept (the last
// 64 KiB) for errors; if logTo is not nil, it is copied there too. Close
// stops it.
func StartEverythingHTTP(ctx context.Context, logTo io.Writer) (*EverythingServer, error) {
	node, err := FindNode()
	if err != nil {
		return nil, err
	}
	js, err := FindEverythingJS()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "mcptun-everything-")
	if err != nil {
		return nil, fmt.Errorf("conformance: temp dir: %w", err)
	}
	preload := filepath.Join(tmp, "bind-loopback.cjs")
	if err := os.WriteFile(preload, bindLoopbackJS, 0o600); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("conformance: write preload: %w", err)
	}
	addrR, addrW, err := os.Pipe()
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("conformance: pipe: %w", err)
	}
	defer addrR.Close()

	es := &EverythingServer{tmp: tmp, stderr: &tailBuffer{max: 64 << 10}, waitDone: make(chan struct{})}
	cmd := exec.Command(node, "--require", preload, js, "streamableHttp")
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "PORT=0", "MCPTUN_LISTEN_FD=3", "HOME="+tmp)
	cmd.ExtraFiles = []*os.File{addrW} // fd 3
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stdout = io.Discard
	if logTo != nil {
		cmd.Stderr = io.MultiWriter(es.stderr, logTo)
	} else {
		cmd.Stderr = es.stderr
	}
	if err := cmd.Start(); err != nil {
		addrW.Close()
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("conformance: start server-everything: %w", err)
	}
	addrW.Close() // the child holds its copy
	es.cmd = cmd
	go func() {
		es.waitErr = cmd.Wait()
		close(es.waitDone)
	}()

	type line struct {
		s   string
		err error
	}
	got := make(chan line, 1)
	go func() {
		// Ends when the child writes its address or exits (closing fd 3);
		// addrR is closed on return either way.
		s, err := bufio.NewReader(addrR).ReadString('\n')
		got <- line{s, err}
	}()
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case l := <-got:
		if l.err != nil {
			es.Close()
			return nil, fmt.Errorf("conformance: server-everything exited before listening (%v): %s", l.err, es.stderr.String())
		}
		es.URL = "http://" + strings.TrimSpace(l.s) + "/mcp"
		return es, nil
	case <-startCtx.Done():
		es.Close()
		<-got // the pipe reports EOF once the child is gone
		return nil, fmt.Errorf("conformance: server-everything did not listen: %w: %s", startCtx.Err(), es.stderr.String())
	}
}

// Stderr returns the last 64 KiB the server wrote to stderr.
func (es *EverythingServer) Stderr() string { return es.stderr.String() }

// Close stops the server (SIGTERM, then SIGKILL after 5 s) and removes its
// temporary directory. It returns nil if the server was running until then.
func (es *EverythingServer) Close() error {
	var err error
	es.closeOnce.Do(func() {
		select {
		case <-es.waitDone:
			err = fmt.Errorf("conformance: server-everything had exited: %v: %s", es.waitErr, es.stderr.String())
		default:
			_ = syscall.Kill(-es.cmd.Process.Pid, syscall.SIGTERM)
			select {
			case <-es.waitDone:
			case <-time.After(5 * time.Second):
				_ = syscall.Kill(-es.cmd.Process.Pid, syscall.SIGKILL)
				<-es.waitDone
			}
		}
		if rmErr := os.RemoveAll(es.tmp); rmErr != nil {
			err = errors.Join(err, fmt.Errorf("conformance: remove %s: %w", es.tmp, rmErr))
		}
	})
	return err
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}
