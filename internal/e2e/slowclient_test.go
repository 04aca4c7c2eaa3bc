package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// rawSession is an MCP session opened with plain HTTP requests, for clients
// that misbehave in ways an SDK client cannot.
type rawSession struct {
	url, id string
}

// mcpPost sends one JSON-RPC message with the headers an MCP client sends
// and returns the status and body.
func mcpPost(ctx context.Context, url, session, body string) (int, string, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set("Authorization", "Bearer "+clientToken)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
		req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header, err
}

func openRawSession(t *testing.T, url string) *rawSession {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	code, body, hdr, err := mcpPost(ctx, url, "", `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, code, body)
	s := &rawSession{url: url, id: hdr.Get("Mcp-Session-Id")}
	require.NotEmpty(t, s.id, "initialize answered without a session id: %s", body)
	code, body, _, err = mcpPost(ctx, url, s.id, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	require.NoError(t, err)
	require.Equal(t, http.StatusAccepted, code, body)
	return s
}

// stalledGET opens the session's GET stream on a connection whose receive
// buffer is tiny and which the test never reads: a client that accepts no
// bytes. The connection is closed at cleanup.
func stalledGET(t *testing.T, relayURL string, s *rawSession) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", strings.TrimPrefix(relayURL, "http://"))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	path := strings.TrimPrefix(s.url, relayURL)
	_, err = fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\nAccept: text/event-stream\r\n"+
		"Mcp-Session-Id: %s\r\nMcp-Protocol-Version: 2025-06-18\r\n\r\n", path, clientToken, s.id)
	require.NoError(t, err)
	return c
}

// TestSlowReaderCostsOnlyItself: clients that open a GET stream and never
// read it, while their server pushes megabytes into it, must not stall
// anyone else through the same agent (over QUIC that was the connection's
// flow-control window filling up), and are cut after http.write_timeout
// with a logged reason.
func TestSlowReaderCostsOnlyItself(t *testing.T) {
	const (
		stalled      = 4
		floodBytes   = 20 << 20
		writeTimeout = 8 * time.Second
		probeFor     = 5 * time.Second
		callBound    = 4 * time.Second // a call normally takes milliseconds
	)
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			httpURL := startHTTPFixture(t)
			d := deploy(t, relayOpts{http: fmt.Sprintf("write_timeout: %s", writeTimeout)},
				agentOpts{transport: transport, httpURL: httpURL})
			d.waitOnline(t, "wiki")
			notes, _ := newClient(t, d.relayURL+"/dc1/notes/mcp", clientToken)
			wiki, _ := newClient(t, d.relayURL+"/dc1/wiki/mcp", clientToken)

			var conns []net.Conn
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			for range stalled {
				s := openRawSession(t, d.relayURL+"/dc1/wiki/mcp")
				conns = append(conns, stalledGET(t, d.relayURL, s))
				code, body, _, err := mcpPost(ctx, s.url, s.id, fmt.Sprintf(
					`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":%q,"arguments":{"bytes":%d}}}`,
					mcptest.ToolFloodGetStream, floodBytes))
				require.NoError(t, err)
				require.Equal(t, http.StatusOK, code, body)
				require.Contains(t, body, "flooding")
			}
			floodStart := time.Now()

			// Everyone else keeps being answered, on the flooded server and
			// on another one, while the stalled clients are still there.
			answered, failed := 0, 0
			for time.Since(floodStart) < probeFor {
				for _, c := range []*client.Client{notes, wiki} {
					if err := tryEcho(c, callBound, fmt.Sprintf("probe %d", answered)); err != nil {
						t.Logf("probe: %v", err)
						failed++
						continue
					}
					answered++
				}
			}
			t.Logf("%s: %d calls answered, %d not within %s, in %s beside %d stalled GET streams",
				transport, answered, failed, callBound, time.Since(floodStart).Round(time.Millisecond), stalled)
			require.Zero(t, failed, "calls beside the stalled clients went unanswered")

			// Each stalled client is cut once it has accepted nothing for
			// write_timeout, and the relay says why.
			cut := regexp.MustCompile(`msg="slow client cut".*reason=write_timeout`)
			deadline := time.Now().Add(writeTimeout + 20*time.Second)
			for {
				n := countLines(d.relay, cut)
				if n >= stalled {
					break
				}
				require.True(t, time.Now().Before(deadline), "%d of %d slow clients cut within %s", n, stalled, writeTimeout+20*time.Second)
				_, changed := d.relay.out.snapshot()
				select {
				case <-changed:
				case <-time.After(time.Until(deadline)):
				}
			}
			require.GreaterOrEqual(t, time.Since(floodStart), writeTimeout-time.Second, "cut before write_timeout")
			for _, c := range conns {
				// The relay closed it: what was buffered drains, then EOF.
				require.NoError(t, c.SetReadDeadline(time.Now().Add(10*time.Second)))
				_, err := io.Copy(io.Discard, bufio.NewReader(c))
				require.NoError(t, err, "the stalled connection was not closed by the relay")
			}
			callEcho(t, notes, callBound, "after")
			callEcho(t, wiki, callBound, "after")
		})
	}
}

func callEcho(t *testing.T, c *client.Client, bound time.Duration, text string) {
	t.Helper()
	require.NoError(t, tryEcho(c, bound, text))
}

// tryEcho calls the echo tool and says why it was not answered within
// bound, if it was not.
func tryEcho(c *client.Client, bound time.Duration, text string) error {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	req := mcp.CallToolRequest{}
	req.Params.Name = mcptest.ToolEcho
	req.Params.Arguments = map[string]any{"text": text}
	res, err := c.CallTool(ctx, req)
	switch {
	case err != nil:
		return fmt.Errorf("echo %q not answered within %s: %w", text, bound, err)
	case res.IsError:
		return fmt.Errorf("echo %q: error result %v", text, res.Content)
	}
	return nil
}

func countLines(p *proc, re *regexp.Regexp) int {
	lines, _ := p.out.snapshot()
	n := 0
	for _, l := range lines {
		if re.MatchString(l) {
			n++
		}
	}
	return n
}
