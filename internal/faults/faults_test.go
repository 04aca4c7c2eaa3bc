package faults

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestFaultsShort is the CI version of `make faults`: every fault once,
// a few seconds each, against the real binaries (built here without the
// race detector: the deployed processes are measured, not raced). It
// fails when a call is lost or runs twice, or a resource does not return.
func TestFaultsShort(t *testing.T) {
	if testing.Short() {
		t.Skip("the fault suite takes about a minute; `make faults` runs the full one")
	}
	bin := t.TempDir()
	for _, b := range []struct{ out, pkg string }{
		{"mcptun", "github.com/mcptun/mcptun/cmd/mcptun"},
		{"mcptest-server", "github.com/mcptun/mcptun/internal/mcptest/cmd/mcptest-server"},
	} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b.out), b.pkg)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "build %s: %s", b.pkg, out)
	}
	o := Short()
	if only := os.Getenv("MCPTUN_FAULTS"); only != "" {
		// A subset, comma-separated names as `faults -list` prints them.
		o.Faults = strings.Split(only, ",")
	}
	// The workspace (configs, every process's log, the nonce log) is
	// kept when the test fails, for the post-mortem.
	dir, err := os.MkdirTemp("", "mcptun-faults-")
	require.NoError(t, err)
	o.Mcptun, o.Fixture, o.Dir = filepath.Join(bin, "mcptun"), filepath.Join(bin, "mcptest-server"), dir
	rows, err := Run(t.Context(), o)
	var report bytes.Buffer
	failed := WriteMarkdown(&report, o, rows)
	t.Logf("command: go test -count=1 -run TestFaultsShort ./internal/faults\n%s", report.String())
	require.NoError(t, err)
	if len(o.Faults) == 0 {
		require.Len(t, rows, len(FaultNames()))
	}
	if failed > 0 {
		t.Errorf("%d of %d faults broke a promise (table above); the processes' logs are kept in %s", failed, len(rows), o.Dir)
	}
	if !t.Failed() {
		_ = os.RemoveAll(dir)
	}
}

func TestClassifyStatus(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		kind   outcome
		label  string
	}{
		{503, `{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"x","data":{"reason":"agent_offline"}}}`, notRun, "503 agent_offline"},
		{502, `{"error":{"data":{"reason":"tunnel_error"}}}`, notRun, "502 tunnel_error"},
		{502, `{"error":{"data":{"reason":"upstream_outcome_unknown"}}}`, unknown, "502 upstream_outcome_unknown"},
		{503, `{"error":{"data":{"reason":"tunnel_outcome_unknown"}}}`, unknown, "503 tunnel_outcome_unknown"},
		{502, `{"error":{"code":-32000,"message":"server gone"}}`, notRun, "502 (no reason)"},
		{404, `{"error":{"code":-32001,"message":"session not found"}}`, sessionGone, "404 (no reason)"},
		{404, `{"error":{"data":{"reason":"session_not_found"}}}`, sessionGone, "404 session_not_found"},
		{404, `{"error":{"data":{"reason":"unknown_agent"}}}`, notRun, "404 unknown_agent"},
		{503, `{"error":{"data":{"reason":"relay_shutdown"}}}`, unknown, "503 relay_shutdown"},
		{503, `{"error":{"data":{"reason":"agent_shutdown"}}}`, unknown, "503 agent_shutdown"},
		{503, `{"error":{"data":{"reason":"relay_draining"}}}`, notRun, "503 relay_draining"},
		{429, `not json`, notRun, "429 (no reason)"},
	} {
		t.Run(tc.label, func(t *testing.T) {
			a := classifyStatus(tc.status, []byte(tc.body))
			assert.Equal(t, tc.kind, a.kind)
			assert.Equal(t, tc.label, a.label)
		})
	}
}

func TestClassifyTransport(t *testing.T) {
	// A real refused connection: a port that was just closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	_, refused := (&http.Client{Transport: tr}).Post("http://"+addr+"/mcp", "application/json", strings.NewReader("{}"))
	require.Error(t, refused)

	// A real connection cut after the request was read.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.ReadAll(r.Body)
		c, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			c.Close()
		}
	}))
	defer srv.Close()
	_, cut := (&http.Client{Transport: tr}).Post(srv.URL, "application/json", strings.NewReader("{}"))
	require.Error(t, cut)

	for _, tc := range []struct {
		name     string
		err      error
		deadline bool
		kind     outcome
	}{
		{"connection refused", refused, false, notRun},
		{"cut after sending", cut, false, unknown},
		{"deadline passed", context.DeadlineExceeded, true, lost},
		{"bare ECONNREFUSED", fmt.Errorf("post: %w", syscall.ECONNREFUSED), false, notRun},
		{"other", errors.New("tls: bad record"), false, unknown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.kind, classifyTransport(tc.err, tc.deadline).kind, "%v", tc.err)
		})
	}
}

