package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/admin"
	"github.com/mcptun/mcptun/internal/conformance"
)

const adminToken = "admin-secret-0123456789"

var adminStarted = regexp.MustCompile(`msg="admin listener started".* url=(http://\S+)/`)

// deployAdmin starts a relay whose admin listener wants adminToken and an
// agent whose admin listener is open (loopback), with the stdio fixture
// "notes"; it returns the two admin base URLs once the agent is online.
func deployAdmin(t *testing.T) (d *deployment, relayAdmin, agentAdmin string) {
	t.Helper()
	dir := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "admin.token"), []byte(adminToken+"\n"), 0o600))
	d = &deployment{dir: dir}
	d.relayYAML = writeRelayConfig(t, dir, relayOpts{extra: "admin: {listen: \"127.0.0.1:0\", token_file: admin.token}\n"})
	d.startRelay(t)
	relayAdmin = d.relay.waitLine(t, adminStarted, 10*time.Second)[1]
	d.writeAgentConfig(t, agentOpts{transport: "quic", extra: "admin: {listen: \"127.0.0.1:0\"}\n"})
	d.startAgent(t)
	agentAdmin = d.agent.waitLine(t, adminStarted, 20*time.Second)[1]
	d.waitOnline(t, "notes")
	return d, relayAdmin, agentAdmin
}

func adminGet(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// statusJSON runs `mcptun status --json` against an admin listener.
func statusJSON(t *testing.T, adminURL, tokenFile string) admin.Status {
	t.Helper()
	args := []string{"status", "--admin", adminURL, "--json"}
	if tokenFile != "" {
		args = append(args, "--token-file", tokenFile)
	}
	out, err := exec.Command(mcptunBin, args...).Output()
	require.NoError(t, err, "mcptun %s", strings.Join(args, " "))
	var st admin.Status
	require.NoError(t, json.Unmarshal(out, &st), "%s", out)
	return st
}

func findServer(st admin.Status, agent, name string) *admin.ServerStatus {
	for i := range st.Servers {
		if st.Servers[i].Agent == agent && st.Servers[i].Name == name {
			return &st.Servers[i]
		}
	}
	return nil
}

// metricValue returns the value of the sample of name whose labels
// include every one of labels ("k=\"v\""), or -1.
func metricValue(text, name string, labels ...string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, l := range labels {
			ok = ok && strings.Contains(line, l)
		}
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			return v
		}
	}
	return -1
}

