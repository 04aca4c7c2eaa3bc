//go:build unix

package mcpproxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// TestURLServerNeverRunsACallTwice: a real HTTP MCP upstream that, for one
// tools/call in five, runs the tool and then closes its connection instead
// of answering (once per call). Through the agent's forwarder, 100 calls on
// pooled connections: none may run twice, and each one whose answer was
// lost gets 502 upstream_outcome_unknown — never a success, never
// "connection refused". Before the fix the forwarder sent those calls
// again on a fresh connection: they ran twice and the client saw success.
func TestURLServerNeverRunsACallTwice(t *testing.T) {
	var log mcptest.NonceLog
	var mu sync.Mutex
	hungUp := make(map[string]bool)
	hs, err := mcptest.ServeHTTP(mcptest.NewRecordServer(&log), "127.0.0.1:0", mcptest.HTTPConfig{
		HangUp: func(body []byte) bool {
			var m struct {
				Method string `json:"method"`
				Params struct {
					Arguments struct {
						Nonce string `json:"nonce"`
					} `json:"arguments"`
				} `json:"params"`
			}
			if json.Unmarshal(body, &m) != nil || m.Method != "tools/call" {
				return false
			}
			var i int
			fmt.Sscanf(m.Params.Arguments.Nonce, "call-%d", &i)
			mu.Lock()
			defer mu.Unlock()
			if i%5 != 4 || hungUp[m.Params.Arguments.Nonce] {
				return false
			}
			hungUp[m.Params.Arguments.Nonce] = true
			return true
		},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, hs.Close()) })
	b := newBridge(t, Options{}, ServerConfig{Name: "rec", URL: hs.URL})
	url := b.srv.URL + "/rec/mcp"
	post := func(sid, body string) (int, http.Header, string) {
		req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if sid != "" {
			req.Header.Set("Mcp-Session-Id", sid)
			req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
		}
		resp, err := b.srv.Client().Do(req)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header, readBody(t, resp)
	}
	code, h, body := post("", initBody)
	require.Equal(t, http.StatusOK, code, body)
	sid := h.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)
	code, _, body = post(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	require.Equal(t, http.StatusAccepted, code, body)

	const calls = 100
	ok, unknown := 0, 0
	for i := range calls {
		nonce := fmt.Sprintf("call-%d", i)
		code, _, body := post(sid, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":{"nonce":%q}}}`, i+1, mcptest.ToolRecord, nonce))
		switch code {
		case http.StatusOK:
			require.Contains(t, body, nonce)
			ok++
		case http.StatusBadGateway:
			var e struct {
				Error struct {
					Message string `json:"message"`
					Data    struct {
						Reason string `json:"reason"`
					} `json:"data"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal([]byte(body), &e), body)
			require.Equal(t, "upstream_outcome_unknown", e.Error.Data.Reason, body)
			require.NotContains(t, e.Error.Message, "refused")
			unknown++
		default:
			t.Fatalf("call %d: %d %s", i, code, body)
		}
		if n := log.Count(nonce); n != 1 {
			t.Errorf("call %d ran %d times (answer %d)", i, n, code)
		}
	}
	executed, twice := log.Stats()
	t.Logf("%d calls: %d answered, %d outcome unknown; executed %d, executed twice %d", calls, ok, unknown, executed, twice)
	require.Zero(t, twice, "calls executed twice")
	require.Equal(t, calls, executed)
	mu.Lock()
	require.Equal(t, len(hungUp), unknown, "each hung-up call, and only those, is reported outcome unknown")
	mu.Unlock()
}
