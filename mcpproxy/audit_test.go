//go:build unix

package mcpproxy

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/audit"
)

// auditLines closes the trail and returns its lines, decoded, after
// checking the chain.
func auditLines(t *testing.T, l *audit.Log, path string) []map[string]any {
	t.Helper()
	require.NoError(t, l.Close())
	_, err := audit.Verify(path)
	require.NoError(t, err)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var out []map[string]any
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var m map[string]any
		require.NoError(t, json.Unmarshal(line, &m), "%s", line)
		out = append(out, m)
	}
	return out
}

func openAudit(t *testing.T, full bool) (*audit.Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(audit.Config{File: path, Agent: "dc1", FullArguments: full})
	require.NoError(t, err)
	t.Cleanup(func() { _ = l.Close() })
	return l, path
}

// find returns the first line whose fields have the given values.
func findLine(lines []map[string]any, kv ...string) map[string]any {
next:
	for _, l := range lines {
		for i := 0; i+1 < len(kv); i += 2 {
			if v, _ := l[kv[i]].(string); v != kv[i+1] {
				continue next
			}
		}
		return l
	}
	return nil
}

func TestAuditStdio(t *testing.T) {
	l, path := openAudit(t, false)
	// One exchange a second (burst 4): the fifth in a row is refused.
	b := newBridgeLimits(t, Options{Audit: l}, Limits{ConcurrentRequestsPerClient: 1})
	delete(b.h.table().limits, "ts")
	sid := b.initializeAs(t, "alice")
	out := b.callAs(t, sid, "alice", `{"jsonrpc":"2.0","id":"x-1","method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`)
	require.Contains(t, out, "hi")
	// A tool error is the server's.
	b.callAs(t, sid, "alice", `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"nosuch","arguments":{}}}`)
	// Refusals: another client's session (404), an unknown server (404),
	// a bad body (400).
	st, _ := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":3,"method":"tools/list"}`, as("mallory")...)
	require.Equal(t, http.StatusNotFound, st)
	resp, err := b.srv.Client().Post(b.srv.URL+"/nosuch/mcp", "application/json", strings.NewReader(`{}`))
	require.NoError(t, err)
	resp.Body.Close()
	st, _ = b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":4,"method":`, as("alice")...)
	require.Equal(t, http.StatusBadRequest, st)
	st, _ = b.status(t, http.MethodDelete, sid, "", as("alice")...)
	require.Equal(t, http.StatusNoContent, st)
	require.NoError(t, b.h.Close())

	lines := auditLines(t, l, path)
	init := findLine(lines, "method", "initialize")
	require.NotNil(t, init)
	require.Equal(t, "alice", init["client"])
	require.Equal(t, sid, init["session"], "initialize records the session it handed out")
	require.Equal(t, "ok", init["outcome"])
	call := findLine(lines, "method", "tools/call", "name", "echo")
	require.NotNil(t, call, "%v", lines)
	sum, err := audit.HashArguments([]byte(`{"text":"hi"}`))
	require.NoError(t, err)
	require.Equal(t, sum, call["arguments_sha256"])
	require.Nil(t, call["arguments"])
	require.Equal(t, "x-1", call["id"])
	require.Equal(t, "dc1", call["agent"])
	require.Equal(t, "ts", call["server"])
	require.Equal(t, sid, call["session"])
	require.EqualValues(t, 200, call["status"])
	require.Greater(t, call["bytes_in"].(float64), 50.0)
	require.Greater(t, call["bytes_out"].(float64), 20.0)
	require.Contains(t, call, "duration_ms")
	bad := findLine(lines, "name", "nosuch")
	require.Equal(t, "error", bad["outcome"], "%v", bad)
	foreign := findLine(lines, "client", "mallory")
	require.Equal(t, "refused", foreign["outcome"])
	require.Equal(t, "session_not_found", foreign["reason"])
	require.Equal(t, "tools/list", foreign["method"])
	unknown := findLine(lines, "server", "nosuch")
	require.Equal(t, "refused", unknown["outcome"])
	parse := findLine(lines, "reason", "parse_error")
	require.Equal(t, "refused", parse["outcome"], "%v", lines)
	del := findLine(lines, "http", "DELETE")
	require.Equal(t, "ok", del["outcome"])
	require.EqualValues(t, 204, del["status"])
}

