package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// startHTTPFixture runs the fixture as an HTTP MCP server in its own process.
func startHTTPFixture(t *testing.T) string {
	t.Helper()
	p := startProc(t, "http-fixture", nil, fixtureBin, "--http", "127.0.0.1:0")
	m := p.waitLine(t, regexp.MustCompile(`^listening (http://\S+)`), 20*time.Second)
	return m[1]
}

type samplingAnswer struct{}

func (samplingAnswer) CreateMessage(_ context.Context, req mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
	return &mcp.CreateMessageResult{
		SamplingMessage: mcp.SamplingMessage{Role: mcp.RoleAssistant, Content: mcp.NewTextContent("sampled through the tunnel")},
		Model:           "e2e-model",
		StopReason:      "endTurn",
	}, nil
}

// newClient connects a real MCP client (mcp-go, 2025-11-25 era) to url.
func newClient(t *testing.T, url, token string) (*client.Client, *transport.StreamableHTTP) {
	t.Helper()
	tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + token}))
	require.NoError(t, err)
	c := client.NewClient(tr, client.WithSamplingHandler(samplingAnswer{}), client.WithProtocolVersion(mcp.LATEST_LEGACY_PROTOCOL_VERSION))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.Start(ctx))
	t.Cleanup(func() { _ = c.Close() })
	init := mcp.InitializeRequest{}
	init.Params.ClientInfo = mcp.Implementation{Name: "e2e", Version: "1"}
	init.Params.ProtocolVersion = mcp.LATEST_LEGACY_PROTOCOL_VERSION
	_, err = c.Initialize(ctx, init)
	require.NoError(t, err, "initialize through %s", url)
	return c, tr
}

// exerciseMCP runs the foundation's MCP flow against one endpoint.
func exerciseMCP(t *testing.T, url string) {
	t.Helper()
	c, tr := newClient(t, url, clientToken)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	require.NotEmpty(t, tr.GetSessionId(), "server minted a session")

	tools, err := c.ListTools(ctx, mcp.ListToolsRequest{})
	require.NoError(t, err)
	names := map[string]bool{}
	for _, tool := range tools.Tools {
		names[tool.Name] = true
	}
	for _, want := range []string{mcptest.ToolSimpleText, mcptest.ToolWithProgress, mcptest.ToolSampling, mcptest.ToolEcho} {
		require.True(t, names[want], "tools/list has %s", want)
	}

	// tools/call
	req := mcp.CallToolRequest{}
	req.Params.Name = mcptest.ToolEcho
	req.Params.Arguments = map[string]any{"text": "hello through the tunnel"}
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err)
	require.False(t, res.IsError, textOf(res))
	require.Contains(t, textOf(res), "hello through the tunnel")

	// progress notifications reach this client before the result
	var mu sync.Mutex
	var progress []float64
	c.OnNotification(func(n mcp.JSONRPCNotification) {
		if n.Method == "notifications/progress" {
			mu.Lock()
			defer mu.Unlock()
			if p, ok := n.Params.AdditionalFields["progress"].(float64); ok {
				progress = append(progress, p)
			}
		}
	})
	preq := mcp.CallToolRequest{}
	preq.Params.Name = mcptest.ToolWithProgress
	preq.Params.Meta = &mcp.Meta{ProgressToken: "tok-1"}
	res, err = c.CallTool(ctx, preq)
	require.NoError(t, err)
	require.False(t, res.IsError, textOf(res))
	mu.Lock()
	require.NotEmpty(t, progress, "progress notifications arrived")
	require.Equal(t, float64(mcptest.ProgressTotal), progress[len(progress)-1])
	mu.Unlock()

	// a sampling request from the server, answered by this client
	sreq := mcp.CallToolRequest{}
	sreq.Params.Name = mcptest.ToolSampling
	sreq.Params.Arguments = map[string]any{"prompt": "say hi"}
	res, err = c.CallTool(ctx, sreq)
	require.NoError(t, err)
	require.False(t, res.IsError, "sampling tool result: %s", textOf(res))
	require.Contains(t, textOf(res), "sampled through the tunnel")

	// DELETE ends the session: the same session id is then unknown (404).
	// (mcp-go's Close sends DELETE without the configured headers, so the
	// relay would rightly answer 401; send it ourselves.)
	session := tr.GetSessionId()
	del := rawDo(t, http.MethodDelete, url, clientToken, session, "")
	require.Less(t, del.StatusCode, 300, "DELETE: %d %s", del.StatusCode, del.Body)
	resp := rawPost(t, url, clientToken, session, `{"jsonrpc":"2.0","id":99,"method":"ping"}`)
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "session is gone after DELETE")
}

func textOf(res *mcp.CallToolResult) string {
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String()
}

type rawResp struct {
	StatusCode int
	Header     http.Header
	Body       string
}

func rawPost(t *testing.T, url, token, session, body string) rawResp {
	t.Helper()
	return rawDo(t, http.MethodPost, url, token, session, body)
}

