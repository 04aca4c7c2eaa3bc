package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestAgentKilledMidExchange: the agent dies (SIGKILL) while a request it
// passed on is in flight. Whatever the relay notices first — the stream
// reset, or the agent's tunnel gone — the client gets one answer: 502
// upstream_outcome_unknown (the request had gone out; it may have run).
// QUIC and TCP.
func TestAgentKilledMidExchange(t *testing.T) {
	arrived := make(chan struct{}, 1)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed) // the harness's probes
			return
		}
		select {
		case arrived <- struct{}{}:
		case <-r.Context().Done():
			return
		}
		<-r.Context().Done() // never answers: the agent dies first
	}))
	t.Cleanup(func() {
		up.CloseClientConnections()
		up.Close()
	})
	for _, transport := range []string{"tcp", "quic"} {
		t.Run(transport, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: transport,
				servers: fmt.Sprintf("  - {name: wiki, url: %q}\n", up.URL+"/mcp")})
			d.waitOnline(t, "wiki")
			type result struct {
				status int
				body   string
				err    error
			}
			answer := make(chan result, 1)
			go func() {
				req, _ := http.NewRequest(http.MethodPost, d.relayURL+"/dc1/wiki/mcp",
					strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`))
				req.Header.Set("Authorization", "Bearer "+clientToken)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					answer <- result{err: err}
					return
				}
				defer resp.Body.Close()
				b, err := io.ReadAll(resp.Body)
				answer <- result{resp.StatusCode, string(b), err}
			}()
			select {
			case <-arrived:
			case <-time.After(20 * time.Second):
				t.Fatal("the request never reached the upstream")
			}
			require.NoError(t, d.agent.cmd.Process.Signal(syscall.SIGKILL))
			var r result
			select {
			case r = <-answer:
			case <-time.After(40 * time.Second):
				t.Fatal("no answer after the agent died")
			}
			require.NoError(t, r.err)
			require.Equal(t, http.StatusBadGateway, r.status, r.body)
			require.Contains(t, r.body, `"reason":"upstream_outcome_unknown"`)
		})
	}
}