// A body over what the audit keeps is recorded as unread: method, name
// and arguments unknown, its bytes counted.
func TestAuditBodyUnread(t *testing.T) {
	l, path := openAudit(t, false)
	b := newBridge(t, Options{Audit: l})
	b.h.auditMax = 64 << 10
	sid := b.initializeAs(t, "alice")
	huge := strings.Repeat("y", 100<<10)
	out := b.callAs(t, sid, "alice", `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"`+huge+`"}}}`)
	require.Contains(t, out, "yyy")
	require.NoError(t, b.h.Close())
	lines := auditLines(t, l, path)
	unread := lines[len(lines)-1]
	require.Equal(t, true, unread["body_unread"], "%v", unread)
	require.Nil(t, unread["method"])
	require.Equal(t, "ok", unread["outcome"])
	require.Greater(t, unread["bytes_in"].(float64), float64(100<<10))
}

// wireTap reads the answer whatever the sizes of the writes: chunked SSE
// and Content-Length JSON, after an interim 100.
func TestWireTap(t *testing.T) {
	ev := `{"jsonrpc":"2.0","id":3,"error":{"code":-32001,"message":"x","data":{"reason":"session_limit"}}}`
	sse := "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n" +
		"id: 1\ndata: " + ev + "\n\n"
	var chunked strings.Builder
	for _, part := range []string{sse[:20], sse[20:]} {
		chunked.WriteString(strconv.FormatInt(int64(len(part)), 16) + ";ext=1\r\n" + part + "\r\n")
	}
	chunked.WriteString("0\r\nX-Trailer: 1\r\n\r\n")
	for _, tc := range []struct {
		name, wire string
		sse        bool
		body       int
	}{
		{"chunked sse", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nMcp-Session-Id: s-9\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked.String(), true, len(sse)},
		{"json", "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nMcp-Session-Id: s-9\r\nContent-Length: " + strconv.Itoa(len(ev)) + "\r\n\r\n" + ev, false, len(ev)},
	} {
		for _, step := range []int{1, 7, 1 << 20} {
			aw := &auditWriter{}
			tap := &wireTap{aw: aw}
			for w := tc.wire; len(w) > 0; {
				n := min(step, len(w))
				tap.write([]byte(w[:n]))
				w = w[n:]
			}
			if !aw.sse {
				aw.noteMessage(aw.json)
			}
			require.Equal(t, tc.sse, aw.sse, "%s step %d", tc.name, step)
			require.EqualValues(t, tc.body, aw.n, "%s step %d", tc.name, step)
			require.Equal(t, "s-9", tap.session)
			require.Len(t, aw.answers, 1, "%s step %d", tc.name, step)
			require.Equal(t, answer{id: "3", isError: true, code: -32001, reason: "session_limit"}, aw.answers[0])
		}
	}
}

func (b *bridge) callAs(t *testing.T, sid, client, body string) string {
	t.Helper()
	st, out := b.status(t, http.MethodPost, sid, body, as(client)...)
	require.Equal(t, http.StatusOK, st, out)
	return out
}

