package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/tunnel"
)

const (
	replicaToken  = "agent-b-secret-0123456789"
	unlistedToken = "agent-x-secret-0123456789"
	pingBody      = `{"jsonrpc":"2.0","id":2,"method":"ping"}`
)

func replicaTagOf(token string) string { return tunnel.ReplicaTag(sha256.Sum256([]byte(token))) }

// startReplica runs one more agent process for dc1, with its own token,
// config and directory.
func (d *deployment) startReplica(t *testing.T, name, token, servers string) *proc {
	t.Helper()
	dir := filepath.Join(d.dir, name)
	require.NoError(t, os.MkdirAll(dir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.token"), []byte(token+"\n"), 0o600))
	cfg := fmt.Sprintf(`name: dc1
relay: {address: %q, token_file: agent.token, ca_file: %q, transport: quic}
servers:
%slog: {level: debug}
`, d.tunnelAddr, filepath.Join(d.dir, "relay.crt"), servers)
	p := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(p, []byte(cfg), 0o600))
	return startProc(t, name, nil, mcptunBin, "agent", "--config", p)
}

// openReplicaSession initializes a session and returns the id the client got.
func openReplicaSession(t *testing.T, url string) string {
	t.Helper()
	r := rawPost(t, url, clientToken, "", initializeBody)
	require.Equal(t, http.StatusOK, r.StatusCode, r.Body)
	sid := r.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)
	require.Equal(t, http.StatusAccepted, rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).StatusCode)
	return sid
}

