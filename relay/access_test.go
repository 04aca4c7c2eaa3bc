package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuf is a log destination safe for concurrent writers.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// accessLines returns the access lines logged so far, decoded.
func (s *syncBuf) accessLines(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(s.String()), "\n") {
		var m map[string]any
		if line == "" || json.Unmarshal([]byte(line), &m) != nil || m["msg"] != accessMsg {
			continue
		}
		out = append(out, m)
	}
	return out
}

// newAccessRelay is a relay (fast path and net/http) in front of an agent
// answering every exchange with a JSON-RPC result, logging JSON at level.
func newAccessRelay(t testing.TB, level slog.Level, w io.Writer) string {
	t.Helper()
	ln := &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
	agents := &pipeAgents{servers: map[string][]string{"dc1": {"notes", "wiki"}}, ln: ln}
	agentSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	})}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = agentSrv.Serve(ln)
	}()
	h, err := NewHandler(Config{
		Agents:      closingAgents{agents},
		KnownAgents: []string{"dc1"},
		Clients: []Client{
			{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/*"}},
			{Name: "wikionly", TokenSHA256: hash("wiki-token"), Allow: []string{"*/wiki"}},
			{Name: "throttled", TokenSHA256: hash("slow-token"), Allow: []string{"dc1/*"}, Rate: 0.001, Burst: 1},
		},
		Logger: slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})),
	})
	require.NoError(t, err)
	addr, _ := startFront(t, h, nil)
	t.Cleanup(func() {
		_ = agentSrv.Close()
		<-served
	})
	return "http://" + addr
}