// TestAdminStatusAndMetrics: `mcptun status --json` and /metrics of both
// roles reflect a call, a refusal and the agent going away; the admin
// token is enforced on the data and never asked for by /healthz.
func TestAdminStatusAndMetrics(t *testing.T) {
	d, relayAdmin, agentAdmin := deployAdmin(t)
	tokenFile := filepath.Join(d.dir, "admin.token")

	// Probes: open, cheap. Data: the token.
	code, _ := adminGet(t, relayAdmin+"/healthz", "")
	require.Equal(t, http.StatusOK, code)
	code, _ = adminGet(t, relayAdmin+"/readyz", "")
	require.Equal(t, http.StatusOK, code)
	for _, p := range []string{"/metrics", "/api/status"} {
		code, _ = adminGet(t, relayAdmin+p, "")
		require.Equal(t, http.StatusUnauthorized, code, p)
		code, _ = adminGet(t, relayAdmin+p, "wrong-"+adminToken)
		require.Equal(t, http.StatusUnauthorized, code, p)
	}
	out, err := exec.Command(mcptunBin, "status", "--admin", relayAdmin).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "wants the admin token: give --token-file")
	out, err = exec.Command(mcptunBin, "status", "--admin", "http://"+d.tunnelAddr+"0").CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "cannot reach the admin listener (is admin.listen set, and is this its address?)")
	require.Eventually(t, func() bool { c, _ := adminGet(t, agentAdmin+"/readyz", ""); return c == http.StatusOK },
		10*time.Second, 50*time.Millisecond, "agent ready once its tunnel is up")

	before := statusJSON(t, relayAdmin, tokenFile)
	var n0 uint64
	if s := findServer(before, "dc1", "notes"); s != nil {
		n0 = s.Requests
	}

	// A call.
	c, _ := newClient(t, d.relayURL+"/dc1/notes/mcp", clientToken)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := mcp.CallToolRequest{}
	req.Params.Name = "echo"
	req.Params.Arguments = map[string]any{"message": "hi"}
	_, err = c.CallTool(ctx, req)
	require.NoError(t, err)
	// A refusal: a wrong token.
	bad, err := http.NewRequest(http.MethodPost, d.relayURL+"/dc1/notes/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`))
	require.NoError(t, err)
	bad.Header.Set("Authorization", "Bearer not-a-token")
	resp, err := http.DefaultClient.Do(bad)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	// Names a client makes up never become label values.
	for path, want := range map[string]int{"/made-up-agent/notes/mcp": http.StatusForbidden, "/dc1/made-up-server/mcp": http.StatusNotFound} {
		r, err := http.NewRequest(http.MethodPost, d.relayURL+path, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
		require.NoError(t, err)
		r.Header.Set("Authorization", "Bearer "+clientToken)
		resp, err := http.DefaultClient.Do(r)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, want, resp.StatusCode, path)
	}

	st := statusJSON(t, relayAdmin, tokenFile)
	require.Equal(t, "relay", st.Role)
	require.True(t, st.Ready)
	require.Len(t, st.Agents, 1)
	require.Equal(t, "dc1", st.Agents[0].Name)
	require.Equal(t, "quic", st.Agents[0].Transport)
	require.True(t, strings.HasPrefix(st.Agents[0].Version, "mcptun "), "the agent tells its build: %q", st.Agents[0].Version)
	require.Contains(t, st.Agents[0].Servers, "notes")
	srv := findServer(st, "dc1", "notes")
	require.NotNil(t, srv, "%+v", st.Servers)
	require.GreaterOrEqual(t, srv.Requests, n0+3, "initialize, initialized, tools/call and the refusal")
	require.Condition(t, func() bool {
		for _, e := range st.Errors {
			if e.Reason == "unauthorized" && e.Status == http.StatusUnauthorized && e.Agent == "dc1" {
				return true
			}
		}
		return false
	}, "the refusal is among the last errors: %+v", st.Errors)

	_, m := adminGet(t, relayAdmin+"/metrics", adminToken)
	require.Equal(t, 1.0, metricValue(m, "mcptun_relay_requests_total", `agent="dc1"`, `server="notes"`, `method="tools/call"`, `code="200"`, `reason=""`), m)
	require.GreaterOrEqual(t, metricValue(m, "mcptun_relay_requests_total", `agent="dc1"`, `method="tools/list"`, `code="401"`, `reason="unauthorized"`), -1.0)
	require.GreaterOrEqual(t, metricValue(m, "mcptun_relay_requests_total", `agent="dc1"`, `code="401"`, `reason="unauthorized"`), 1.0, m)
	require.GreaterOrEqual(t, metricValue(m, "mcptun_relay_auth_failures_total", `kind="client"`), 1.0, m)
	require.Equal(t, 1.0, metricValue(m, "mcptun_relay_requests_total", `agent=""`, `server=""`, `code="403"`, `reason="forbidden"`), m)
	require.Equal(t, 1.0, metricValue(m, "mcptun_relay_requests_total", `agent="dc1"`, `server=""`, `code="404"`, `reason="unknown_server"`), m)
	require.NotContains(t, m, "made-up")
	require.Equal(t, 1.0, metricValue(m, "mcptun_relay_agents_connected"), m)
	require.Equal(t, 1.0, metricValue(m, "mcptun_relay_tunnels", `transport="quic"`), m)
	require.Greater(t, metricValue(m, "mcptun_relay_tunnel_rtt_seconds", `agent="dc1"`), 0.0, m)
	require.GreaterOrEqual(t, metricValue(m, "mcptun_relay_request_duration_seconds_count", `agent="dc1"`, `method="tools/call"`), 1.0, m)

	// The agent's side of the same call.
	ast := statusJSON(t, agentAdmin, "")
	require.Equal(t, "agent", ast.Role)
	require.Equal(t, "dc1", ast.Name)
	require.Len(t, ast.Tunnels, 1)
	require.Equal(t, "up", ast.Tunnels[0].State)
	require.Equal(t, "quic", ast.Tunnels[0].Transport)
	notes := findServer(ast, "", "notes")
	require.NotNil(t, notes)
	require.Equal(t, "stdio", notes.Kind)
	require.GreaterOrEqual(t, notes.Requests, uint64(3))
	require.Equal(t, 1, notes.Children, "the client's session has its child")
	_, am := adminGet(t, agentAdmin+"/metrics", "")
	require.Equal(t, 1.0, metricValue(am, "mcptun_agent_stdio_children", `server="notes"`), am)
	require.Equal(t, 1.0, metricValue(am, "mcptun_agent_tunnels_up"), am)
	require.Contains(t, am, "go_goroutines", "runtime collectors")
	// Both roles' metrics follow Prometheus' naming conventions.
	for role, text := range map[string]string{"relay": m, "agent": am} {
		problems, err := promlint.New(strings.NewReader(text)).Lint()
		require.NoError(t, err, role)
		require.Empty(t, problems, "%s: promlint", role)
	}

	// The human table.
	out, err = exec.Command(mcptunBin, "status", "--admin", relayAdmin, "--token-file", tokenFile).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Regexp(t, `(?m)^dc1\s+1\s+\S+\s+quic\s`, string(out))
	require.Regexp(t, `(?m)^dc1/notes\s+\d+\s+\d+`, string(out))

	// The agent goes away.
	_ = c.Close()
	d.agent.stop(t)
	require.Eventually(t, func() bool {
		_, m := adminGet(t, relayAdmin+"/metrics", adminToken)
		return metricValue(m, "mcptun_relay_agents_connected") == 0 &&
			metricValue(m, "mcptun_relay_agent_replicas", `agent="dc1"`) == 0
	}, 15*time.Second, 50*time.Millisecond)
	st = statusJSON(t, relayAdmin, tokenFile)
	require.Empty(t, st.Agents)
	code, _ = adminGet(t, relayAdmin+"/readyz", "")
	require.Equal(t, http.StatusOK, code, "the relay stays ready without agents")
	resp, err = http.Post(d.relayURL+"/dc1/notes/mcp", "application/json", strings.NewReader(`{}`))
	require.NoError(t, err)
	resp.Body.Close()
	_, m = adminGet(t, relayAdmin+"/metrics", adminToken)
	require.GreaterOrEqual(t, metricValue(m, "mcptun_relay_requests_total", `agent="dc1"`, `server=""`, `code="401"`), 1.0,
		"a refusal for an agent offline: server not vouched for by an agent, so no label: %s", m)
}

