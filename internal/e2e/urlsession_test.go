package e2e

import (
	"fmt"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestURLSessionOwnerThroughTunnel: through the real relay and agent, a
// url: server's session belongs to the client that initialized it. Client
// "scoped" (allowed on wiki too) naming client "ci"'s session gets 404 for
// POST, GET and DELETE; ci's session carries on. QUIC and TCP.
func TestURLSessionOwnerThroughTunnel(t *testing.T) {
	httpURL := startHTTPFixture(t)
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: transport,
				servers: fmt.Sprintf("  - {name: wiki, url: %q}\n", httpURL)})
			d.waitOnline(t, "wiki")
			url := d.relayURL + "/dc1/wiki/mcp"
			const ping = `{"jsonrpc":"2.0","id":2,"method":"ping"}`
			init := rawPost(t, url, clientToken, "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
			require.Equal(t, http.StatusOK, init.StatusCode, init.Body)
			sid := init.Header.Get("Mcp-Session-Id")
			require.NotEmpty(t, sid)
			require.Equal(t, http.StatusAccepted, rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).StatusCode)
			require.Equal(t, http.StatusOK, rawPost(t, url, clientToken, sid, ping).StatusCode)

			for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
				body := ""
				if method == http.MethodPost {
					body = ping
				}
				r := rawDo(t, method, url, scopedToken, sid, body)
				require.Equal(t, http.StatusNotFound, r.StatusCode, "%s by another client: %s", method, r.Body)
				require.Contains(t, r.Body, `"reason":"session_not_found"`)
			}
			r := rawPost(t, url, clientToken, sid, ping)
			require.Equal(t, http.StatusOK, r.StatusCode, "the owner's session carries on: %s", r.Body)
		})
	}
}
