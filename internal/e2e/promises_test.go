package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// Tests of promises the README makes that no other test exercised, each
// with the real binary.

// "The kernel kills it if the agent dies": a stdio child of an agent that
// is SIGKILLed (no cleanup runs) is gone at once. The child is a shell
// running the fixture and then a long sleep, so it does not end by itself
// when its stdin closes: only the parent-death signal ends it.
func TestStdioChildKilledWithAgent(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", servers: fmt.Sprintf(
		"  - {name: notes, command: [sh, -c, %q]}\n", fixtureBin+" --stdio; exec sleep 600")})
	d.waitOnline(t, "notes")
	url := d.relayURL + "/dc1/notes/mcp"
	var children []int
	for range 2 {
		r := rawPost(t, url, clientToken, "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
		require.Equal(t, http.StatusOK, r.StatusCode, r.Body)
	}
	agent := d.agent.cmd.Process.Pid
	require.Eventually(t, func() bool { children = childrenOf(agent); return len(children) == 2 }, 10*time.Second, 10*time.Millisecond,
		"the agent runs a child per session")
	for _, c := range children {
		require.NotEqual(t, agent, pgidOf(t, c), "the child is in a process group of its own")
	}

	require.NoError(t, d.agent.cmd.Process.Signal(syscall.SIGKILL))
	<-d.agent.done
	// The signal is sent by the kernel as the agent exits; 5 s only bounds
	// a loaded machine's scheduling.
	deadline := time.Now().Add(5 * time.Second)
	for _, c := range children {
		for !gone(c) {
			if time.Now().After(deadline) {
				t.Fatalf("stdio child %d still runs after the agent was SIGKILLed", c)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func pgidOf(t *testing.T, pid int) int {
	t.Helper()
	pgid, err := syscall.Getpgid(pid)
	require.NoError(t, err)
	return pgid
}

// gone reports whether pid no longer runs (a zombie is gone).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && (s[i+2] == 'Z' || s[i+2] == 'X')
}

// "Clients of 2025-03-26": a real client (mcp-go) pinned to 2025-03-26
// negotiates it through relay and agent, to a stdio server and a url:
// server, and calls tools with progress; and a raw client of that
// revision, which has no MCP-Protocol-Version header, is served too.
func TestClient20250326(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", httpURL: httpURL})
	d.waitOnline(t, "wiki")
	const version = "2025-03-26"
	for _, server := range []string{"notes", "wiki"} {
		t.Run(server, func(t *testing.T) {
			url := d.relayURL + "/dc1/" + server + "/mcp"
			tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + clientToken}))
			require.NoError(t, err)
			c := client.NewClient(tr, client.WithProtocolVersion(version))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			require.NoError(t, c.Start(ctx))
			defer c.Close()
			init := mcp.InitializeRequest{}
			init.Params.ClientInfo = mcp.Implementation{Name: "e2e-2025-03-26", Version: "1"}
			init.Params.ProtocolVersion = version
			res, err := c.Initialize(ctx, init)
			require.NoError(t, err)
			require.Equal(t, version, res.ProtocolVersion, "negotiated through the tunnel")
			require.NotEmpty(t, tr.GetSessionId())

			call := mcp.CallToolRequest{}
			call.Params.Name = mcptest.ToolEcho
			call.Params.Arguments = map[string]any{"text": "from " + version}
			out, err := c.CallTool(ctx, call)
			require.NoError(t, err)
			require.Contains(t, textOf(out), "from "+version)

			progress := make(chan float64, 10)
			c.OnNotification(func(n mcp.JSONRPCNotification) {
				if p, ok := n.Params.AdditionalFields["progress"].(float64); ok && n.Method == "notifications/progress" {
					progress <- p
				}
			})
			call = mcp.CallToolRequest{}
			call.Params.Name = mcptest.ToolWithProgress
			call.Params.Meta = &mcp.Meta{ProgressToken: "p-2025-03-26"}
			out, err = c.CallTool(ctx, call)
			require.NoError(t, err)
			require.False(t, out.IsError, textOf(out))
			require.Len(t, progress, len(mcptest.ProgressSteps), "every progress notification arrived before the result")

			// The raw client of 2025-03-26: no MCP-Protocol-Version.
			req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"jsonrpc":"2.0","id":5,"method":"tools/list"}`))
			require.NoError(t, err)
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("Authorization", "Bearer "+clientToken)
			req.Header.Set("Mcp-Session-Id", tr.GetSessionId())
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body := readAll(t, resp)
			require.Equal(t, http.StatusOK, resp.StatusCode, body)
			require.Contains(t, body, mcptest.ToolEcho)
		})
	}
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// The relay's HTTPS front (http.cert_file, http.key_file): a real MCP
// client that verifies the certificate works through it, and plain HTTP
// to the same port is not served.
func TestRelayHTTPS(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{})
	b, err := os.ReadFile(d.relayYAML)
	require.NoError(t, err)
	cfg := strings.Replace(string(b), `http: {listen: "127.0.0.1:0"}`, `http: {listen: "127.0.0.1:0", cert_file: relay.crt, key_file: relay.key}`, 1)
	require.NotEqual(t, string(b), cfg)
	require.NoError(t, os.WriteFile(d.relayYAML, []byte(cfg), 0o600))
	d.startRelay(t)
	require.True(t, strings.HasPrefix(d.relayURL, "https://"), d.relayURL)
	d.writeAgentConfig(t, agentOpts{transport: "quic", httpURL: httpURL})
	d.startAgent(t)

	pem, err := os.ReadFile(filepath.Join(d.dir, "relay.crt"))
	require.NoError(t, err)
	roots := x509.NewCertPool()
	require.True(t, roots.AppendCertsFromPEM(pem))
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}
	defer hc.CloseIdleConnections()

	url := d.relayURL + "/dc1/wiki/mcp"
	require.Eventually(t, func() bool {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Authorization", "Bearer "+clientToken)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := hc.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode != http.StatusServiceUnavailable
	}, 30*time.Second, 20*time.Millisecond, "the agent comes online behind the HTTPS front")

	for _, server := range []string{"wiki", "notes"} {
		tr, err := transport.NewStreamableHTTP(d.relayURL+"/dc1/"+server+"/mcp", transport.WithHTTPBasicClient(hc),
			transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + clientToken}))
		require.NoError(t, err)
		c := client.NewClient(tr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		require.NoError(t, c.Start(ctx))
		init := mcp.InitializeRequest{}
		init.Params.ClientInfo = mcp.Implementation{Name: "e2e-https", Version: "1"}
		init.Params.ProtocolVersion = mcp.LATEST_LEGACY_PROTOCOL_VERSION
		_, err = c.Initialize(ctx, init)
		require.NoError(t, err, server)
		call := mcp.CallToolRequest{}
		call.Params.Name = mcptest.ToolEcho
		call.Params.Arguments = map[string]any{"text": "over https"}
		res, err := c.CallTool(ctx, call)
		require.NoError(t, err, server)
		require.Contains(t, textOf(res), "over https")
		cancel()
		require.NoError(t, c.Close())
	}

	// Plain HTTP to the TLS port gets no MCP answer.
	resp, err := http.Get(strings.Replace(url, "https://", "http://", 1))
	if err == nil {
		body := readAll(t, resp)
		require.NotEqual(t, http.StatusOK, resp.StatusCode, body)
		require.NotContains(t, body, "jsonrpc")
	}
	// A client that does not trust the certificate is refused by TLS.
	_, err = http.Get(url)
	require.Error(t, err)
	require.Contains(t, err.Error(), "certificate")
}

// `mcptun bench` against a real relay and agent: the figures come back as
// JSON with requests and no errors, and a wrong token fails fast naming
// the step and the status, with exit code 1.
func TestBenchCLI(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", httpURL: httpURL})
	d.waitOnline(t, "wiki")
	for _, server := range []string{"wiki", "notes"} {
		url := d.relayURL + "/dc1/" + server + "/mcp"
		cmd := exec.Command(mcptunBin, "bench", "--url", url, "--sessions", "2", "--warmup", "100ms", "--duration", "700ms",
			"--tool", mcptest.ToolEcho, "--args", `{"text":"bench"}`, "--json")
		cmd.Env = append(os.Environ(), "MCPTUN_BENCH_TOKEN="+clientToken)
		out, err := cmd.Output()
		require.NoError(t, err, "bench %s: %s", server, out)
		var res struct {
			Requests, Errors int64
			RPS              float64
			Sessions         int
			P50              int64 `json:"p50_ns"`
		}
		require.NoError(t, json.Unmarshal(out, &res), "%s", out)
		require.Positive(t, res.Requests, "%s", out)
		require.Zero(t, res.Errors, "%s", out)
		require.Equal(t, 2, res.Sessions)
		require.Positive(t, res.RPS)
		require.Positive(t, res.P50)
	}

	cmd := exec.Command(mcptunBin, "bench", "--url", d.relayURL+"/dc1/wiki/mcp", "--token", "wrong", "--duration", "1s")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	require.ErrorAs(t, err, &ee, "%s", out)
	require.Equal(t, 1, ee.ExitCode())
	require.Regexp(t, regexp.MustCompile(`initialize: HTTP 401`), string(out))
}