func TestCheckResult(t *testing.T) {
	for _, tc := range []struct{ msg, want string }{
		{`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"recorded n-1"}]}}`, ""},
		{`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"recorded n-2"}]}}`, "200 wrong result"},
		{`{"jsonrpc":"2.0","id":1,"result":{"isError":true,"content":[]}}`, "200 tool error"},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":-32603,"message":"x"}}`, "200 JSON-RPC error -32603"},
		{`{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"data":{"reason":"server_gone"}}}`, "200 JSON-RPC error -32000 server_gone"},
		{`{"jsonrpc":"2.0","id":1}`, "200 without result"},
		{`<html>`, "200, not JSON-RPC"},
	} {
		assert.Equal(t, tc.want, checkResult([]byte(tc.msg), "n-1"), tc.msg)
	}
}

func TestReadMessageSSE(t *testing.T) {
	body := "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n" +
		"data: {\"jsonrpc\":\"2.0\",\"id\":1,\n" + "data: \"result\":{}}\n\n"
	resp := &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: io.NopCloser(strings.NewReader(body))}
	msg, err := readMessage(resp)
	require.NoError(t, err)
	assert.Equal(t, `{"jsonrpc":"2.0","id":1,"result":{}}`, string(msg))

	resp = &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"text/event-stream"}}, Body: io.NopCloser(strings.NewReader(": ping\n\n"))}
	_, err = readMessage(resp)
	assert.Error(t, err, "a stream that ends without the answer")
}

func TestTally(t *testing.T) {
	results := []callResult{
		{nonce: "p-a-0", kind: answered},
		{nonce: "p-a-1", kind: answered, history: []string{"502 tunnel_error"}},
		{nonce: "p-a-2", kind: answered},
		{nonce: "p-a-3", kind: notRun, label: "503 agent_offline"},
		{nonce: "p-a-4", kind: notRun, label: "503 agent_offline"},
		{nonce: "p-a-5", kind: unknown, label: "502 upstream_outcome_unknown"},
		{nonce: "p-a-6", kind: lost, label: "no answer", took: 20 * time.Second},
		{nonce: "p-a-7", kind: answered, label: "200 tool error"},
	}
	counts := map[string]int{"p-a-0": 1, "p-a-1": 2, "p-a-4": 1, "p-a-5": 1, "p-a-7": 1}
	var r Row
	r.tally(results, counts)
	assert.Equal(t, 8, r.Calls)
	assert.Equal(t, 3, r.OK)
	assert.Equal(t, 1, r.Twice)
	assert.Equal(t, 1, r.Phantom, "p-a-2 answered OK and never ran")
	assert.Equal(t, 1, r.RanAfter, "p-a-4 was given up on 'did not run' and had run")
	assert.Equal(t, 1, r.Lost)
	assert.Equal(t, 20*time.Second, r.Slowest)
	assert.Equal(t, map[string]int{"gave up: 503 agent_offline": 2, "200 tool error": 1}, r.Errors)
	assert.Equal(t, map[string]int{"502 upstream_outcome_unknown": 1}, r.Unknown)
	assert.Contains(t, strings.Join(r.Suspects, "\n"), "p-a-1 ran 2×; client saw: 502 tunnel_error → ok")
	assert.Equal(t, "a ×2 → b → a", runs([]string{"a", "a", "b", "a"}))
	assert.Contains(t, r.Failed(), "1 lost")
	assert.Contains(t, r.Failed(), "1 executed twice")
	assert.Contains(t, r.Failed(), "1 answered OK but never ran")
	assert.Contains(t, r.Failed(), "1 answered as not run had run")
}

func TestReadNonces(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nonces.log")
	require.NoError(t, os.WriteFile(p, []byte("f1r1-a-0 7\nf1r1-a-1 7\nf1r1-a-1 8\nf1r10-a-0 7\nf11r1-a-0 7\n"), 0o600))
	got, err := readNonces(p, "f1r1-")
	require.NoError(t, err)
	assert.Equal(t, map[string]int{"f1r1-a-0": 1, "f1r1-a-1": 2}, got)
	_, err = readNonces(filepath.Join(t.TempDir(), "missing"), "x")
	assert.ErrorContains(t, err, "nonce log")
}

