//go:build unix

package mcpproxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestErrorReasons provokes every error answer the agent makes by itself
// that a client can provoke on this platform and checks its status and
// data.reason (README: the agent's reason table). Not here: 501
// not_implemented (stdio servers where they cannot run) and 500
// internal_error (no answer is made without a reason of its own).
func TestErrorReasons(t *testing.T) {
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	downURL := "http://" + closed.Addr().String() + "/mcp"
	require.NoError(t, closed.Close())
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if c, _, err := w.(http.Hijacker).Hijack(); err == nil {
			_ = c.Close()
		}
	}))
	t.Cleanup(hang.Close)
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	}))
	t.Cleanup(ok.Close)
	b := newBridge(t, Options{MaxSessions: 1, MaxMessageBytes: 4096},
		ServerConfig{Name: "down", URL: downURL},
		ServerConfig{Name: "hang", URL: hang.URL + "/mcp"},
		ServerConfig{Name: "up", URL: ok.URL + "/mcp"},
		ServerConfig{Name: "limited", URL: ok.URL + "/mcp", Rate: 0.001, Burst: 1},
		ServerConfig{Name: "broken", Command: []string{"/nonexistent/mcp-server"}},
	)
	sid := b.initialize(t)
	addr := strings.TrimPrefix(b.srv.URL, "http://")

	// raw sends a request on a connection of its own and returns the answer.
	raw := func(t *testing.T, req string) (*http.Response, string) {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		defer c.Close()
		require.NoError(t, c.SetDeadline(time.Now().Add(connWait)))
		_, err = io.WriteString(c, req)
		require.NoError(t, err)
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, string(body)
	}
	post := func(path, body string, hdr ...string) string {
		return fmt.Sprintf("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n%sContent-Length: %d\r\n\r\n%s",
			path, strings.Join(append(hdr, ""), "\r\n"), len(body), body)
	}
	const list = `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`
	session := "Mcp-Session-Id: " + sid

	// A client attached to the session's GET stream, for stream_conflict.
	sse, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = sse.Close() })
	require.NoError(t, sse.SetDeadline(time.Now().Add(connWait)))
	getStream := "GET /ts/mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n" + session + "\r\n\r\n"
	_, err = io.WriteString(sse, getStream)
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(sse), nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	for _, tc := range []struct {
		name   string
		req    string
		repeat int
		status int
		reason string
	}{
		{"malformed head", "POST /down/mcp HTTP/1.1\r\nHost: x\r\nX A: 1\r\n\r\n", 1, 400, "bad_request"},
		{"bad chunk size", "POST /up/mcp HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 1, 400, "bad_request"},
		{"no session id", post("/ts/mcp", list), 1, 400, "bad_request"},
		{"not JSON", post("/ts/mcp", `{`, session), 1, 400, "parse_error"},
		{"no Mcp-Method", post("/ts/mcp", list, "Mcp-Protocol-Version: 2026-07-28"), 1, 400, "header_mismatch"},
		{"unknown version", post("/ts/mcp", list, session, "Mcp-Protocol-Version: 1999-01-01"), 1, 400, "unsupported_protocol_version"},
		{"foreign origin", post("/ts/mcp", list, session, "Origin: http://evil.example"), 1, 403, "origin_not_allowed"},
		{"no such server", post("/nope/mcp", list), 1, 404, "not_found"},
		{"unknown session", post("/ts/mcp", list, "Mcp-Session-Id: nope"), 1, 404, "session_not_found"},
		{"PUT", "PUT /ts/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 1, 405, "method_not_allowed"},
		{"Accept without SSE", "POST /ts/mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAccept: text/plain\r\nContent-Length: 2\r\n\r\n{}", 1, 406, "not_acceptable"},
		{"second GET stream", getStream, 1, 409, "stream_conflict"},
		{"message over the limit", post("/ts/mcp", `{"x":"`+strings.Repeat("y", 5000)+`"}`, session), 1, 413, "body_too_large"},
		{"not JSON content type", strings.Replace(post("/ts/mcp", list, session), "application/json\r\nAccept", "text/plain\r\nAccept", 1), 1, 415, "unsupported_media_type"},
		{"over rate limit", post("/limited/mcp", list), 2, 429, "rate_limited"},
		{"session limit", post("/ts/mcp", initBody, "X-Mcptun-Client: other"), 1, 503, "session_limit"},
		{"client session limit", post("/ts/mcp", initBody), 1, 429, "client_session_limit"},
		{"process cannot start", post("/broken/mcp", initBody), 1, 502, "server_gone"},
		{"upstream down", post("/down/mcp", list), 1, 502, "upstream_unreachable"},
		{"upstream hangs up", post("/hang/mcp", list), 1, 502, "upstream_outcome_unknown"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			var body string
			for range max(tc.repeat, 1) {
				resp, body = raw(t, tc.req)
			}
			require.Equal(t, tc.status, resp.StatusCode, body)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"), body)
			var e struct {
				Error struct {
					Message string `json:"message"`
					Data    struct {
						Reason string `json:"reason"`
					} `json:"data"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			require.Equal(t, tc.reason, e.Error.Data.Reason, body)
			require.NotEmpty(t, e.Error.Message)
		})
	}
}

// TestExitReasonNamesTheSignal: a child killed by a signal is described by
// the signal's name ("killed by killed" before).
func TestExitReasonNamesTheSignal(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	require.NoError(t, cmd.Start())
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err := cmd.Wait()
	require.Equal(t, "killed by SIGKILL", exitReason(err))
}
