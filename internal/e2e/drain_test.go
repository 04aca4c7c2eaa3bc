package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"
)

// Draining (issue 11, defect 9): a relay or agent told to stop takes no new
// work, tells the other side, finishes the calls in flight within
// shutdown_grace, then exits 0.

// drainCalls is how many slow calls are in flight when the signal comes;
// MCPTUN_E2E_DRAIN_CALLS sets another number (for measurements).
var drainCalls = func() int {
	if n, err := strconv.Atoi(os.Getenv("MCPTUN_E2E_DRAIN_CALLS")); err == nil && n > 0 {
		return n
	}
	return 4
}()

// drainSleepMs is how long each of those calls takes: long enough that the
// signal surely lands while they run and the checks made during the drain
// fit in them on a loaded machine, short against the 30 s grace.
const drainSleepMs = 3000

var sleepingLine = regexp.MustCompile(`mcptest: sleeping`)

// callResult is the outcome of one raw MCP call made in a goroutine.
type callResult struct {
	resp rawResp
	err  error
}

// post makes one MCP POST without the test's require (it runs in
// goroutines).
func post(ctx context.Context, url, session, body string) (rawResp, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return rawResp{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", mcp.LATEST_LEGACY_PROTOCOL_VERSION)
	req.Header.Set("Authorization", "Bearer "+clientToken)
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	// A transport of its own: a connection of another call, closed by a
	// drain, must not be reused for this one.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return rawResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawResp{resp.StatusCode, resp.Header, string(b)}, err
}

// openSession initializes an MCP session at url and returns its id.
func openSession(t *testing.T, url string) string {
	t.Helper()
	r := rawPost(t, url, clientToken, "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"`+
		mcp.LATEST_LEGACY_PROTOCOL_VERSION+`","capabilities":{},"clientInfo":{"name":"drain","version":"1"}}}`)
	require.Equal(t, http.StatusOK, r.StatusCode, "initialize: %s", r.Body)
	sid := r.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid, "initialize minted no session")
	r = rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	require.Equal(t, http.StatusAccepted, r.StatusCode, "initialized: %s", r.Body)
	return sid
}

// startSleeps starts n tools/call sleep(ms) in session sid, each in its own
// goroutine; the results come on the returned channel.
func startSleeps(t *testing.T, url, sid string, n, ms int) <-chan callResult {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	out := make(chan callResult, n)
	for i := range n {
		go func() {
			body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":%d}}}`, 100+i, ms)
			r, err := post(ctx, url, sid, body)
			out <- callResult{r, err}
		}()
	}
	return out
}

// collect waits for n results and counts those that carry the sleep's own
// result.
func collect(t *testing.T, results <-chan callResult, n, ms int) (answered int, others []string) {
	t.Helper()
	want := fmt.Sprintf("slept %d ms", ms)
	timeout := time.After(90 * time.Second)
	for range n {
		select {
		case r := <-results:
			switch {
			case r.err != nil:
				others = append(others, "error: "+r.err.Error())
			case r.resp.StatusCode == http.StatusOK && strings.Contains(r.resp.Body, want):
				answered++
			default:
				others = append(others, fmt.Sprintf("%d %s", r.resp.StatusCode, strings.TrimSpace(r.resp.Body)))
			}
		case <-timeout:
			t.Fatalf("calls in flight got no answer within 90s")
		}
	}
	return answered, others
}

// waitLines waits until p printed n lines matching re.
func (p *proc) waitLines(t *testing.T, re *regexp.Regexp, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		lines, changed := p.out.snapshot()
		got := 0
		for _, l := range lines {
			if re.MatchString(l) {
				got++
			}
		}
		if got >= n {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("%s printed %d lines matching %q within %s, want %d", p.name, got, re, timeout, n)
		}
	}
}

// signal sends sig to the process.
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
}

// waitExit waits for the process to exit and returns how it did.
func (p *proc) waitExit(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(timeout):
		t.Fatalf("%s still running %s after the signal", p.name, timeout)
		return nil
	}
}

