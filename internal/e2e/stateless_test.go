package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// The 2026-07-28 era: no sessions, every request self-contained.
const (
	modernVersion = "2026-07-28"
	modernMeta    = `"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",` +
		`"io.modelcontextprotocol/clientInfo":{"name":"e2e-stateless","version":"1"},` +
		`"io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}`
)

// modernClient speaks the stateless era with raw HTTP, so that every byte
// and header it checks is what crossed the tunnel.
type modernClient struct {
	url, token string
	hc         *http.Client
}

// post sends one request. params is the JSON object body of params without
// its braces and without _meta (added here); name is the Mcp-Name header,
// if any. The caller closes the response.
func (c *modernClient) post(ctx context.Context, t *testing.T, id, method, name, params string, hdr ...string) *http.Response {
	t.Helper()
	if params != "" {
		params += ","
	}
	body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":%q,"params":{%s%s}}`, id, method, params, modernMeta)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", modernVersion)
	req.Header.Set("Mcp-Method", method)
	if name != "" {
		req.Header.Set("Mcp-Name", name)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.hc.Do(req)
	require.NoError(t, err, "%s through %s", method, c.url)
	return resp
}

// messages returns the JSON-RPC messages of an answer: the body of a JSON
// answer, or the data of each SSE event (comments and priming events
// skipped), as they arrive. The channel closes at the end of the answer.
func messages(resp *http.Response) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			b, err := io.ReadAll(resp.Body)
			if err == nil {
				ch <- string(b)
			}
			return
		}
		br := bufio.NewReader(resp.Body)
		var data []string
		for {
			line, err := br.ReadString('\n')
			line = strings.TrimRight(line, "\r\n")
			switch {
			case line == "":
				if d := strings.Join(data, "\n"); strings.TrimSpace(d) != "" {
					ch <- d
				}
				data = nil
			case strings.HasPrefix(line, "data:"):
				data = append(data, strings.TrimPrefix(strings.TrimPrefix(line, "data:"), " "))
			}
			if err != nil {
				return
			}
		}
	}()
	return ch
}

func nextMessage(t *testing.T, ch <-chan string, what string) string {
	t.Helper()
	select {
	case m, ok := <-ch:
		require.True(t, ok, "%s: the answer ended", what)
		return m
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no message within 20s", what)
		return ""
	}
}

// rawField returns the raw JSON of a member path of a message.
func rawField(t *testing.T, msg string, path ...string) json.RawMessage {
	t.Helper()
	raw := json.RawMessage(msg)
	for _, p := range path {
		var m map[string]json.RawMessage
		require.NoError(t, json.Unmarshal(raw, &m), "decoding %s of %s", p, msg)
		var ok bool
		raw, ok = m[p]
		require.True(t, ok, "no %q in %s", p, msg)
	}
	return raw
}

