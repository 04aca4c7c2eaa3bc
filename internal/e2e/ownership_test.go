package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const otherToken = "other-secret-0123456789"

// TestStdioSessionOwnershipAndLimits runs the agent's session ownership and
// per-client session limit as deployed: the relay names each client
// (X-Mcptun-Client) from its token, and agent.yaml sets
// servers[].limits. Client "other", allowed on the same server, cannot
// use, resume or end ci's session (404 as for an unknown one), and ci at
// its one session with that session busy is refused 429
// client_session_limit while other still gets a session.
func TestStdioSessionOwnershipAndLimits(t *testing.T) {
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{}) // and the certificate
	require.NoError(t, os.WriteFile(d.relayYAML, []byte(fmt.Sprintf(`tunnel: {listen: "127.0.0.1:0", cert_file: relay.crt, key_file: relay.key}
http: {listen: "127.0.0.1:0"}
agents:  [{name: dc1, token_sha256: %q}]
clients:
  - {name: ci, token_sha256: %q, allow: ["dc1/*"]}
  - {name: other, token_sha256: %q, allow: ["dc1/*"]}
log: {level: debug}
`, sha256Hex(agentToken), sha256Hex(clientToken), sha256Hex(otherToken))), 0o600))
	d.startRelay(t)
	d.writeAgentConfig(t, agentOpts{transport: "quic",
		servers: fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"], limits: {sessions: 4, sessions_per_client: 1}}\n", fixtureBin)})
	d.startAgent(t)
	d.waitOnline(t, "notes")
	url := d.relayURL + "/dc1/notes/mcp"
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`

	r := rawPost(t, url, clientToken, "", init)
	require.Equal(t, http.StatusOK, r.StatusCode, "body %s", r.Body)
	sid := r.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)
	require.Equal(t, http.StatusAccepted, rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).StatusCode)

	ping := `{"jsonrpc":"2.0","id":2,"method":"ping"}`
	unknown := rawPost(t, url, otherToken, strings.Repeat("0", 32), ping)
	require.Equal(t, http.StatusNotFound, unknown.StatusCode)
	for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
		r := rawDo(t, method, url, otherToken, sid, map[string]string{http.MethodPost: ping}[method])
		require.Equal(t, http.StatusNotFound, r.StatusCode, "%s by another client: %s", method, r.Body)
		if method == http.MethodPost {
			require.Equal(t, unknown.Body, r.Body, "as for a session that does not exist")
		}
	}
	require.Equal(t, http.StatusOK, rawPost(t, url, clientToken, sid, ping).StatusCode, "ci's session is untouched")

	// ci's one session busy (its GET stream open): ci is refused a second.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+clientToken)
	req.Header.Set("Accept", "text/event-stream")
	req.Header.Set("Mcp-Session-Id", sid)
	get, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer get.Body.Close()
	require.Equal(t, http.StatusOK, get.StatusCode)
	r = rawPost(t, url, clientToken, "", init)
	require.Equal(t, http.StatusTooManyRequests, r.StatusCode, "body %s", r.Body)
	require.Contains(t, r.Body, `"reason":"client_session_limit"`)
	require.Contains(t, r.Body, "limits.sessions_per_client")
	r = rawPost(t, url, otherToken, "", init)
	require.Equal(t, http.StatusOK, r.StatusCode, "another client still gets a session: %s", r.Body)
}