// TestAdminNonLoopbackNeedsToken: an admin listener beyond loopback
// without admin.token_file is a config error naming file, key and reason.
func TestAdminNonLoopbackNeedsToken(t *testing.T) {
	dir := t.TempDir()
	p := writeRelayConfig(t, dir, relayOpts{extra: "admin: {listen: \"0.0.0.0:0\"}\n"})
	out, err := exec.Command(mcptunBin, "check", "--relay", p).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), fmt.Sprintf("config %s: admin.token_file: required: admin.listen \"0.0.0.0:0\" is not a loopback address", p))
}

// chromiumPath finds Debian's chromium, or skips (fails with
// MCPTUN_REQUIRE_TOOLS=1).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv(conformance.EnvRequireTools) == "1" {
		t.Fatalf("%s=1 but chromium is not installed (apt-get install chromium; .ci/install-tools.sh does it)", conformance.EnvRequireTools)
	}
	t.Skip("skipping: chromium is not installed (apt-get install chromium)")
	return ""
}

// TestStatusPageInBrowser: the status page, in a real headless browser,
// shows the agent and its server, and the server's request count goes up
// after an MCP call.
func TestStatusPageInBrowser(t *testing.T) {
	chrome := chromiumPath(t)
	d, relayAdmin, agentAdmin := deployAdmin(t)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chrome), chromedp.NoSandbox,
		chromedp.Flag("disable-gpu", true), chromedp.UserDataDir(t.TempDir()))
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	// The first Run starts the browser and must not carry a timeout (it
	// would end the browser); the rest do.
	_, err := chromedp.Run(bctx, chromedp.Navigate(relayAdmin+"/#token="+adminToken))
	require.NoError(t, err)
	ctx, cancelT := context.WithTimeout(bctx, 30*time.Second)
	defer cancelT()
	require.NoError(t, chromedp.Do(ctx,
		chromedp.WaitVisible(`tr[data-agent="dc1"]`),
		chromedp.WaitVisible(`tr[data-server="dc1/notes"]`),
	))
	agentRow, err := chromedp.Run(ctx, chromedp.Text(`tr[data-agent="dc1"]`))
	require.NoError(t, err)
	require.Contains(t, agentRow, "notes")
	require.Contains(t, agentRow, "quic")
	url, err := chromedp.Run(ctx, chromedp.Location())
	require.NoError(t, err)
	require.NotContains(t, url, adminToken, "the page takes the token off the address bar")

	count := func() int {
		s, err := chromedp.Run(ctx, chromedp.Text(`tr[data-server="dc1/notes"] td[data-requests]`))
		require.NoError(t, err)
		n, err := strconv.Atoi(strings.TrimSpace(s))
		require.NoError(t, err, "%q", s)
		return n
	}
	n0 := count()
	c, _ := newClient(t, d.relayURL+"/dc1/notes/mcp", clientToken)
	req := mcp.CallToolRequest{}
	req.Params.Name = "echo"
	req.Params.Arguments = map[string]any{"message": "hi"}
	_, err = c.CallTool(ctx, req)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return count() >= n0+3 }, 10*time.Second, 100*time.Millisecond,
		"the page refreshes itself and shows initialize, initialized and the call")

	// The agent's page: its tunnel, and the child the client's session
	// runs.
	require.NoError(t, chromedp.Do(ctx,
		chromedp.Navigate(agentAdmin+"/"),
		chromedp.WaitVisible(`tr[data-relay]`),
		chromedp.WaitVisible(`tr[data-server="notes"]`),
	))
	tunnelRow, err := chromedp.Run(ctx, chromedp.Text(`tr[data-relay]`))
	require.NoError(t, err)
	require.Contains(t, tunnelRow, "up")
	require.Contains(t, tunnelRow, "quic")
	serverRow, err := chromedp.Run(ctx, chromedp.Text(`tr[data-server="notes"]`))
	require.NoError(t, err)
	require.Contains(t, serverRow, "notes (stdio)")
}

