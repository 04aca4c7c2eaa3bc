package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// TestNoCallRunsTwiceThroughTunnel: through the real relay and agent, a
// url: server (a real MCP server logging a nonce per executed call) that
// runs one tools/call in five and then drops its connection instead of
// answering. Of 100 calls none may run twice, and each whose answer was
// lost gets 502 upstream_outcome_unknown. QUIC and TCP.
func TestNoCallRunsTwiceThroughTunnel(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
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
			d := deploy(t, relayOpts{}, agentOpts{transport: transport,
				servers: fmt.Sprintf("  - {name: rec, url: %q}\n", hs.URL)})
			d.waitOnline(t, "rec")
			url := d.relayURL + "/dc1/rec/mcp"
			init := rawPost(t, url, clientToken, "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
			require.Equal(t, http.StatusOK, init.StatusCode, init.Body)
			sid := init.Header.Get("Mcp-Session-Id")
			require.Equal(t, http.StatusAccepted, rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).StatusCode)

			const calls = 100
			ok, unknown := 0, 0
			for i := range calls {
				nonce := fmt.Sprintf("call-%d", i)
				r := rawPost(t, url, clientToken, sid, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":%q,"arguments":{"nonce":%q}}}`, i+1, mcptest.ToolRecord, nonce))
				switch r.StatusCode {
				case http.StatusOK:
					require.Contains(t, r.Body, nonce)
					ok++
				case http.StatusBadGateway:
					require.Contains(t, r.Body, `"reason":"upstream_outcome_unknown"`)
					unknown++
				default:
					t.Fatalf("call %d: %d %s", i, r.StatusCode, r.Body)
				}
				if n := log.Count(nonce); n != 1 {
					t.Errorf("call %d ran %d times (answer %d)", i, n, r.StatusCode)
				}
			}
			executed, twice := log.Stats()
			t.Logf("%s: %d calls: %d answered, %d outcome unknown; executed %d, executed twice %d", transport, calls, ok, unknown, executed, twice)
			require.Zero(t, twice)
			require.Equal(t, calls, executed)
			mu.Lock()
			require.Equal(t, len(hungUp), unknown)
			mu.Unlock()
		})
	}
}