func TestAccessLine(t *testing.T) {
	logs := &syncBuf{}
	base := newAccessRelay(t, slog.LevelInfo, logs)
	send := func(path, token, body string, chunked bool) int {
		// A connection each: one handed to net/http stays there.
		c := &http.Client{Transport: &http.Transport{}}
		defer c.CloseIdleConnections()
		var rd io.Reader = strings.NewReader(body)
		if chunked {
			rd = io.MultiReader(strings.NewReader(body)) // no length: chunked, net/http's path
		}
		req, err := http.NewRequest(http.MethodPost, base+path, rd)
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := c.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	call := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"method":"nope"}}}`
	require.Equal(t, 200, send("/dc1/notes/mcp", "ci-token", call, false))
	require.Equal(t, 200, send("/dc1/notes/mcp", "ci-token", call, true))
	require.Equal(t, 401, send("/dc1/notes/mcp", "", call, false))
	require.Equal(t, 401, send("/dc1/notes/mcp", "wrong-token", call, false))
	require.Equal(t, 403, send("/dc1/notes/mcp", "wiki-token", call, false))
	require.Equal(t, 404, send("/nowhere", "ci-token", call, false))
	require.Equal(t, 404, send("/dc1/nosuch/mcp", "ci-token", call, false))
	require.Equal(t, 200, send("/dc1/wiki/mcp", "slow-token", call, false))
	require.Equal(t, 429, send("/dc1/wiki/mcp", "slow-token", call, false))

	resp, err := http.Get(base + "/healthz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)

	lines := logs.accessLines(t)
	require.Len(t, lines, 9, "%s (no line for /healthz)", logs)
	want := []struct {
		client, agent, server, method, reason, path string
		status                                      float64
	}{
		{"ci", "dc1", "notes", "tools/call", "", "fast", 200},
		{"ci", "dc1", "notes", "", "", "http", 200},
		{"", "dc1", "notes", "", "unauthorized", "http", 401},
		{"", "dc1", "notes", "", "unauthorized", "http", 401},
		{"wikionly", "dc1", "notes", "", "forbidden", "http", 403},
		{"", "", "/nowhere", "", "not_found", "http", 404},
		{"ci", "dc1", "nosuch", "", "unknown_server", "http", 404},
		{"throttled", "dc1", "wiki", "tools/call", "", "fast", 200},
		{"throttled", "dc1", "wiki", "", "rate_limited", "http", 429},
	}
	// The fast path logs once the answer is out, so a line may come after
	// the next exchange's: match them in any order.
	used := make([]bool, len(lines))
	for i, w := range want {
		var l map[string]any
		for j, c := range lines {
			if !used[j] && c["client"] == w.client && c["server"] == w.server && c["status"] == w.status && c["path"] == w.path {
				used[j], l = true, c
				break
			}
		}
		require.NotNil(t, l, "want %d (%+v) in %v", i, w, lines)
		require.Equal(t, "INFO", l["level"])
		require.Equal(t, w.agent, l["agent"], "line %d: %v", i, l)
		if w.method != "" {
			require.Equal(t, w.method, l["method"], "line %d: %v", i, l)
		} else {
			require.NotContains(t, l, "method", "line %d", i)
		}
		if w.reason != "" {
			require.Equal(t, w.reason, l["reason"], "line %d: %v", i, l)
		}
		require.Contains(t, l, "duration")
		require.Greater(t, l["bytes_out"].(float64), 0.0, "line %d: %v", i, l)
		if w.status == 200 {
			require.EqualValues(t, len(call), l["bytes_in"], "line %d: %v", i, l)
		}
	}
	for _, secret := range []string{"ci-token", "wrong-token", "wiki-token", "slow-token", "Bearer", "Authorization"} {
		require.NotContains(t, logs.String(), secret, "the log never holds a token")
	}
}

// At warn the access line is off, and costs nothing.
func TestAccessLineOffAboveInfo(t *testing.T) {
	logs := &syncBuf{}
	base := newAccessRelay(t, slog.LevelWarn, logs)
	c := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(c.CloseIdleConnections)
	resp, err := c.Post(base+"/dc1/notes/mcp", "application/json", strings.NewReader(`{}`))
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, 401, resp.StatusCode)
	require.Empty(t, logs.accessLines(t))
}

func TestPeekMethod(t *testing.T) {
	for _, tc := range []struct{ body, want string }{
		{`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`, "tools/call"},
		{` { "params" : {"method":"inner","a":[1,{"b":"]"}]}, "method" : "ping" }`, "ping"},
		{`{"id":"a\"method\":\"x","method":"initialize"}`, "initialize"},
		{`[{"method":"a"}]`, "batch"},
		{`{"method":"a\u0062"}`, ""},
		{`{"method":1}`, ""},
		{`{"id":1`, ""},
		{`not json`, ""},
		{``, ""},
		{`{"params":{"method":"inner"}}`, ""},
	} {
		require.Equal(t, tc.want, peekMethod([]byte(tc.body)), tc.body)
	}
}

// FuzzPeekMethod: never panics, and what it returns is a method
// encoding/json agrees with.
func FuzzPeekMethod(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`))
	f.Add([]byte(`{"params":{"method":"x"},"method":"y"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		got := peekMethod(b)
		if got == "" || got == "batch" {
			return
		}
		var v struct {
			Method *string `json:"method"`
		}
		if json.Unmarshal(b, &v) == nil && v.Method != nil && *v.Method != got && !strings.EqualFold(*v.Method, got) {
			t.Fatalf("peekMethod %q, encoding/json %q, body %q", got, *v.Method, b)
		}
	})
}

// BenchmarkAccessLine is one tools/call through the relay's fast path
// over a keep-alive connection, with the access line on (info) and off
// (warn), the log written as text to io.Discard.
// Run: go test -run '^$' -bench AccessLine -benchtime 5000x ./relay
func BenchmarkAccessLine(b *testing.B) {
	for _, lv := range []slog.Level{slog.LevelWarn, slog.LevelInfo} {
		b.Run("level="+lv.String(), func(b *testing.B) {
			base := newAccessRelay(b, lv, io.Discard)
			c := &http.Client{Transport: &http.Transport{}}
			defer c.CloseIdleConnections()
			const call = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
			b.ReportAllocs()
			for b.Loop() {
				req, _ := http.NewRequest(http.MethodPost, base+"/dc1/notes/mcp", strings.NewReader(call))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Authorization", "Bearer ci-token")
				resp, err := c.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatal(resp.StatusCode)
				}
			}
		})
	}
}

// BenchmarkLogAccess is the access line alone: what an exchange pays for
// it, written as text to io.Discard.
// Run: go test -run '^$' -bench LogAccess ./relay
func BenchmarkLogAccess(b *testing.B) {
	h := &Handler{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	a := &accessInfo{client: "ci", agent: "dc1", server: "notes", method: "tools/call", path: "fast", status: 200, in: 120, out: 342}
	b.ReportAllocs()
	for b.Loop() {
		a.start = time.Now()
		h.logAccess(context.Background(), a)
	}
}