func TestAuditRateLimitRefusal(t *testing.T) {
	l, path := openAudit(t, true)
	up := newUpstream(t)
	b := newBridge(t, Options{Audit: l}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp", Rate: 0.001, Burst: 1})
	url := b.srv.URL + "/up/mcp"
	post := func(body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set(ClientHeader, "bob")
		resp, err := b.srv.Client().Do(req)
		require.NoError(t, err)
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(out)
	}
	st, _ := post(initBody)
	require.Equal(t, http.StatusOK, st)
	st, _ = post(`{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}`)
	require.Equal(t, http.StatusTooManyRequests, st)
	require.NoError(t, b.h.Close())
	lines := auditLines(t, l, path)
	ref := findLine(lines, "name", "echo")
	require.NotNil(t, ref, "%v", lines)
	require.Equal(t, "refused", ref["outcome"])
	require.Equal(t, "rate_limited", ref["reason"])
	require.Equal(t, "bob", ref["client"])
	require.Equal(t, map[string]any{"text": "x"}, ref["arguments"], "arguments: full")
}

func TestAuditURLServer(t *testing.T) {
	l, path := openAudit(t, false)
	up := newUpstream(t)
	b := newBridge(t, Options{Audit: l}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})
	url := b.srv.URL + "/up/mcp"
	post := func(sid, body string) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set(ClientHeader, "carol")
		if sid != "" {
			req.Header.Set("Mcp-Session-Id", sid)
		}
		resp, err := b.srv.Client().Do(req)
		require.NoError(t, err)
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(out)
	}
	resp, _ := post("", initBody)
	sid := resp.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)
	post(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	_, out := post(sid, `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"progress","_meta":{"progressToken":"p"}}}`)
	require.Contains(t, out, "progress done")
	// A batch: a line per message (the upstream answers it as it likes).
	post(sid, `[{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}},{"jsonrpc":"2.0","id":7,"method":"resources/read","params":{"uri":"file:///x"}}]`)
	// The upstream's own error, read from the answer as it passed.
	post(sid, `{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"nosuch","arguments":{}}}`)
	// A large body (over what the fast path holds) goes through net/http.
	big := strings.Repeat("z", 2<<20)
	_, out = post(sid, `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":{"text":"`+big+`"}}}`)
	require.Contains(t, out, "zzz")
	require.NoError(t, b.h.Close())

	lines := auditLines(t, l, path)
	prog := findLine(lines, "name", "progress")
	require.NotNil(t, prog, "%v", lines)
	require.Equal(t, "ok", prog["outcome"])
	require.Equal(t, sid, prog["session"])
	require.Equal(t, "carol", prog["client"])
	b1 := findLine(lines, "name", "echo")
	require.EqualValues(t, 1, b1["batch_index"], "%v", b1)
	require.EqualValues(t, 2, b1["batch_size"])
	b2 := findLine(lines, "name", "file:///x")
	require.EqualValues(t, 2, b2["batch_index"], "%v", b2)
	require.Equal(t, "resources/read", b2["method"])
	nosuch := findLine(lines, "name", "nosuch")
	require.Equal(t, "error", nosuch["outcome"], "%v", nosuch)
	require.NotZero(t, nosuch["code"], "%v", nosuch)
	var large map[string]any
	for _, line := range lines {
		if line["id"] == 8.0 {
			large = line
		}
	}
	require.NotNil(t, large)
	require.Equal(t, "ok", large["outcome"], "%v", large)
	require.Greater(t, large["bytes_in"].(float64), float64(2<<20))

}