func TestResourceFailed(t *testing.T) {
	o := Short()
	g, f, _ := o.margins()
	base := measurement{{Process: "relay", RSS: 20 << 20, Goroutines: 30, FDs: 15}, {Process: "agent quic", RSS: 20 << 20, Goroutines: 20, FDs: 12}}
	for _, tc := range []struct {
		name  string
		after usage
		want  string
	}{
		{"same", usage{Process: "agent quic", RSS: 20 << 20, Goroutines: 20, FDs: 12}, ""},
		{"within margins", usage{Process: "agent quic", RSS: 35 << 20, Goroutines: 20 + g, FDs: 12 + f}, ""},
		{"goroutines", usage{Process: "agent quic", RSS: 20 << 20, Goroutines: 21 + g, FDs: 12}, "goroutines"},
		{"descriptors", usage{Process: "agent quic", RSS: 20 << 20, Goroutines: 20, FDs: 13 + f}, "descriptors"},
		{"rss", usage{Process: "agent quic", RSS: 37 << 20, Goroutines: 20, FDs: 12}, "RSS"},
		{"children", usage{Process: "agent quic", RSS: 20 << 20, Goroutines: 20, FDs: 12, Children: 1}, "children 1 > 0"},
		{"orphans", usage{Process: "agent quic", RSS: 20 << 20, Goroutines: 20, FDs: 12, Orphans: []int{42}}, "outlived"},
		{"unmeasured", usage{Process: "agent quic", Err: "rss: no such process"}, "not measured"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := compareWith(o, base, measurement{base[0], tc.after})
			assert.Empty(t, r[0].Failed())
			if tc.want == "" {
				assert.Empty(t, r[1].Failed())
			} else {
				assert.Contains(t, r[1].Failed(), tc.want)
			}
		})
	}
}

func TestWriteMarkdown(t *testing.T) {
	rows := []Row{
		{Fault: "relay SIGKILL+restart", Round: 1, Calls: 10, OK: 9, Errors: map[string]int{"gave up: 503 agent_offline": 1},
			Unknown: map[string]int{}, Recovered: 1500 * time.Millisecond,
			Resources: []Resource{{Process: "relay", RSSBefore: 20 << 20, RSSAfter: 21 << 20, rssMargin: 16 << 20}}},
		{Fault: "agent(quic) SIGKILL", Round: 1, Calls: 5, OK: 4, Twice: 1, Errors: map[string]int{},
			Unknown: map[string]int{"transport: EOF|x": 1}, Suspects: []string{"x ran 2×; client saw: 502 a|b → ok"}},
	}
	var b bytes.Buffer
	failed := WriteMarkdown(&b, Short(), rows)
	assert.Equal(t, 1, failed)
	out := b.String()
	assert.Contains(t, out, "| relay SIGKILL+restart | 1 | 10 | 9 | gave up: 503 agent_offline ×1 | – | 0 | 0 | 0s | 1.5s | ok |")
	assert.Contains(t, out, "**FAIL**: 1 executed twice")
	assert.Contains(t, out, "- agent(quic) SIGKILL, round 1: x ran 2×; client saw: 502 a|b → ok")
	assert.Contains(t, out, `transport: EOF\|x ×1`, "pipes in cells are escaped")
	assert.Contains(t, out, "1 of 2 fault rounds failed.")
}

// inFlight reports the pid of a call matching its pattern that starts
// after it was called (not one already in the log), reading lines whole
// however the appends are split.
func TestInFlight(t *testing.T) {
	c := &cluster{nonceLog: filepath.Join(t.TempDir(), "nonces.log")}
	require.NoError(t, os.WriteFile(c.nonceLog, []byte("f0r1-quic.stdio-w1-0 11\n"), 0o600))
	f, err := os.OpenFile(c.nonceLog, os.O_WRONLY|os.O_APPEND, 0)
	require.NoError(t, err)
	defer f.Close()
	stop := make(chan struct{})
	wrote := make(chan error, 1)
	go func() { // the load: other calls, and ours written in pieces
		defer close(wrote)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for i := 1; ; i++ {
			for _, piece := range []string{fmt.Sprintf("f0r1-tcp.stdio-w3-%d 12\nf0r1-qu", i), "ic.stdio-w1-", fmt.Sprintf("%d 13\n", i)} {
				if _, err := f.WriteString(piece); err != nil {
					wrote <- err
					return
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}
	}()
	pid, err := c.inFlight(t.Context(), "-quic.stdio-")
	close(stop)
	require.NoError(t, <-wrote)
	require.NoError(t, err)
	assert.Equal(t, 13, pid, "the quic call's pid, not the one already logged (11) nor the tcp one (12)")
}