// reason is error.data.reason of a refusal body.
func reason(body string) string {
	var b struct {
		Error struct {
			Data struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	_ = json.Unmarshal([]byte(body), &b)
	return b.Error.Data.Reason
}

// keepAliveConn is one client connection to the relay, kept open between
// exchanges as HTTP/1.1 clients keep theirs.
type keepAliveConn struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRelay(t *testing.T, relayURL string) *keepAliveConn {
	t.Helper()
	u, err := url.Parse(relayURL)
	require.NoError(t, err)
	c, err := net.Dial("tcp", u.Host)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &keepAliveConn{c: c, br: bufio.NewReader(c)}
}

func (k *keepAliveConn) post(path, session, body string) (*http.Response, string, error) {
	if err := k.c.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		return nil, "", err
	}
	req := fmt.Sprintf("POST %s HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"+
		"Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: %s\r\nMcp-Session-Id: %s\r\nContent-Length: %d\r\n\r\n%s",
		path, clientToken, mcp.LATEST_LEGACY_PROTOCOL_VERSION, session, len(body), body)
	if _, err := io.WriteString(k.c, req); err != nil {
		return nil, "", err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, string(b), err
}

// waitRefused waits until the relay at relayURL refuses new client
// connections: it stopped accepting (draining) or exited.
func waitRefused(t *testing.T, relayURL string) {
	t.Helper()
	addr := strings.TrimPrefix(relayURL, "http://")
	require.Eventually(t, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	}, 10*time.Second, 10*time.Millisecond, "the relay still accepts client connections after SIGTERM")
}

// waitRefusal polls url with new requests until one is refused with 503
// (whatever the reason) and returns it.
func waitRefusal(t *testing.T, url, session string) rawResp {
	t.Helper()
	var last rawResp
	require.Eventually(t, func() bool {
		r, err := post(context.Background(), url, session, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
		last = r
		return err == nil && r.StatusCode == http.StatusServiceUnavailable
	}, 10*time.Second, 10*time.Millisecond, "new requests are not refused after SIGTERM (last: %d %s)", last.StatusCode, last.Body)
	return last
}

// TestRelayDrain: SIGTERM on the relay with calls in flight through the
// tunnel. The calls get their real results; a request arriving meanwhile on
// an open connection gets 503 relay_draining and a new connection is
// refused; the relay exits 0 once the calls are done, long before the 30 s
// grace; the agent, told, connects to the relay's replacement at once.
func TestRelayDrain(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		t.Run(transport, func(t *testing.T) {
			d := deploy(t, relayOpts{}, agentOpts{transport: transport})
			d.waitOnline(t, "notes")
			const path = "/dc1/notes/mcp"
			sid := openSession(t, d.relayURL+path)
			// An open keep-alive connection, used once before the drain.
			ka := dialRelay(t, d.relayURL)
			resp, body, err := ka.post(path, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, resp.StatusCode, "ping before the drain: %s", body)

			results := startSleeps(t, d.relayURL+path, sid, drainCalls, drainSleepMs)
			d.agent.waitLines(t, sleepingLine, drainCalls, 20*time.Second)
			d.relay.signal(t, syscall.SIGTERM)
			signalled := time.Now()
			waitRefused(t, d.relayURL) // a new connection is refused

			// A new request on the open connection.
			resp, body, kaErr := ka.post(path, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)

			answered, others := collect(t, results, drainCalls, drainSleepMs)
			t.Logf("relay SIGTERM over %s with %d calls in flight: %d answered with their result; others: %q", transport, drainCalls, answered, others)
			require.Equal(t, drainCalls, answered, "calls in flight across the relay's drain: %q", others)
			require.NoError(t, kaErr, "new request on an open connection during the drain")
			require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, "new request during the drain: %s", body)
			require.Equal(t, "relay_draining", reason(body), "body %s", body)
			require.NotEmpty(t, resp.Header.Get("Retry-After"))
			require.True(t, resp.Close, "the refusal closes the connection")
			require.NoError(t, d.relay.waitExit(t, 20*time.Second), "relay exit status")
			took := time.Since(signalled)
			t.Logf("relay exited %s after SIGTERM", took.Round(time.Millisecond))
			require.Less(t, took, 15*time.Second, "the relay waits for its calls, not for the 30 s grace")

			// The agent was told and connects to the replacement at once,
			// not after MaxBackoff (30 s) as after "replaced".
			d.agent.waitLine(t, regexp.MustCompile(`relay is draining`), 5*time.Second)
			d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{tunnelListen: d.tunnelAddr})
			d.startRelay(t)
			waitStatus(t, d.relayURL+path, func(code int) bool { return code != http.StatusServiceUnavailable }, 10*time.Second)
		})
	}
}

// startHTTPFixtureProc is startHTTPFixture that also returns the process,
// whose log shows the calls it runs.
func startHTTPFixtureProc(t *testing.T) (*proc, string) {
	t.Helper()
	p := startProc(t, "http-fixture", nil, fixtureBin, "--http", "127.0.0.1:0")
	m := p.waitLine(t, regexp.MustCompile(`^listening (http://\S+)`), 20*time.Second)
	return p, m[1]
}