// BenchmarkAuditURLServer is BenchmarkURLServer with the audit off and
// on: the audit's cost per exchange.
// Run: go test -run '^$' -bench AuditURLServer -benchtime 2000x ./mcpproxy
func BenchmarkAuditURLServer(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Mcp-Session-Id") == "" {
			w.Header().Set("Mcp-Session-Id", "s-1")
		}
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hello"}]}}`)
	}))
	defer up.Close()
	for _, on := range []bool{false, true} {
		name := "audit=off"
		if on {
			name = "audit=on"
		}
		b.Run(name, func(b *testing.B) {
			var opts Options
			if on {
				l, err := audit.Open(audit.Config{File: filepath.Join(b.TempDir(), "audit.log"), Agent: "dc1"})
				require.NoError(b, err)
				defer l.Close()
				opts.Audit = l
			}
			h, err := NewHandler([]ServerConfig{{Name: "up", URL: up.URL + "/mcp"}}, opts)
			require.NoError(b, err)
			defer h.Close()
			srv := serveLikeAgent(b, h)
			client := srv.Client()
			post := func(sid, body string) *http.Response {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/up/mcp", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				req.Header.Set("X-Mcptun-Client", "ci")
				if sid != "" {
					req.Header.Set("Mcp-Session-Id", sid)
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp
			}
			sid := post("", initBody).Header.Get("Mcp-Session-Id")
			const call = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				post(sid, call)
			}
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// BenchmarkAuditStdio is one tools/call through the stdio bridge to a
// real child on the fast path, with the audit off and on.
// Run: go test -run '^$' -bench AuditStdio -benchtime 3000x ./mcpproxy
func BenchmarkAuditStdio(b *testing.B) {
	for _, on := range []bool{false, true} {
		name := "audit=off"
		if on {
			name = "audit=on"
		}
		b.Run(name, func(b *testing.B) {
			var opts Options
			if on {
				l, err := audit.Open(audit.Config{File: filepath.Join(b.TempDir(), "audit.log"), Agent: "dc1"})
				require.NoError(b, err)
				defer l.Close()
				opts.Audit = l
			}
			h, err := NewHandler([]ServerConfig{{Name: "ts", Command: []string{testServerBin}}}, opts)
			require.NoError(b, err)
			defer h.Close()
			srv := serveLikeAgent(b, h)
			client := srv.Client()
			post := func(sid, body string) *http.Response {
				req, _ := http.NewRequest(http.MethodPost, srv.URL+"/ts/mcp", strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				req.Header.Set(ClientHeader, "ci")
				if sid != "" {
					req.Header.Set("Mcp-Session-Id", sid)
					req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode/100 != 2 {
					b.Fatalf("POST: %d", resp.StatusCode)
				}
				return resp
			}
			sid := post("", initBody).Header.Get("Mcp-Session-Id")
			post(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
			const call = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				post(sid, call)
			}
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-µs/op")
		})
	}
}

// cpuTime is the CPU time this process (client, agent and, for url:
// servers, upstream: all in it) has used: steadier than wall time on a
// shared host.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestAuditPolicyRefusals: a call the tool policy refuses is recorded as
// refused, with the policy's reason, on a url: server (the fast path's
// Inspect takes it off the forwarding path) and on a stdio server.
func TestAuditPolicyRefusals(t *testing.T) {
	l, path := openAudit(t, false)
	up := newUpstream(t)
	deny := Policy{Tools: Rules{Deny: []string{"echo"}}}
	b := newBridge(t, Options{Audit: l}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp", Policy: deny})
	post := func(server, sid, body string) (*http.Response, string) {
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/"+server+"/mcp", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set(ClientHeader, "carol")
		if sid != "" {
			req.Header.Set("Mcp-Session-Id", sid)
		}
		resp, err := b.srv.Client().Do(req)
		require.NoError(t, err)
		out, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp, string(out)
	}
	resp, _ := post("up", "", initBody)
	sid := resp.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)
	_, out := post("up", sid, `{"jsonrpc":"2.0","id":31,"method":"tools/call","params":{"name":"echo","arguments":{"text":"no"}}}`)
	require.Contains(t, out, reasonToolDenied)
	require.NoError(t, b.h.Close())

	lines := auditLines(t, l, path)
	var refused map[string]any
	for _, line := range lines {
		if line["id"] == 31.0 {
			refused = line
		}
	}
	require.NotNil(t, refused, "no audit line for the refused call: %v", lines)
	require.Equal(t, "refused", refused["outcome"], "%v", refused)
	require.Equal(t, reasonToolDenied, refused["reason"], "%v", refused)
	require.Equal(t, "echo", refused["name"], "%v", refused)
	require.Equal(t, "carol", refused["client"], "%v", refused)
}
