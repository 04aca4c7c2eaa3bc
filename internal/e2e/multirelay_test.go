package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Several relays (issue 12): an agent keeps a tunnel to every relay in its
// relay.address, so a session lives on when the relay it was opened
// through dies: the client sends its next calls to another relay with the
// same Mcp-Session-Id.

// startRelays starts n relay processes sharing one certificate, each with
// its own tunnel and HTTP port, and returns them with their tunnel
// addresses and HTTP URLs.
func startRelays(t *testing.T, dir string, n int) (relays []*proc, tunnels, urls []string) {
	t.Helper()
	for i := range n {
		p := writeRelayConfig(t, dir, relayOpts{})
		cfg := filepath.Join(dir, fmt.Sprintf("relay%d.yaml", i+1))
		require.NoError(t, os.Rename(p, cfg))
		r := startProc(t, fmt.Sprintf("relay%d", i+1), nil, mcptunBin, "relay", "--config", cfg)
		m := r.waitLine(t, relayStarted, 20*time.Second)
		relays, tunnels, urls = append(relays, r), append(tunnels, m[1]), append(urls, m[2])
	}
	return relays, tunnels, urls
}

// writeMultiAgentConfig writes agent.yaml for agent dc1 with the stdio
// fixture "notes", listing every relay in tunnels.
func writeMultiAgentConfig(t *testing.T, dir string, tunnels []string) string {
	t.Helper()
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.token"), []byte(agentToken+"\n"), 0o600))
	var list []string
	for _, a := range tunnels {
		list = append(list, fmt.Sprintf("%q", a))
	}
	cfg := fmt.Sprintf(`name: dc1
relay: {address: [%s], token_file: agent.token, ca_file: relay.crt}
servers:
  - {name: notes, command: [%q, "--stdio"]}
log: {level: debug}
`, strings.Join(list, ", "), fixtureBin)
	p := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(p, []byte(cfg), 0o600))
	return p
}

func echoCall(id int, text string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":%q}}}`, id, text)
}

// callOK reports whether r is the echo tool's answer with text.
func callOK(r rawResp, err error, text string) bool {
	return err == nil && r.StatusCode == http.StatusOK && strings.Contains(r.Body, `"text":"`+text+`"`) && !strings.Contains(r.Body, `"isError":true`)
}

// Acceptance (a): two relays in one agent's config; a session opened
// through relay 1; relay 1 killed (SIGKILL): the same session continues
// through relay 2, with no failed call once the client has switched, and
// its stdio child is the same process.
func TestSessionSurvivesRelayLoss(t *testing.T) {
	dir := t.TempDir()
	relays, tunnels, urls := startRelays(t, dir, 2)
	agent := startProc(t, "agent", nil, mcptunBin, "agent", "--config", writeMultiAgentConfig(t, dir, tunnels))
	for _, a := range tunnels {
		agent.waitLine(t, regexp.MustCompile(`msg="tunnel: relay up" .*relay=`+regexp.QuoteMeta(a)), 30*time.Second)
	}
	mcp1, mcp2 := urls[0]+"/dc1/notes/mcp", urls[1]+"/dc1/notes/mcp"

	sid := openSession(t, mcp1)
	r := rawPost(t, mcp1, clientToken, sid, echoCall(1, "through relay 1"))
	require.True(t, callOK(r, nil, "through relay 1"), "call through relay 1: %d %s", r.StatusCode, r.Body)
	children := childrenOf(agent.cmd.Process.Pid)
	require.Len(t, children, 1, "one stdio child for the one session")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	require.NoError(t, relays[0].cmd.Process.Kill())
	killed := time.Now()
	// The client retries at once, first where it was, then at the other
	// relay, as a client given several relay URLs would.
	target, failedBefore := mcp1, 0
	var failover time.Duration
	for id := 2; ; id++ {
		require.Less(t, id, 1000, "no call succeeded through relay 2")
		r, err := post(ctx, target, sid, echoCall(id, "after"))
		if callOK(r, err, "after") {
			require.Equal(t, mcp2, target, "a call succeeded through the killed relay")
			failover = time.Since(killed)
			break
		}
		failedBefore++
		target = mcp2
	}
	t.Logf("failover: %v from SIGKILL to the first answer through relay 2 (%d failed calls before the switch)",
		failover.Round(10*time.Microsecond), failedBefore)

	// Once switched, every call of the session succeeds.
	for i := range 20 {
		text := fmt.Sprintf("call %d through relay 2", i)
		r, err := post(ctx, mcp2, sid, echoCall(100+i, text))
		require.True(t, callOK(r, err, text), "call %d of the session through relay 2: %v %d %s", i, err, r.StatusCode, r.Body)
	}
	require.Equal(t, children, childrenOf(agent.cmd.Process.Pid), "the session's stdio child was replaced")

	// The agent reports the lost relay and the one it still has.
	agent.waitLine(t, regexp.MustCompile(`msg="tunnel: relay down" .*relay=`+regexp.QuoteMeta(tunnels[0])+`.* relays_connected=1 relays=2`), 30*time.Second)
	t.Logf("the agent noticed relay 1's loss %v after the SIGKILL", time.Since(killed).Round(time.Millisecond))
	require.Error(t, relays[0].waitExit(t, 10*time.Second), "relay 1 was killed")
}

