package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/admin"
	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/devcert"
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

// TestReloadPinWithoutPinFile: a reload that pins a server of an agent
// started without a pin file (no server pinned then) is refused as a
// whole when it is prepared, naming the server: it used to pass the check
// and fail when applied, after other parts had changed.
func TestReloadPinWithoutPinFile(t *testing.T) {
	h, err := mcpproxy.NewHandler([]mcpproxy.ServerConfig{{Name: "wiki", URL: "http://127.0.0.1:1/mcp"}}, mcpproxy.Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	ra := &runningAgent{handler: h}
	parts := ra.reloadParts(nil, nil, slog.New(slog.DiscardHandler))
	old := &config.Agent{Servers: []config.AgentServer{{Name: "wiki", URL: "http://127.0.0.1:1/mcp"}}}
	next := &config.Agent{PinFile: "agent.pins.json", Servers: []config.AgentServer{{Name: "wiki", URL: "http://127.0.0.1:1/mcp", Pin: true}}}
	require.True(t, config.KeyIn("servers", parts[0].keys...))
	commit, err := parts[0].prepare(old, next)
	require.Error(t, err, "prepared a change that cannot be applied")
	require.Nil(t, commit)
	require.Contains(t, err.Error(), `"wiki"`)
	require.Contains(t, err.Error(), "pin")
}

// TestProbeChildEnv: check --probe starts a stdio server with the
// environment the agent would give it (PATH and the like, then the
// server's env:), not the whole environment of the shell it runs in,
// which may hold the agent's own credential (MCPTUN_RELAY_TOKEN).
func TestProbeChildEnv(t *testing.T) {
	t.Setenv("MCPTUN_RELAY_TOKEN", "agent-secret")
	out := filepath.Join(t.TempDir(), "env.txt")
	_, err := listTools(context.Background(), config.AgentServer{Name: "envdump",
		Command: []string{"/bin/sh", "-c", `env > "$OUT"`}, Env: map[string]string{"OUT": out}}, 10*time.Second)
	require.Error(t, err, "the script is no MCP server")
	b, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Contains(t, string(b), "OUT="+out)
	require.NotContains(t, string(b), "agent-secret", "the probe gave the child the agent's credential")
}

// TestRelayGaugesFollowReload: the per-agent gauges list the agents the
// relay is configured with now. They listed those it started with: an
// agent a reload added had no series (its replicas, its stalled
// clients), one it removed kept its series.
func TestRelayGaugesFollowReload(t *testing.T) {
	cert, _, err := devcert.Certificate("127.0.0.1")
	require.NoError(t, err)
	agent := func(name string) config.RelayAgent {
		return config.RelayAgent{Name: name, TokenSHA256: []string{tokenHash(name + "-token")}}
	}
	cfg := &config.Relay{
		Tunnel:  config.RelayTunnel{Listen: "127.0.0.1:0"},
		HTTP:    config.RelayHTTP{Listen: "127.0.0.1:0"},
		Admin:   config.Admin{Listen: "127.0.0.1:0"},
		Agents:  []config.RelayAgent{agent("dc1")},
		Clients: []config.RelayClient{{Name: "ci", TokenSHA256: tokenHash("ci-token"), Allow: []string{"*/*"}}},
	}
	rr, err := startRelay(context.Background(), cfg, cert, nil, nil, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = rr.Close() })

	next := *cfg
	next.Agents = []config.RelayAgent{agent("dc2")}
	parts := rr.reloadParts(nil, nil, "relay.yaml", slog.New(slog.DiscardHandler))
	require.True(t, config.KeyIn("agents", parts[1].keys...))
	commit, err := parts[1].prepare(cfg, &next)
	require.NoError(t, err)
	_, err = commit()
	require.NoError(t, err)

	resp, err := http.Get("http://" + rr.admin.Addr() + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var perAgent []string // the series with an agent label, for a readable failure
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "mcptun_relay_") && strings.Contains(l, "{agent=") {
			perAgent = append(perAgent, l)
		}
	}
	body := strings.Join(perAgent, "\n")
	for _, m := range []string{"mcptun_relay_agent_replicas", "mcptun_relay_stalled_clients", "mcptun_relay_stalled_clients_cut_total"} {
		require.Contains(t, body, m+`{agent="dc2"} 0`, "an agent the reload added")
		require.NotContains(t, body, m+`{agent="dc1"}`, "an agent the reload removed")
	}
}

// TestReloadURLOutsideStartedNetworks: upstream_networks takes a restart;
// a reload that moves it and adds a url: server inside only the new
// networks is refused when prepared, naming the server: it passed the
// check and failed when applied.
func TestReloadURLOutsideStartedNetworks(t *testing.T) {
	h, err := mcpproxy.NewHandler([]mcpproxy.ServerConfig{{Name: "wiki", URL: "http://10.1.2.3/mcp"}},
		mcpproxy.Options{UpstreamNetworks: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	ra := &runningAgent{handler: h}
	parts := ra.reloadParts(nil, nil, slog.New(slog.DiscardHandler))
	old := &config.Agent{Servers: []config.AgentServer{{Name: "wiki", URL: "http://10.1.2.3/mcp"}}}
	next := &config.Agent{UpstreamNetworks: []string{"192.168.0.0/16"},
		Servers: []config.AgentServer{{Name: "wiki", URL: "http://10.1.2.3/mcp"}, {Name: "docs", URL: "http://192.168.1.5/mcp"}}}
	commit, err := parts[0].prepare(old, next)
	require.Error(t, err, "prepared a change that cannot be applied")
	require.Nil(t, commit)
	require.Contains(t, err.Error(), `"docs"`)
	require.Contains(t, err.Error(), "upstream_networks")
}

// TestRatesCounterRestart: a server a reload replaced counts from 0
// again; its rate is what it counted since, not an unsigned wrap-around
// (1.8e19 requests per second on the status page).
func TestRatesCounterRestart(t *testing.T) {
	var r rates
	t0 := time.Unix(1000, 0)
	for _, tc := range []struct {
		n    uint64
		at   time.Duration
		want float64
	}{
		{100, 0, 0},
		{300, 2 * time.Second, 100},
		{10, 4 * time.Second, 5}, // replaced: counting from 0 again
		{30, 6 * time.Second, 10},
	} {
		require.Equal(t, tc.want, r.rate("dc1/wiki", tc.n, t0.Add(tc.at)), "n=%d at %s", tc.n, tc.at)
	}
}
