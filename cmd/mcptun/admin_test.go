package main

import (
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/admin"
	"github.com/mcptun/mcptun/mcpproxy"
)

// TestAgentStatusFollowsReload: the status API probes a url: server at
// the URL it is served from now. It used the URLs the agent started
// with: after a reload that moved a server, /api/status probed the old
// address, and a url: server added by a reload was never probed.
func TestAgentStatusFollowsReload(t *testing.T) {
	live := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(live.Close)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	deadURL := "http://" + dead.Addr().String() + "/mcp"
	require.NoError(t, dead.Close())

	h, err := mcpproxy.NewHandler([]mcpproxy.ServerConfig{{Name: "wiki", URL: deadURL}}, mcpproxy.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	a := &agentAdmin{ra: &runningAgent{handler: h}, started: time.Now()}
	upstream := func() map[string]string {
		st := &admin.Status{}
		a.serverStatus(st, time.Now())
		out := map[string]string{}
		for _, s := range st.Servers {
			out[s.Name] = s.Upstream
		}
		return out
	}
	require.True(t, strings.HasPrefix(upstream()["wiki"], "unreachable"), "%v", upstream())

	_, err = h.SetServers([]mcpproxy.ServerConfig{{Name: "wiki", URL: live.URL + "/mcp"}, {Name: "docs", URL: live.URL + "/docs"}})
	require.NoError(t, err)
	require.Equal(t, map[string]string{"wiki": "reachable", "docs": "reachable"}, upstream())
}