// statelessCall makes one 2026-07-28 request (server/discover) and says
// how it went: "" for a result, else the failure.
func statelessCall(ctx context.Context, hc *http.Client, url string) string {
	body := `{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{` + modernMeta + `}}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return err.Error()
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", modernVersion)
	req.Header.Set("Mcp-Method", "server/discover")
	req.Header.Set("Authorization", "Bearer "+clientToken)
	resp, err := hc.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return fmt.Sprintf("%d, body cut: %v", resp.StatusCode, err)
	case resp.StatusCode != http.StatusOK || !strings.Contains(string(b), `"result"`):
		var eb struct {
			Error struct {
				Data struct{ Reason string } `json:"data"`
			} `json:"error"`
		}
		_ = json.Unmarshal(b, &eb)
		return fmt.Sprintf("%d %s", resp.StatusCode, eb.Error.Data.Reason)
	}
	return ""
}

type replicaCall struct {
	start, end time.Time
	fail       string
}

// TestAgentReplicas: two agent processes with tokens of their own serve
// dc1 (a stdio fixture and a url: fixture each). New sessions spread
// across both, and each session's later requests reach its replica (a
// url: session working proves the upstream got its own id back). A third
// process with a token the relay does not list is refused and takes
// nothing. Then replica B is killed (SIGKILL) under a load of stateless
// calls: once the relay notices (within 5 s), no call fails; A's sessions
// carry on; B's get 404 session_not_found.
func TestAgentReplicas(t *testing.T) {
	httpFixture := startProc(t, "http-fixture", nil, fixtureBin, "--http", "127.0.0.1:0")
	fixtureURL := httpFixture.waitLine(t, regexp.MustCompile(`^listening (http://\S+)`), 20*time.Second)[1]
	servers := fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"]}\n  - {name: wiki, url: %q}\n", fixtureBin, fixtureURL)
	tagA, tagB := replicaTagOf(agentToken), replicaTagOf(replicaToken)

	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{agentHashes: []string{sha256Hex(agentToken), sha256Hex(replicaToken)}})
	d.startRelay(t)
	d.writeAgentConfig(t, agentOpts{transport: "quic", servers: servers})
	d.startAgent(t)
	b := d.startReplica(t, "agent-b", replicaToken, servers)
	d.relay.waitLine(t, regexp.MustCompile(`agent connected".* agent=dc1 replica=\S+ replicas=2`), 30*time.Second)

	// (d) A token not listed: refused, and never a replica.
	x := d.startReplica(t, "agent-x", unlistedToken, servers)
	x.waitLine(t, regexp.MustCompile(`(?i)refused.*credential`), 20*time.Second)

	// New sessions spread across both replicas, on both kinds of server.
	sessions := map[string]map[string][]string{} // server → tag → ids
	for _, server := range []string{"notes", "wiki"} {
		url := d.relayURL + "/dc1/" + server + "/mcp"
		sessions[server] = map[string][]string{}
		for range 10 {
			sid := openReplicaSession(t, url)
			tag, _, ok := strings.Cut(sid, ".")
			require.True(t, ok, "session id %q carries no replica tag", sid)
			require.Contains(t, []string{tagA, tagB}, tag, "session %q on a replica that is neither A nor B", sid)
			r := rawPost(t, url, clientToken, sid, pingBody)
			require.Equal(t, http.StatusOK, r.StatusCode, "ping in session %s: %s", sid, r.Body)
			sessions[server][tag] = append(sessions[server][tag], sid)
		}
		na, nb := len(sessions[server][tagA]), len(sessions[server][tagB])
		t.Logf("%s: 10 new sessions: %d on replica A, %d on replica B", server, na, nb)
		require.LessOrEqual(t, max(na-nb, nb-na), 1, "%s: sessions spread %d/%d, want round robin", server, na, nb)
	}
	require.False(t, d.relay.hasLine(regexp.MustCompile(`replicas=3`)), "the unlisted credential became a replica")
	require.False(t, x.hasLine(regexp.MustCompile(`connected to relay`)), "the unlisted agent connected")

	// (b) Kill B under load.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var results []replicaCall
	var wg sync.WaitGroup
	for i := range 4 {
		server := []string{"notes", "wiki"}[i%2]
		wg.Go(func() {
			hc := &http.Client{Timeout: 30 * time.Second}
			defer hc.CloseIdleConnections()
			for ctx.Err() == nil {
				start := time.Now()
				fail := statelessCall(ctx, hc, d.relayURL+"/dc1/"+server+"/mcp")
				if ctx.Err() != nil {
					return
				}
				mu.Lock()
				results = append(results, replicaCall{start, time.Now(), fail})
				mu.Unlock()
			}
		})
	}
	count := func(after time.Time) (ok, failed int) {
		mu.Lock()
		defer mu.Unlock()
		for _, r := range results {
			if r.start.After(after) {
				if r.fail == "" {
					ok++
				} else {
					failed++
				}
			}
		}
		return ok, failed
	}
	warm := time.Now()
	require.Eventually(t, func() bool { n, _ := count(warm); return n >= 20 }, 20*time.Second, 10*time.Millisecond, "load never got going")
	killed := time.Now()
	require.NoError(t, b.cmd.Process.Signal(syscall.SIGKILL))
	d.relay.waitLine(t, regexp.MustCompile(`agent disconnected".* agent=dc1 replica=`+tagB), 15*time.Second)
	noticed := time.Now()
	require.Eventually(t, func() bool { n, _ := count(noticed); return n >= 100 }, 30*time.Second, 10*time.Millisecond,
		"stateless calls after the relay noticed")
	cancel()
	wg.Wait()

	var lastFail time.Time
	var fails []string
	for _, r := range results {
		if r.fail == "" {
			continue
		}
		fails = append(fails, fmt.Sprintf("+%s: %s", r.start.Sub(killed).Round(time.Millisecond), r.fail))
		if r.end.After(lastFail) {
			lastFail = r.end
		}
		require.False(t, r.start.After(noticed), "a stateless call started %s after the relay noticed failed: %s", r.start.Sub(noticed), r.fail)
	}
	failover := time.Duration(0)
	if !lastFail.IsZero() {
		failover = lastFail.Sub(killed)
	}
	t.Logf("replica B killed: relay noticed after %s; %d stateless calls, %d failed; last failure %s after the kill (failover); failures: %v",
		noticed.Sub(killed).Round(time.Millisecond), len(results), len(fails), failover.Round(time.Millisecond), fails)
	require.Less(t, noticed.Sub(killed), 5*time.Second+time.Second, "the relay noticed the dead replica late (promise: 5 s; 1 s for the log's way)")

	for _, server := range []string{"notes", "wiki"} {
		url := d.relayURL + "/dc1/" + server + "/mcp"
		for _, sid := range sessions[server][tagA] {
			r := rawPost(t, url, clientToken, sid, pingBody)
			require.Equal(t, http.StatusOK, r.StatusCode, "%s: replica A's session %s after B died: %s", server, sid, r.Body)
		}
		for _, sid := range sessions[server][tagB] {
			r := rawPost(t, url, clientToken, sid, pingBody)
			require.Equal(t, http.StatusNotFound, r.StatusCode, "%s: replica B's session %s after B died: %s", server, sid, r.Body)
			require.Contains(t, r.Body, `"reason":"session_not_found"`)
		}
		// And the client starts again, on A.
		sid := openReplicaSession(t, url)
		require.True(t, strings.HasPrefix(sid, tagA+"."), "new session %q after B died", sid)
	}
}