// TestStatelessEra drives a scripted 2026-07-28 client through relay,
// tunnel and agent to the fixture, once as a stdio server (the agent's
// bridge, one child shared by all stateless clients) and once as an HTTP
// server (mcp-go's own stateless handler behind the agent's proxy).
func TestStatelessEra(t *testing.T) {
	httpFixture := startProc(t, "http-fixture", nil, fixtureBin, "--http", "127.0.0.1:0")
	fixtureURL := httpFixture.waitLine(t, regexp.MustCompile(`^listening (http://\S+)`), 20*time.Second)[1]
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", servers: fmt.Sprintf(
		"  - {name: fixture-stdio, command: [%q, \"--stdio\"]}\n  - {name: fixture-url, url: %q}\n", fixtureBin, fixtureURL)})
	d.waitOnline(t, "fixture-stdio")

	for _, tc := range []struct {
		server string
		log    *proc // where the fixture's log lines show up
		// Ids that only an exact path returns as sent. The bridge does (it
		// remaps ids); mcp-go's own stateless handler re-encodes them (a
		// big integer rounded, an escape decoded), directly as through the
		// tunnel, so the url: server gets plain ids here and the byte
		// fidelity test covers such ids through the proxy.
		callID, listenID string
		direct           string // the server's own URL, to compare with
	}{
		// The stdio child's stderr is logged by the agent.
		{server: "fixture-stdio", log: d.agent, callID: "9007199254740993", listenID: `"listen-\u00e9"`},
		{server: "fixture-url", log: httpFixture, callID: "77", listenID: `"listen-1"`, direct: fixtureURL},
	} {
		t.Run(tc.server, func(t *testing.T) {
			c := &modernClient{url: d.relayURL + "/dc1/" + tc.server + "/mcp", token: clientToken, hc: &http.Client{}}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			t.Run("discover", func(t *testing.T) {
				resp := c.post(ctx, t, `"d-1"`, "server/discover", "", "")
				require.Equal(t, http.StatusOK, resp.StatusCode)
				require.Empty(t, resp.Header.Get("Mcp-Session-Id"), "no sessions in this era")
				msg := nextMessage(t, messages(resp), "server/discover")
				require.Equal(t, `"d-1"`, string(rawField(t, msg, "id")))
				require.Contains(t, string(rawField(t, msg, "result", "supportedVersions")), `"2026-07-28"`)
			})

			t.Run("tools/call", func(t *testing.T) {
				args := `"name":"echo","arguments":{"text":"stateless through the tunnel"}`
				resp := c.post(ctx, t, tc.callID, "tools/call", mcptest.ToolEcho, args)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				msg := nextMessage(t, messages(resp), "tools/call")
				require.Equal(t, tc.callID, string(rawField(t, msg, "id")))
				require.Contains(t, msg, "stateless through the tunnel")
				require.Equal(t, `"complete"`, string(rawField(t, msg, "result", "resultType")))
				if tc.direct != "" {
					// The same request straight to the server: the same bytes.
					dc := &modernClient{url: tc.direct, hc: c.hc}
					resp := dc.post(ctx, t, tc.callID, "tools/call", mcptest.ToolEcho, args)
					require.Equal(t, msg, nextMessage(t, messages(resp), "tools/call, direct"))
				}
			})

			t.Run("input_required", func(t *testing.T) {
				resp := c.post(ctx, t, "41", "tools/call", mcptest.ToolInputRequired, `"name":"test_input_required","arguments":{}`)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				first := nextMessage(t, messages(resp), "input_required")
				require.Equal(t, `"input_required"`, string(rawField(t, first, "result", "resultType")), first)
				require.Contains(t, string(rawField(t, first, "result", "inputRequests", "confirm")), `"elicitation/create"`)
				// requestState is opaque: send back exactly the bytes we got.
				state := rawField(t, first, "result", "requestState")
				var decoded string
				require.NoError(t, json.Unmarshal(state, &decoded))
				require.Equal(t, mcptest.InputRequiredState, decoded)

				resp = c.post(ctx, t, "42", "tools/call", mcptest.ToolInputRequired,
					`"name":"test_input_required","arguments":{},`+
						`"inputResponses":{"confirm":{"action":"accept","content":{"ok":true}}},"requestState":`+string(state))
				require.Equal(t, http.StatusOK, resp.StatusCode)
				final := nextMessage(t, messages(resp), "input_required retry")
				require.Equal(t, `"complete"`, string(rawField(t, final, "result", "resultType")), final)
				var res struct {
					Content []struct{ Text string } `json:"content"`
				}
				require.NoError(t, json.Unmarshal(rawField(t, final, "result"), &res))
				require.Len(t, res.Content, 1)
				require.Equal(t, fmt.Sprintf(`input_required done: action=accept content={"ok":true} state=%q`, mcptest.InputRequiredState), res.Content[0].Text)
			})

			t.Run("cancel by closing the stream", func(t *testing.T) {
				const ms = 599123 // names this call in the fixture's log (and is under its 10 min limit)
				reqCtx, closeStream := context.WithCancel(ctx)
				defer closeStream()
				done := make(chan error, 1)
				go func() {
					// The answer never comes: the call sleeps ten minutes.
					req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, c.url, strings.NewReader(
						fmt.Sprintf(`{"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"sleep","arguments":{"ms":%d},%s}}`, ms, modernMeta)))
					if err != nil {
						done <- err
						return
					}
					req.Header.Set("Content-Type", "application/json")
					req.Header.Set("Accept", "application/json, text/event-stream")
					req.Header.Set("MCP-Protocol-Version", modernVersion)
					req.Header.Set("Mcp-Method", "tools/call")
					req.Header.Set("Mcp-Name", "sleep")
					req.Header.Set("Authorization", "Bearer "+c.token)
					resp, err := c.hc.Do(req)
					if err == nil {
						_, err = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
					done <- err
				}()
				tc.log.waitLine(t, regexp.MustCompile(fmt.Sprintf(`mcptest: sleeping.*ms=%d`, ms)), 20*time.Second)
				closeStream()
				require.ErrorIs(t, <-done, context.Canceled)
				tc.log.waitLine(t, regexp.MustCompile(fmt.Sprintf(`mcptest: request cancelled.*ms=%d`, ms)), 20*time.Second)
			})

			t.Run("subscriptions/listen", func(t *testing.T) {
				listenCtx, closeListen := context.WithCancel(ctx)
				defer closeListen()
				listenID := tc.listenID
				resp := c.post(listenCtx, t, listenID, "subscriptions/listen", "", `"notifications":{"toolsListChanged":true}`)
				require.Equal(t, http.StatusOK, resp.StatusCode)
				require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
				stream := messages(resp)
				ack := nextMessage(t, stream, "acknowledgement")
				require.Equal(t, `"notifications/subscriptions/acknowledged"`, string(rawField(t, ack, "method")), ack)
				require.Equal(t, listenID, string(rawField(t, ack, "params", "_meta", "io.modelcontextprotocol/subscriptionId")))

				call := c.post(ctx, t, "43", "tools/call", mcptest.ToolBroadcastListChanged, `"name":"broadcast_list_changed","arguments":{}`)
				require.Equal(t, http.StatusOK, call.StatusCode)
				require.Contains(t, nextMessage(t, messages(call), "broadcast"), `"sent"`)

				n := nextMessage(t, stream, "list_changed")
				require.Equal(t, `"notifications/tools/list_changed"`, string(rawField(t, n, "method")), n)
				require.Equal(t, listenID, string(rawField(t, n, "params", "_meta", "io.modelcontextprotocol/subscriptionId")))
				closeListen()
				for range stream { // drains until the body is closed
				}
			})

			t.Run("GET and DELETE are 405", func(t *testing.T) {
				for _, method := range []string{http.MethodGet, http.MethodDelete} {
					req, err := http.NewRequestWithContext(ctx, method, c.url, nil)
					require.NoError(t, err)
					req.Header.Set("Accept", "text/event-stream")
					req.Header.Set("MCP-Protocol-Version", modernVersion)
					req.Header.Set("Authorization", "Bearer "+c.token)
					resp, err := c.hc.Do(req)
					require.NoError(t, err)
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode, "%s: %s", method, b)
				}
			})
		})
	}
	// Nothing above may have left an error behind in the agent's log.
	if d.agent.hasLine(regexp.MustCompile(`level=ERROR`)) {
		t.Errorf("the agent logged an error")
	}
}