func rawDo(t *testing.T, method, url, token, session, body string) rawResp {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", mcp.LATEST_LEGACY_PROTOCOL_VERSION)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return rawResp{resp.StatusCode, resp.Header, string(b)}
}

// udpSinkWithFreeTCPPort binds a UDP port whose TCP twin is free at that
// moment: the relay then listens on TCP there. Other processes on a shared
// machine take ports too, so a port whose TCP twin is taken is passed over
// (the relay failing with "address already in use" was this test's flake).
func udpSinkWithFreeTCPPort(t *testing.T) net.PacketConn {
	t.Helper()
	for range 20 {
		sink, err := net.ListenPacket("udp", "127.0.0.1:0")
		require.NoError(t, err)
		ln, err := net.Listen("tcp", sink.LocalAddr().String())
		if err == nil {
			require.NoError(t, ln.Close())
			return sink
		}
		sink.Close()
	}
	t.Fatal("no UDP port with a free TCP twin in 20 tries")
	return nil
}

// TestTransports runs the MCP flow over every transport, to a stdio and an
// HTTP upstream.
func TestTransports(t *testing.T) {
	httpURL := startHTTPFixture(t)
	for _, tc := range []struct {
		name, transport, mux string
		blockUDP             bool
		wantTransport        string
	}{
		{name: "quic", transport: "quic", wantTransport: "quic"},
		{name: "tcp", transport: "tcp", wantTransport: "tcp+yamux"},
		{name: "quic+yamux", transport: "quic", mux: "yamux", wantTransport: "quic+yamux"},
		{name: "auto-udp-blocked", transport: "auto", blockUDP: true, wantTransport: "tcp+yamux"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &deployment{dir: t.TempDir()}
			ro := relayOpts{}
			if tc.blockUDP {
				// The relay serves TCP only; its UDP port is held by a
				// socket that swallows every datagram, so QUIC hangs
				// rather than failing fast, and auto must fall back.
				sink := udpSinkWithFreeTCPPort(t)
				sinkDone := make(chan struct{})
				go func() {
					defer close(sinkDone)
					buf := make([]byte, 2048)
					for {
						if _, _, err := sink.ReadFrom(buf); err != nil {
							return
						}
					}
				}()
				t.Cleanup(func() { sink.Close(); <-sinkDone })
				ro.tunnelListen = sink.LocalAddr().String()
				ro.disableQUIC = true
			}
			d.relayYAML = writeRelayConfig(t, d.dir, ro)
			d.startRelay(t)
			d.writeAgentConfig(t, agentOpts{transport: tc.transport, mux: tc.mux, httpURL: httpURL})
			d.startAgent(t)
			d.waitOnline(t, "notes")
			d.relay.waitLine(t, regexp.MustCompile(`transport=`+regexp.QuoteMeta(tc.wantTransport)), 5*time.Second)

			t.Run("stdio", func(t *testing.T) {
				exerciseMCP(t, d.relayURL+"/dc1/notes/mcp")
				waitNoChildren(t, d.agent.cmd.Process.Pid, 10*time.Second)
			})
			t.Run("http", func(t *testing.T) { exerciseMCP(t, d.relayURL+"/dc1/wiki/mcp") })
		})
	}
}

// TestClientAuth checks the relay's refusals with the real binary.
func TestClientAuth(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", httpURL: httpURL})
	d.waitOnline(t, "notes")
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
	for _, tc := range []struct {
		name, token, path string
		status            int
	}{
		{"missing token", "", "/dc1/notes/mcp", 401},
		{"wrong token", "not-a-token", "/dc1/notes/mcp", 401},
		{"out of scope", scopedToken, "/dc1/notes/mcp", 403},
		{"in scope", scopedToken, "/dc1/wiki/mcp", 200},
		{"unknown server", clientToken, "/dc1/nope/mcp", 404},
		{"offline agent", clientToken, "/dc2/notes/mcp", 503},
		{"within rate limit", throttledToken, "/dc1/wiki/mcp", 200},
		{"over rate limit", throttledToken, "/dc1/wiki/mcp", 429},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rawPost(t, d.relayURL+tc.path, tc.token, "", init)
			require.Equal(t, tc.status, r.StatusCode, "body %s", r.Body)
			if tc.status == 401 {
				require.Contains(t, r.Header.Get("WWW-Authenticate"), "Bearer")
			}
			if tc.status == 429 {
				require.NotEmpty(t, r.Header.Get("Retry-After"))
			}
			if tc.status != 200 {
				var body struct {
					Error struct {
						Message string `json:"message"`
					} `json:"error"`
				}
				require.NoError(t, json.Unmarshal([]byte(r.Body), &body), "JSON body: %s", r.Body)
				require.NotEmpty(t, body.Error.Message)
			}
		})
	}
	require.False(t, d.relay.hasLine(regexp.MustCompile(regexp.QuoteMeta(clientToken))), "relay never logs client tokens")
	require.False(t, d.agent.hasLine(regexp.MustCompile(regexp.QuoteMeta(agentToken))), "agent never logs its token")
}

