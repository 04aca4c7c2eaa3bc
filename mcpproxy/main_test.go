//go:build unix

package mcpproxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/leakcheck"
)

// testServerBin is the fixture stdio MCP server (internal/testserver),
// built once for the package's tests.
var testServerBin string

// TestMain builds the fixture into the run's directory, runs the tests,
// and then, passed or failed, fails the run if a stdio child (in a process
// group of its own, so no group kill reaches it), a listening socket or a
// goroutine is left (see leakcheck).
func TestMain(m *testing.M) {
	leakcheck.Run(m, leakcheck.Options{Setup: func(dir string) error {
		testServerBin = filepath.Join(dir, "testserver")
		build := exec.Command("go", "build", "-o", testServerBin, "./internal/testserver")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("building the test server: %w", err)
		}
		return nil
	}})
}

// logSink is a slog handler that keeps records for assertions.
type logSink struct {
	mu      sync.Mutex
	records []string
}

func (l *logSink) Enabled(context.Context, slog.Level) bool { return true }
func (l *logSink) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	l.mu.Lock()
	l.records = append(l.records, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logSink) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &attrSink{l, attrs}
}
func (l *logSink) WithGroup(string) slog.Handler { return l }

func (l *logSink) find(substrs ...string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
next:
	for _, r := range l.records {
		for _, s := range substrs {
			if !strings.Contains(r, s) {
				continue next
			}
		}
		return r
	}
	return ""
}

type attrSink struct {
	l     *logSink
	attrs []slog.Attr
}

func (a *attrSink) Enabled(context.Context, slog.Level) bool { return true }
func (a *attrSink) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(a.attrs...)
	return a.l.Handle(ctx, r)
}
func (a *attrSink) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &attrSink{a.l, append(append([]slog.Attr{}, a.attrs...), attrs...)}
}
func (a *attrSink) WithGroup(string) slog.Handler { return a }

type bridge struct {
	h    *Handler
	srv  *httptest.Server
	url  string // the stdio server's endpoint
	logs *logSink
}

// newBridge serves the fixture as server "ts" (and extra servers) on a
// loopback httptest server; cleanup closes both and checks that no child
// is left.
func newBridge(t *testing.T, opts Options, extra ...ServerConfig) *bridge {
	t.Helper()
	return newBridgeLimits(t, opts, Limits{}, extra...)
}

// newBridgeLimits is newBridge with limits for server "ts".
func newBridgeLimits(t *testing.T, opts Options, lim Limits, extra ...ServerConfig) *bridge {
	t.Helper()
	logs := &logSink{}
	if opts.Logger == nil {
		opts.Logger = slog.New(logs)
	}
	servers := append([]ServerConfig{{Name: "ts", Command: []string{testServerBin}, Env: map[string]string{"FIXTURE_VAR": "given"}, Limits: lim}}, extra...)
	h, err := NewHandler(servers, opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := serveLikeAgent(t, h)
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return &bridge{h: h, srv: srv, url: srv.URL + "/ts/mcp", logs: logs}
}

// serveLikeAgent serves h on loopback the way the agent serves tunnel
// streams: a ConnServer takes every connection, answers URL servers' exchanges
// itself and hands the rest to the (httptest) http.Server. So every test
// here runs through both paths.
func serveLikeAgent(t testing.TB, h *Handler) *httptest.Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cs := httpfwd.NewConnServer(h.ServeConn, ln.Addr())
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = cs.Handoff()
	srv.Start()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cs.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = cs.Close()
		<-done
		srv.Close()
	})
	return srv
}

// do sends a request with the usual MCP headers; hdr adds or (with "")
// removes headers.
func (b *bridge) do(t *testing.T, method, sid, body string, hdr ...string) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
	} else {
		req.Header.Set("Accept", "text/event-stream")
	}
	if sid != "" {
		req.Header.Set("Mcp-Session-Id", sid)
		req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func readBody(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

const initBody = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"raw","version":"1"}}}`

// initialize starts a session with raw HTTP and returns its id.
func (b *bridge) initialize(t *testing.T) string {
	t.Helper()
	resp := b.do(t, http.MethodPost, "", initBody)
	body := readBody(t, resp)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" || !strings.Contains(body, `"protocolVersion"`) {
		t.Fatalf("initialize: %d session %q body %s", resp.StatusCode, sid, body)
	}
	resp = b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	if got := readBody(t, resp); resp.StatusCode != http.StatusAccepted || got != "" {
		t.Fatalf("initialized: %d %q", resp.StatusCode, got)
	}
	return sid
}

// status sends a request and returns its status and body.
func (b *bridge) status(t *testing.T, method, sid, body string, hdr ...string) (int, string) {
	t.Helper()
	resp := b.do(t, method, sid, body, hdr...)
	return resp.StatusCode, readBody(t, resp)
}

// call sends a request and returns the body of a JSON answer.
func (b *bridge) call(t *testing.T, sid, body string) string {
	t.Helper()
	resp := b.do(t, http.MethodPost, sid, body)
	out := readBody(t, resp)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST %s: %d %s", body, resp.StatusCode, out)
	}
	return out
}

type sseEvent struct {
	id, data string
}

// sseReader reads events from an SSE body.
type sseReader struct {
	br    *bufio.Reader
	retry string
}

func newSSEReader(r io.Reader) *sseReader { return &sseReader{br: bufio.NewReaderSize(r, 1<<20)} }

// next returns the next event, comments skipped; priming events (id, empty
// data) are returned with empty data.
func (s *sseReader) next() (sseEvent, error) {
	var ev sseEvent
	var has bool
	for {
		line, err := s.br.ReadString('\n')
		if err != nil {
			return ev, err
		}
		line = strings.TrimRight(line, "\r\n")
		switch {
		case line == "":
			if has {
				return ev, nil
			}
		case strings.HasPrefix(line, ":"):
		case strings.HasPrefix(line, "retry:"):
			s.retry = strings.TrimSpace(line[6:])
		case strings.HasPrefix(line, "id:"):
			ev.id, has = strings.TrimPrefix(line[3:], " "), true
		case strings.HasPrefix(line, "data:"):
			ev.data += strings.TrimPrefix(line[5:], " ")
			has = true
		}
	}
}

// nextData skips priming events.
func (s *sseReader) nextData(t *testing.T) sseEvent {
	t.Helper()
	for {
		ev, err := s.next()
		if err != nil {
			t.Fatalf("reading SSE: %v", err)
		}
		if ev.data != "" {
			return ev
		}
	}
}

// processGone reports whether pid no longer runs (a zombie waiting for a
// reaper that is not us counts as gone).
func processGone(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) state ...: comm may hold spaces, the state follows the last ')'.
	s := string(stat)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