// The agent's drain (SIGTERM) reaches every relay: each answers new
// requests 503 agent_draining, the calls in flight through each get their
// results, and the agent exits 0 once they are done.
//
// Relay 2 is listed by name (localhost, resolved by the system): verified
// as "localhost" (the certificate has the name), and where localhost also
// has ::1 (not on every host) no second tunnel goes there.
func TestAgentDrainEveryRelay(t *testing.T) {
	dir := t.TempDir()
	relays, tunnels, urls := startRelays(t, dir, 2)
	tunnels[1] = "localhost:" + tunnels[1][strings.LastIndexByte(tunnels[1], ':')+1:]
	agent := startProc(t, "agent", nil, mcptunBin, "agent", "--config", writeMultiAgentConfig(t, dir, tunnels))
	for _, a := range tunnels {
		agent.waitLine(t, regexp.MustCompile(`msg="tunnel: relay up" .*relay=`+regexp.QuoteMeta(a)), 30*time.Second)
	}
	require.False(t, agent.hasLine(regexp.MustCompile(`msg="tunnel: relay added" .*dial=\[`)), "a tunnel to an IPv6 address of localhost, the relay's own IPv4 one being there")
	mcps := []string{urls[0] + "/dc1/notes/mcp", urls[1] + "/dc1/notes/mcp"}
	// One session, calls in flight through both relays.
	sid := openSession(t, mcps[0])
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var results []<-chan callResult
	for i, u := range mcps {
		out := make(chan callResult, 2)
		for j := range 2 {
			// Request ids unique in the session, whichever relay carries them.
			body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":%d}}}`, 100+2*i+j, drainSleepMs)
			go func() {
				r, err := post(ctx, u, sid, body)
				out <- callResult{r, err}
			}()
		}
		results = append(results, out)
	}
	agent.waitLines(t, sleepingLine, 4, 20*time.Second)
	agent.signal(t, syscall.SIGTERM)
	// Each relay hears it (the agent would refuse new requests itself too,
	// so the relays' own word is what shows the tunnel carried the drain).
	for _, r := range relays {
		r.waitLine(t, regexp.MustCompile(`msg="tunnel: agent draining: routing it no new exchanges" .*agent=dc1`), 10*time.Second)
	}
	for i, u := range mcps {
		r := waitRefusal(t, u, sid)
		require.Equal(t, "agent_draining", reason(r.Body), "new request through relay %d during the drain: %s", i+1, r.Body)
	}
	for i, res := range results {
		answered, others := collect(t, res, 2, drainSleepMs)
		require.Equal(t, 2, answered, "calls in flight through relay %d across the agent's drain: %q", i+1, others)
	}
	require.NoError(t, agent.waitExit(t, 20*time.Second), "agent exit status")
}