// TestBadAgentCredential: the relay refuses, both sides say so clearly.
func TestBadAgentCredential(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", token: "wrong-token"})
	d.relay.waitLine(t, regexp.MustCompile(`(?i)refus.*dc1|dc1.*refus`), 20*time.Second)
	d.agent.waitLine(t, regexp.MustCompile(`(?i)refused.*credential`), 20*time.Second)
	r := rawPost(t, d.relayURL+"/dc1/notes/mcp", clientToken, "", `{}`)
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
	require.False(t, d.relay.hasLine(regexp.MustCompile("wrong-token")), "relay never logs the presented token")
}

// TestAgentGoesAway: endpoints answer 503 while the agent is gone and work
// again when it comes back, with nothing restarted but the agent. Then the
// relay restarts and the agent reconnects by itself.
func TestAgentGoesAway(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", httpURL: httpURL})
	d.waitOnline(t, "wiki")
	exerciseMCP(t, d.relayURL+"/dc1/wiki/mcp")

	d.agent.stop(t)
	d.waitOffline(t, "wiki")
	r := rawPost(t, d.relayURL+"/dc1/wiki/mcp", clientToken, "", `{}`)
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode)
	require.Contains(t, r.Body, "not connected")

	d.startAgent(t)
	d.waitOnline(t, "wiki")
	exerciseMCP(t, d.relayURL+"/dc1/notes/mcp")

	// Relay restart on the same port: the agent reconnects with backoff.
	d.relay.stop(t)
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{tunnelListen: d.tunnelAddr})
	d.startRelay(t)
	d.waitOnline(t, "wiki")
	exerciseMCP(t, d.relayURL+"/dc1/wiki/mcp")
}

// TestDemo drives `mcptun demo` as the README describes, with a real client.
func TestDemo(t *testing.T) {
	p := startProc(t, "demo", nil, mcptunBin, "demo", "--listen", "127.0.0.1:0")
	url := p.waitLine(t, regexp.MustCompile(`MCP endpoint:\s+(\S+)`), 30*time.Second)[1]
	token := p.waitLine(t, regexp.MustCompile(`Bearer token:\s+(\S+)`), 5*time.Second)[1]
	p.waitLine(t, regexp.MustCompile(`claude mcp add --transport http notes `+regexp.QuoteMeta(url)), 5*time.Second)

	for _, u := range []string{url, strings.Replace(url, "/notes/", "/notes-http/", 1)} {
		c, _ := newClient(t, u, token)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		req := mcp.CallToolRequest{}
		req.Params.Name = "write_note"
		req.Params.Arguments = map[string]any{"name": "e2e", "content": "written through " + u}
		res, err := c.CallTool(ctx, req)
		require.NoError(t, err)
		require.False(t, res.IsError, textOf(res))
		req.Params.Name = "read_note"
		req.Params.Arguments = map[string]any{"name": "e2e"}
		res, err = c.CallTool(ctx, req)
		require.NoError(t, err)
		require.Contains(t, textOf(res), "written through "+u)
		cancel()
		require.NoError(t, c.Close())
	}
	p.stop(t)
	require.NoError(t, p.err, "demo exits cleanly on SIGTERM")
	require.True(t, p.hasLine(regexp.MustCompile("demo stopping")), fmt.Sprint(p.out))
}

// TestAgentServerRateLimit: a server's rate limit in agent.yaml holds
// whatever the relay allows; the agent answers 429 itself.
func TestAgentServerRateLimit(t *testing.T) {
	httpURL := startHTTPFixture(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic",
		servers: fmt.Sprintf("  - {name: wiki, url: %q, rate_limit: {requests_per_second: 0.001, burst: 2}}\n", httpURL)})
	d.waitOnline(t, "wiki") // its GET takes one of the two
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
	r := rawPost(t, d.relayURL+"/dc1/wiki/mcp", clientToken, "", init)
	require.Equal(t, http.StatusOK, r.StatusCode, "body %s", r.Body)
	r = rawPost(t, d.relayURL+"/dc1/wiki/mcp", clientToken, "", init)
	require.Equal(t, http.StatusTooManyRequests, r.StatusCode, "body %s", r.Body)
	require.Contains(t, r.Body, `"reason":"rate_limited"`)
	require.Contains(t, r.Body, `server \"wiki\" is over its rate limit`)
	require.NotEmpty(t, r.Header.Get("Retry-After"))
}

// TestAgentUpstreamNetworks: with upstream_networks in agent.yaml the real
// agent refuses to reach a URL server whose name resolves outside them.
func TestAgentUpstreamNetworks(t *testing.T) {
	httpURL := startHTTPFixture(t)
	byName := strings.Replace(httpURL, "127.0.0.1", "localhost", 1)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic",
		servers: fmt.Sprintf("  - {name: wiki, url: %q}\nupstream_networks: [10.0.0.0/8]\n", byName)})
	d.waitOnline(t, "wiki")
	r := rawPost(t, d.relayURL+"/dc1/wiki/mcp", clientToken, "", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	require.Equal(t, http.StatusBadGateway, r.StatusCode, "body %s", r.Body)
	require.Contains(t, r.Body, "is outside upstream_networks")
}