// TestAgentDrain: SIGTERM on the agent with calls in flight, to a stdio
// server and to a url server. The relay hears it and answers new requests
// 503 agent_draining; the calls get their real results; the agent exits 0
// once they are done.
func TestAgentDrain(t *testing.T) {
	for _, transport := range []string{"quic", "tcp"} {
		for _, server := range []string{"notes", "wiki"} {
			t.Run(transport+"/"+server, func(t *testing.T) {
				fixture, httpURL := startHTTPFixtureProc(t)
				d := deploy(t, relayOpts{}, agentOpts{transport: transport, httpURL: httpURL})
				d.waitOnline(t, server)
				url := d.relayURL + "/dc1/" + server + "/mcp"
				sid := openSession(t, url)
				results := startSleeps(t, url, sid, drainCalls, drainSleepMs)
				runsCalls := d.agent // the stdio child's stderr is in the agent's log
				if server == "wiki" {
					runsCalls = fixture
				}
				runsCalls.waitLines(t, sleepingLine, drainCalls, 20*time.Second)
				d.agent.signal(t, syscall.SIGTERM)
				signalled := time.Now()
				r := waitRefusal(t, url, sid) // a new request

				answered, others := collect(t, results, drainCalls, drainSleepMs)
				t.Logf("agent SIGTERM over %s, %s server, with %d calls in flight: %d answered with their result; others: %q",
					transport, server, drainCalls, answered, others)
				require.Equal(t, drainCalls, answered, "calls in flight across the agent's drain: %q", others)
				require.Equal(t, "agent_draining", reason(r.Body), "new request during the drain: %s", r.Body)
				require.NotEmpty(t, r.Header.Get("Retry-After"))
				require.NoError(t, d.agent.waitExit(t, 20*time.Second), "agent exit status")
				took := time.Since(signalled)
				t.Logf("agent exited %s after SIGTERM", took.Round(time.Millisecond))
				require.Less(t, took, 15*time.Second, "the agent waits for its calls, not for the 30 s grace")
			})
		}
	}
}

// TestRelayDrainCut: a call longer than the grace is cut when it ends,
// with a clear error, and the relay exits 0; a second signal cuts at once.
func TestRelayDrainCut(t *testing.T) {
	for _, tc := range []struct {
		name, extra string
		signals     int
	}{
		{"grace over", "shutdown_grace: 1s\n", 1},
		{"second signal", "", 2}, // the 30 s default grace
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := deploy(t, relayOpts{extra: tc.extra}, agentOpts{transport: "quic"})
			d.waitOnline(t, "notes")
			url := d.relayURL + "/dc1/notes/mcp"
			sid := openSession(t, url)
			results := startSleeps(t, url, sid, 1, 60_000)
			d.agent.waitLines(t, sleepingLine, 1, 20*time.Second)
			d.relay.signal(t, syscall.SIGTERM)
			signalled := time.Now()
			waitRefused(t, d.relayURL)
			if tc.signals == 2 {
				// The relay may have exited already (it did before the drain).
				_ = d.relay.cmd.Process.Signal(syscall.SIGTERM)
			}
			_, others := collect(t, results, 1, 60_000)
			require.Len(t, others, 1)
			t.Logf("call cut by the relay: %s", others[0])
			require.Contains(t, others[0], "503 ", "the cut call's answer")
			require.Contains(t, others[0], `"reason":"relay_shutdown"`)
			require.NoError(t, d.relay.waitExit(t, 20*time.Second), "relay exit status")
			took := time.Since(signalled)
			t.Logf("relay exited %s after the first SIGTERM", took.Round(time.Millisecond))
			require.Less(t, took, 10*time.Second, "a 1 s grace, or a second signal, ends the drain")
		})
	}
}

// TestAgentDrainCut: a call longer than the agent's 1 s grace is cut when
// it ends, with a clear error, and the agent exits 0.
func TestAgentDrainCut(t *testing.T) {
	for _, server := range []string{"notes", "wiki"} {
		t.Run(server, func(t *testing.T) {
			fixture, httpURL := startHTTPFixtureProc(t)
			d := deploy(t, relayOpts{}, agentOpts{transport: "quic", httpURL: httpURL, extra: "shutdown_grace: 1s\n"})
			d.waitOnline(t, server)
			url := d.relayURL + "/dc1/" + server + "/mcp"
			sid := openSession(t, url)
			results := startSleeps(t, url, sid, 1, 60_000)
			runsCalls := d.agent
			if server == "wiki" {
				runsCalls = fixture
			}
			runsCalls.waitLines(t, sleepingLine, 1, 20*time.Second)
			d.agent.signal(t, syscall.SIGTERM)
			signalled := time.Now()
			_, others := collect(t, results, 1, 60_000)
			require.Len(t, others, 1)
			t.Logf("call cut by the agent: %s", others[0])
			if server == "notes" {
				// The bridge answers the call it cannot finish.
				require.Contains(t, others[0], "502 ")
				require.Contains(t, others[0], "agent shutting down after the request was sent")
				require.Contains(t, others[0], `"reason":"upstream_outcome_unknown"`)
			} else {
				require.Contains(t, others[0], "503 ")
				require.Contains(t, others[0], `"reason":"agent_shutdown"`)
			}
			require.NoError(t, d.agent.waitExit(t, 20*time.Second), "agent exit status")
			took := time.Since(signalled)
			t.Logf("agent exited %s after SIGTERM", took.Round(time.Millisecond))
			require.Less(t, took, 10*time.Second, "a 1 s grace ends the drain")
		})
	}
}
