//go:build unix

package mcpproxy

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// TestURLSessionsBoundToClient: a url: server's session belongs to the
// client (X-Mcptun-Client) that initialized it. Another client naming it
// gets 404 session_not_found for POST, GET (with Last-Event-ID) and
// DELETE, and the upstream (a real MCP server) never sees those requests;
// the owner carries on. A DELETE by the owner ends the binding. On the
// fast path and on net/http's.
func TestURLSessionsBoundToClient(t *testing.T) {
	for _, path := range []string{"fast", "net/http"} {
		t.Run(path, func(t *testing.T) {
			var log mcptest.NonceLog
			var seen atomic.Int32
			mcp := mcptest.NewHTTPHandler(mcptest.NewRecordServer(&log), mcptest.HTTPConfig{})
			up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				seen.Add(1)
				mcp.ServeHTTP(w, r)
			}))
			t.Cleanup(func() {
				up.CloseClientConnections()
				up.Close()
			})
			b := newBridge(t, Options{}, ServerConfig{Name: "rec", URL: up.URL + mcptest.EndpointPath})
			url := b.srv.URL + "/rec/mcp"
			do := func(client, method, sid, body string, hdr ...string) (int, http.Header, string) {
				t.Helper()
				var rd io.Reader
				if body != "" {
					rd = strings.NewReader(body)
				}
				req, err := http.NewRequest(method, url, rd)
				require.NoError(t, err)
				req.Header.Set("X-Mcptun-Client", client)
				req.Header.Set("Accept", "application/json, text/event-stream")
				if body != "" {
					req.Header.Set("Content-Type", "application/json")
				}
				if sid != "" {
					req.Header.Set("Mcp-Session-Id", sid)
					req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
				}
				if path == "net/http" {
					req.Header.Set("Connection", "X-Force")
					req.Header.Set("X-Force", "1")
				}
				for i := 0; i+1 < len(hdr); i += 2 {
					req.Header.Set(hdr[i], hdr[i+1])
				}
				resp, err := b.srv.Client().Do(req)
				require.NoError(t, err)
				return resp.StatusCode, resp.Header, readBody(t, resp)
			}
			call := func(nonce string) string {
				return fmt.Sprintf(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":%q,"arguments":{"nonce":%q}}}`, mcptest.ToolRecord, nonce)
			}

			code, h, body := do("alice", http.MethodPost, "", initBody)
			require.Equal(t, http.StatusOK, code, body)
			sid := h.Get("Mcp-Session-Id")
			require.NotEmpty(t, sid)
			code, _, body = do("alice", http.MethodPost, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
			require.Equal(t, http.StatusAccepted, code, body)
			code, _, body = do("alice", http.MethodPost, sid, call("alice-1"))
			require.Equal(t, http.StatusOK, code, body)
			require.Equal(t, 1, log.Count("alice-1"))

			before := seen.Load()
			for _, tc := range []struct {
				method, body string
				hdr          []string
			}{
				{http.MethodPost, call("bob-1"), nil},
				{http.MethodGet, "", []string{"Last-Event-ID", "1"}},
				{http.MethodGet, "", nil},
				{http.MethodDelete, "", nil},
			} {
				code, _, body := do("bob", tc.method, sid, tc.body, tc.hdr...)
				require.Equal(t, http.StatusNotFound, code, "%s by another client: %s", tc.method, body)
				require.Contains(t, body, `"reason":"session_not_found"`)
			}
			require.Equal(t, before, seen.Load(), "the upstream saw none of the other client's requests")
			require.Zero(t, log.Count("bob-1"))
			require.Contains(t, b.logs.find("another client's session", "bob"), "alice")

			// The owner's session is intact.
			code, _, body = do("alice", http.MethodPost, sid, call("alice-2"))
			require.Equal(t, http.StatusOK, code, body)
			require.Equal(t, 1, log.Count("alice-2"))

			// A session id never seen here passes to the upstream, which
			// knows nothing of it either.
			code, _, body = do("bob", http.MethodPost, "no-such-session", call("bob-2"))
			require.Equal(t, http.StatusNotFound, code, body)
			require.Equal(t, before+2, seen.Load(), "the unknown id went upstream")

			// The owner ends it; the binding goes with it.
			code, _, body = do("alice", http.MethodDelete, sid, "")
			require.Less(t, code, 300, body)
			require.Zero(t, b.h.table().servers["rec"].(*httpServer).sessions.len())
		})
	}
}

// TestURLSessionTable: the table is bounded (least recently used out),
// forgets idle entries, and never gives a session to a second client.
func TestURLSessionTable(t *testing.T) {
	tab := newURLSessions()
	tab.max = 3
	now := time.Unix(1000, 0)
	for i := range 3 {
		tab.bind(fmt.Sprint("s", i), "a", now.Add(time.Duration(i)*time.Second))
	}
	state, _ := tab.lookup([]byte("s0"), []byte("a"), now.Add(10*time.Second)) // s0 is used again: s1 is the oldest now
	require.Equal(t, sessionMine, state)
	tab.bind("s3", "b", now.Add(11*time.Second))
	require.Equal(t, 3, tab.len())
	state, _ = tab.lookup([]byte("s1"), []byte("a"), now)
	require.Equal(t, sessionUnknown, state, "the least recently used went")
	state, owner := tab.lookup([]byte("s3"), []byte("a"), now)
	require.Equal(t, sessionForeign, state)
	require.Equal(t, "b", owner)
	tab.bind("s3", "a", now)
	state, _ = tab.lookup([]byte("s3"), []byte("a"), now)
	require.Equal(t, sessionForeign, state, "bind never takes a session from its owner")

	// An hour later every entry is idle: the next sweep takes them all.
	tab.max = 1 << 20
	tab.binds = urlSweepEvery - 1
	tab.bind("s4", "a", now.Add(urlSessionIdle+time.Minute))
	require.Equal(t, 1, tab.len())
}

// TestUpstreamIdleTimeoutBelowKeepAlives pins the idle limit of pooled
// connections to url: servers below the 5 s after which Node's, uvicorn's
// and Apache's servers close idle connections (README: sent at most once).
func TestUpstreamIdleTimeoutBelowKeepAlives(t *testing.T) {
	require.Equal(t, 4*time.Second, upstreamIdleTimeout)
}
