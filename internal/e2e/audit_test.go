package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// TestAuditTrailAndAccessLog runs the audit trail, `mcptun audit verify`,
// the relay's access line and the runtime log level as deployed: a real
// MCP client calls a stdio and a url: server through relay and agent;
// every call, and a refusal of the agent's (a server's rate limit), is a
// line of the agent's audit file; verify passes on it and fails, naming
// the line, on an edited, a deleted and a swapped line; the relay logs an
// access line for a 200, a 401 and a 404.
func TestAuditTrailAndAccessLog(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{})
	d.startRelay(t)
	auditFile := filepath.Join(d.dir, "audit.log")
	d.writeAgentConfig(t, agentOpts{transport: "quic",
		servers: fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"]}\n", fixtureBin) +
			fmt.Sprintf("  - {name: wiki, url: %q}\n", httpURL) +
			fmt.Sprintf("  - {name: limited, command: [%q, \"--stdio\"], rate_limit: {requests_per_second: 0.001, burst: 1}}\n", fixtureBin),
		extra: "audit: {file: audit.log}\n"})
	d.startAgent(t)
	d.waitOnline(t, "notes")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, server := range []string{"notes", "wiki"} {
		c, _ := newClient(t, d.relayURL+"/dc1/"+server+"/mcp", clientToken)
		req := mcp.CallToolRequest{}
		req.Params.Name = mcptest.ToolEcho
		req.Params.Arguments = map[string]any{"text": "audited " + server}
		res, err := c.CallTool(ctx, req)
		require.NoError(t, err)
		require.Contains(t, textOf(res), "audited "+server)
		require.NoError(t, c.Close())
	}
	// The agent's own refusal: the limited server's one exchange is its
	// initialize, so the call is over its rate limit.
	url := d.relayURL + "/dc1/limited/mcp"
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
	r := rawPost(t, url, clientToken, "", init)
	require.Equal(t, http.StatusOK, r.StatusCode, r.Body)
	sid := r.Header.Get("Mcp-Session-Id")
	r = rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"refused"}}}`)
	require.Equal(t, http.StatusTooManyRequests, r.StatusCode, r.Body)
	// The relay's refusals: no token (401), no such server (404).
	require.Equal(t, http.StatusUnauthorized, rawPost(t, d.relayURL+"/dc1/notes/mcp", "", "", init).StatusCode)
	require.Equal(t, http.StatusNotFound, rawPost(t, d.relayURL+"/dc1/nosuch/mcp", clientToken, "", init).StatusCode)

	// The runtime log level: SIGUSR1 and SIGUSR2 change it (and never end
	// the process).
	require.NoError(t, d.relay.cmd.Process.Signal(syscall.SIGUSR1))
	d.relay.waitLine(t, regexp.MustCompile(`msg="log level changed" level=debug .*by="user defined signal 1"`), 10*time.Second)
	require.NoError(t, d.relay.cmd.Process.Signal(syscall.SIGUSR2))
	d.relay.waitLine(t, regexp.MustCompile(`msg="log level changed" level=debug configured=debug by="user defined signal 2"`), 10*time.Second)

	// The access lines (the 200 of an echo call, the 401, the 404).
	d.relay.waitLine(t, regexp.MustCompile(`msg=access component=http client=ci agent=dc1 server=notes method=tools/call status=200 .*transport=quic`), 10*time.Second)
	d.relay.waitLine(t, regexp.MustCompile(`msg=access component=http client="" agent=dc1 server=notes status=401 reason=unauthorized`), 10*time.Second)
	d.relay.waitLine(t, regexp.MustCompile(`msg=access component=http client=ci agent=dc1 server=nosuch status=404 reason=unknown_server`), 10*time.Second)
	require.False(t, d.relay.hasLine(regexp.MustCompile(regexp.QuoteMeta(clientToken))), "no token in the relay's log")

	d.agent.stop(t) // closes the trail: every line is written
	b, err := os.ReadFile(auditFile)
	require.NoError(t, err)
	fi, err := os.Stat(auditFile)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	var lines []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var m map[string]any
		require.NoError(t, json.Unmarshal(l, &m))
		lines = append(lines, m)
	}
	find := func(kv ...string) map[string]any {
	next:
		for _, l := range lines {
			for i := 0; i+1 < len(kv); i += 2 {
				if fmt.Sprint(l[kv[i]]) != kv[i+1] {
					continue next
				}
			}
			return l
		}
		t.Fatalf("no audit line with %v in\n%s", kv, b)
		return nil
	}
	for _, server := range []string{"notes", "wiki"} {
		call := find("server", server, "method", "tools/call", "name", mcptest.ToolEcho)
		require.Equal(t, "ok", call["outcome"])
		require.Equal(t, "ci", call["client"])
		require.Equal(t, "dc1", call["agent"])
		require.NotEmpty(t, call["session"])
		require.Len(t, call["arguments_sha256"], 64)
		require.Regexp(t, `^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`, call["time"])
		find("server", server, "method", "initialize", "outcome", "ok")
	}
	refused := find("server", "limited", "method", "tools/call")
	require.Equal(t, "refused", refused["outcome"])
	require.Equal(t, "rate_limited", refused["reason"])
	require.EqualValues(t, 429, refused["status"])

	verify := func(files ...string) (string, error) {
		out, err := exec.Command(mcptunBin, append([]string{"audit", "verify"}, files...)...).CombinedOutput()
		return string(out), err
	}
	out, err := verify(auditFile)
	require.NoError(t, err, out)
	require.Contains(t, out, fmt.Sprintf("intact: %d lines", len(lines)))

	raw := bytes.SplitAfter(b, []byte("\n"))
	raw = raw[:len(raw)-1] // the empty piece after the last newline
	require.Greater(t, len(raw), 5)
	tamper := func(name string, edit func([][]byte) [][]byte) string {
		cp := make([][]byte, len(raw))
		copy(cp, raw)
		p := filepath.Join(d.dir, name+".log")
		require.NoError(t, os.WriteFile(p, bytes.Join(edit(cp), nil), 0o600))
		return p
	}
	for _, tc := range []struct {
		name string
		edit func([][]byte) [][]byte
		line int
	}{
		{"edited", func(l [][]byte) [][]byte {
			l[3] = bytes.Replace(l[3], []byte(`"client":"ci"`), []byte(`"client":"cj"`), 1)
			return l
		}, 4},
		{"deleted", func(l [][]byte) [][]byte { return append(l[:2:2], l[3:]...) }, 3},
		{"swapped", func(l [][]byte) [][]byte { l[2], l[3] = l[3], l[2]; return l }, 3},
	} {
		p := tamper(tc.name, tc.edit)
		out, err := verify(p)
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee, "%s: verify must fail: %s", tc.name, out)
		require.NotZero(t, ee.ExitCode())
		require.Contains(t, out, fmt.Sprintf("%s:%d:", p, tc.line), "%s: names the line: %s", tc.name, out)
		require.True(t, strings.Contains(out, "NOT INTACT"), out)
	}
}
