package e2e

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// The tunnel's promises about crashes (README, How it works → Tunnel): a
// relay restarted after SIGKILL is serving again within 3 s, a dead or
// frozen agent is noticed within 5 s (requests then fail fast with 503
// agent_offline instead of hanging), and a frozen agent that resumes is
// back within 3 s. Each test measures the time with real processes and
// logs it; the bound it asserts is the promise itself.

const (
	restartPromise = 3 * time.Second
	noticePromise  = 5 * time.Second
)

const initializeBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"crash","version":"1"}}}`

// postOnce sends one initialize to url with a deadline and returns the
// status (0 on a transport error) and body.
func postOnce(url string, timeout time.Duration) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	r, err := post(ctx, url, "", initializeBody)
	if err != nil && r.StatusCode == 0 {
		return 0, err.Error()
	}
	return r.StatusCode, r.Body
}

// pollUntil posts to url until ok accepts an answer, and returns how long
// that took from start. It gives up after limit (measured from start) so
// that a broken promise fails the test instead of hanging it; the caller
// compares the result with the promise.
func pollUntil(t *testing.T, url string, start time.Time, limit time.Duration, ok func(int, string) bool) time.Duration {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var status int
	var body string
	for {
		left := time.Until(start.Add(limit))
		if left <= 0 {
			t.Fatalf("%s: no acceptable answer within %v of the event (last %d %s)", url, limit, status, body)
		}
		status, body = postOnce(url, left)
		if ok(status, body) {
			return time.Since(start)
		}
		<-tick.C
	}
}

func answered200(status int, _ string) bool { return status == http.StatusOK }

func answeredOffline(status int, body string) bool {
	return status == http.StatusServiceUnavailable && strings.Contains(body, `"reason":"agent_offline"`)
}

// crashTransports are the agent transports each crash test runs over.
var crashTransports = []struct{ name, transport, relayWants string }{
	{"quic", "quic", "quic"},
	{"tcp", "tcp", "tcp+yamux"},
}

// TestRelayKilledAndRestarted: SIGKILL the relay, start it again on the
// same port; calls through the agent work again within 3 s of the new
// relay's start.
func TestRelayKilledAndRestarted(t *testing.T) {
	httpURL := startHTTPFixture(t)
	for _, tc := range crashTransports {
		t.Run(tc.name, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: tc.transport, httpURL: httpURL})
			d.waitOnline(t, "wiki")
			url := d.relayURL + "/dc1/wiki/mcp"
			status, body := postOnce(url, 30*time.Second)
			require.Equal(t, http.StatusOK, status, body)

			require.NoError(t, d.relay.cmd.Process.Signal(syscall.SIGKILL))
			<-d.relay.done
			d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{tunnelListen: d.tunnelAddr})
			d.startRelay(t)
			start := time.Now()
			took := pollUntil(t, d.relayURL+"/dc1/wiki/mcp", start, 30*time.Second, answered200)
			t.Logf("%s: calls work %v after the restarted relay started", tc.name, took.Round(time.Millisecond))
			require.LessOrEqual(t, took, restartPromise, "calls work again within %v of a relay restart", restartPromise)
		})
	}
}

// TestAgentKilled: SIGKILL the agent; within 5 s instead of hanging, new
// calls get 503 agent_offline and the call in flight 502
// upstream_outcome_unknown naming the agent's disconnection (it had gone
// out: it may have run, so it is not 503's "retry is safe").
func TestAgentKilled(t *testing.T) {
	fixture := startProc(t, "http-fixture", nil, fixtureBin, "--http", "127.0.0.1:0")
	httpURL := fixture.waitLine(t, regexp.MustCompile(`^listening (http://\S+)`), 20*time.Second)[1]
	for _, tc := range crashTransports {
		t.Run(tc.name, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: tc.transport, httpURL: httpURL})
			d.waitOnline(t, "wiki")
			url := d.relayURL + "/dc1/wiki/mcp"
			status, body := postOnce(url, 30*time.Second)
			require.Equal(t, http.StatusOK, status, body)

			// A call in flight at the agent when it dies.
			c, _ := newClient(t, d.relayURL+"/dc1/wiki/mcp", clientToken)
			inflight := make(chan error, 1)
			const ms = 59_001 // names this call in the fixture's log
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				req := mcp.CallToolRequest{}
				req.Params.Name = mcptest.ToolSleep
				req.Params.Arguments = map[string]any{"ms": ms}
				_, err := c.CallTool(ctx, req)
				inflight <- err
			}()
			fixture.waitLine(t, regexp.MustCompile(fmt.Sprintf(`mcptest: sleeping.*ms=%d`, ms)), 20*time.Second)

			require.NoError(t, d.agent.cmd.Process.Signal(syscall.SIGKILL))
			start := time.Now()
			took := pollUntil(t, url, start, 30*time.Second, answeredOffline)
			t.Logf("%s: new calls get 503 agent_offline %v after the agent was killed", tc.name, took.Round(time.Millisecond))
			assert.LessOrEqual(t, took, noticePromise, "a dead agent is noticed within %v", noticePromise)
			select {
			case err := <-inflight:
				require.Error(t, err, "the call in flight fails")
				require.Contains(t, err.Error(), "disconnected after the request was sent", "the call in flight gets 502 upstream_outcome_unknown")
				t.Logf("%s: the call in flight ended %v after the kill: %v", tc.name, time.Since(start).Round(time.Millisecond), err)
			case <-time.After(noticePromise):
				t.Fatalf("the call in flight was still hanging %v after the agent was killed", time.Since(start))
			}
			<-d.agent.done
		})
	}
}

// TestAgentFrozen: SIGSTOP the agent for 20 s (longer than the idle
// timeout the tunnel had before, 15 s). The relay notices within 5 s and
// answers 503 agent_offline; after SIGCONT the agent is back within 3 s.
func TestAgentFrozen(t *testing.T) {
	httpURL := startHTTPFixture(t)
	for _, tc := range crashTransports {
		t.Run(tc.name, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: tc.transport, httpURL: httpURL})
			d.waitOnline(t, "wiki")
			url := d.relayURL + "/dc1/wiki/mcp"
			status, body := postOnce(url, 30*time.Second)
			require.Equal(t, http.StatusOK, status, body)

			pid := d.agent.cmd.Process.Pid
			require.NoError(t, syscall.Kill(pid, syscall.SIGSTOP))
			cont := sync.OnceFunc(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
			t.Cleanup(cont) // never leave a stopped process behind
			frozen := time.Now()
			took := pollUntil(t, url, frozen, 20*time.Second, answeredOffline)
			t.Logf("%s: the relay answers 503 agent_offline %v after the agent froze", tc.name, took.Round(time.Millisecond))
			assert.LessOrEqual(t, took, noticePromise, "a frozen agent is noticed within %v", noticePromise)

			// The freeze itself is the scenario: 20 s, as a VM pause or a
			// stopped container would last.
			<-time.After(time.Until(frozen.Add(20 * time.Second)))
			cont()
			start := time.Now()
			took = pollUntil(t, url, start, 30*time.Second, answered200)
			t.Logf("%s: calls work %v after the agent resumed", tc.name, took.Round(time.Millisecond))
			require.LessOrEqual(t, took, restartPromise, "a resumed agent is back within %v", restartPromise)
		})
	}
}