// TestAdminReadyzWhileDraining: a relay told to stop is not ready while it
// finishes a call in flight; an agent with no tunnel up is not ready.
func TestAdminReadyzWhileDraining(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	}))
	t.Cleanup(func() {
		up.CloseClientConnections()
		up.Close()
	})
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{extra: "admin: {listen: \"127.0.0.1:0\"}\n"})
	d.startRelay(t)
	relayAdmin := d.relay.waitLine(t, adminStarted, 10*time.Second)[1]
	d.writeAgentConfig(t, agentOpts{transport: "quic", servers: fmt.Sprintf("  - {name: wiki, url: %q}\n", up.URL+"/mcp"),
		extra: "admin: {listen: \"127.0.0.1:0\"}\n"})
	d.startAgent(t)
	agentAdmin := d.agent.waitLine(t, adminStarted, 20*time.Second)[1]
	d.waitOnline(t, "wiki")

	done := make(chan int, 1)
	go func() {
		r, _ := http.NewRequest(http.MethodPost, d.relayURL+"/dc1/wiki/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`))
		r.Header.Set("Authorization", "Bearer "+clientToken)
		r.Header.Set("Content-Type", "application/json")
		r.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			done <- 0
			return
		}
		resp.Body.Close()
		done <- resp.StatusCode
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the call did not reach the upstream")
	}
	code, _ := adminGet(t, relayAdmin+"/readyz", "")
	require.Equal(t, http.StatusOK, code)
	require.NoError(t, d.relay.cmd.Process.Signal(syscall.SIGTERM))
	require.Eventually(t, func() bool {
		code, body := adminGet(t, relayAdmin+"/readyz", "")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "not ready: draining")
	}, 10*time.Second, 20*time.Millisecond)
	code, _ = adminGet(t, relayAdmin+"/healthz", "")
	require.Equal(t, http.StatusOK, code, "alive while it drains")
	close(release)
	select {
	case c := <-done:
		require.Equal(t, http.StatusOK, c, "the call in flight finished")
	case <-time.After(10 * time.Second):
		t.Fatal("the call in flight did not finish")
	}
	<-d.relay.done
	require.Eventually(t, func() bool {
		code, body := adminGet(t, agentAdmin+"/readyz", "")
		return code == http.StatusServiceUnavailable && strings.Contains(body, "no tunnel to a relay is up")
	}, 15*time.Second, 20*time.Millisecond)
}
