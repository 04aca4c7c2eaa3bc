package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/conformance"
)

// authProxy is a loopback reverse proxy in front of one relay endpoint. The
// conformance suite has no option for an Authorization header, so the proxy
// adds the client's bearer token and otherwise passes the exchange on as it
// came: Host and Origin untouched (the dns-rebinding scenario sends
// evil.example.com in both and expects the relay to refuse), SSE flushed at
// once.
type authProxy struct {
	URL string // http://127.0.0.1:PORT/mcp
	srv *http.Server
	ln  net.Listener
}

func startAuthProxy(t *testing.T, target, token string) *authProxy {
	t.Helper()
	u, err := url.Parse(target)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tr := &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 64}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = u.Scheme, u.Host
			pr.Out.URL.Path, pr.Out.URL.RawPath = u.Path, ""
			pr.Out.Host = pr.In.Host // as the client sent it
			pr.Out.Header.Set("Authorization", "Bearer "+token)
		},
		Transport:     tr,
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() == nil {
				http.Error(w, "auth proxy: "+err.Error(), http.StatusBadGateway)
			}
		},
	}
	// Full duplex: see mcpproxy's HTTP proxy, which has the same problem
	// (net/http's server drains the body under the transport's feet).
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).EnableFullDuplex()
		rp.ServeHTTP(w, r)
	})
	p := &authProxy{URL: "http://" + ln.Addr().String() + "/mcp", ln: ln, srv: &http.Server{Handler: h}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = p.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = p.srv.Close()
		<-done
		tr.CloseIdleConnections()
	})
	return p
}

// runSuites runs the active conformance suite against each url, all at
// once (the runs are independent: every scenario is a client of its own),
// and returns the results in the order of urls.
func runSuites(t *testing.T, urls ...string) []*conformance.Results {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res := make([]*conformance.Results, len(urls))
	errs := make([]error, len(urls))
	var wg sync.WaitGroup
	for i, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i], errs[i] = conformance.Run(ctx, u, conformance.WithTimeout(4*time.Minute))
		}()
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))
	for _, r := range res {
		require.GreaterOrEqual(t, len(r.Order), 30, "scenarios run against %s: %v", r.URL, r.Order)
	}
	return res
}

// sameResults requires b to report exactly what a reports, scenario by
// scenario, check by check (status of every check id).
func sameResults(t *testing.T, nameA string, a *conformance.Results, nameB string, b *conformance.Results) {
	t.Helper()
	if d := a.Diff(b); d != "" {
		t.Errorf("%s and %s differ:\n%s", nameA, nameB, d)
	}
	for _, n := range a.Order {
		ca, cb := checkStatuses(a.Scenarios[n]), checkStatuses(b.Scenarios[n])
		if !slices.Equal(ca, cb) {
			t.Errorf("scenario %s: checks %s: %v; %s: %v", n, nameA, ca, nameB, cb)
		}
	}
}

func checkStatuses(s conformance.Scenario) []string {
	out := make([]string, 0, len(s.Checks))
	for _, c := range s.Checks {
		out = append(out, c.ID+"="+c.Status)
	}
	slices.Sort(out)
	return out
}

// sideBySide renders one row per scenario with the outcome of every run.
func sideBySide(names []string, runs ...*conformance.Results) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-32s", "SCENARIO")
	for _, n := range names {
		fmt.Fprintf(&b, "  %-18s", n)
	}
	b.WriteString("\n")
	for _, sc := range runs[0].Order {
		fmt.Fprintf(&b, "%-32s", sc)
		for _, r := range runs {
			s, ok := r.Scenarios[sc]
			cell := "missing"
			if ok {
				verdict := "pass"
				if !s.OK() {
					verdict = "FAIL"
				}
				cell = fmt.Sprintf("%s %d/%d/%d", verdict, s.Passed, s.Failed, s.Warnings)
			}
			fmt.Fprintf(&b, "  %-18s", cell)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// TestConformanceThroughTunnel runs the MCP conformance suite against the
// fixture three ways (directly over HTTP; through relay, tunnel and agent
// to the same HTTP fixture as a url: server; through the tunnel to the
// fixture as a command: stdio server) and requires identical results, every
// scenario passing.
func TestConformanceThroughTunnel(t *testing.T) {
	conformance.RequireTools(t)
	fixtureURL := startHTTPFixture(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", servers: fmt.Sprintf(
		"  - {name: fixture-stdio, command: [%q, \"--stdio\"]}\n  - {name: fixture-url, url: %q}\n", fixtureBin, fixtureURL)})
	d.waitOnline(t, "fixture-stdio")

	viaURL := startAuthProxy(t, d.relayURL+"/dc1/fixture-url/mcp", clientToken)
	viaStdio := startAuthProxy(t, d.relayURL+"/dc1/fixture-stdio/mcp", clientToken)

	start := time.Now()
	runs := runSuites(t, fixtureURL, viaURL.URL, viaStdio.URL)
	direct, tunnelURL, tunnelStdio := runs[0], runs[1], runs[2]
	t.Logf("three concurrent runs of %d scenarios in %s", len(direct.Order), time.Since(start).Round(time.Millisecond))
	t.Logf("fixture, pass/fail/warn per run:\n%s", sideBySide([]string{"direct", "tunnel url:", "tunnel command:"}, direct, tunnelURL, tunnelStdio))

	for _, r := range []*conformance.Results{direct, tunnelURL, tunnelStdio} {
		if failed := r.Failed(); len(failed) > 0 {
			t.Errorf("%s: scenarios failed: %v\n%s", r.URL, failed, r.Table())
		}
	}
	sameResults(t, "direct", direct, "tunnel url:", tunnelURL)
	sameResults(t, "direct", direct, "tunnel command:", tunnelStdio)
}

// tunnelFixes lists the server-everything scenarios that fail directly and
// pass through the tunnel, and why: the relay refuses a foreign Origin
// (server-everything checks neither Host nor Origin).
var tunnelFixes = map[string]string{
	"dns-rebinding-protection": "the relay answers a foreign Origin with 403",
}

// TestConformanceEverything runs the suite against the reference server
// server-everything directly over HTTP, then through the tunnel to the same
// server as a url: server and to server-everything over stdio as a
// command: server. The tunnel runs must fail exactly the scenarios the
// direct run fails (testdata's known failures), but for tunnelFixes.
func TestConformanceEverything(t *testing.T) {
	conformance.RequireTools(t)
	es, err := conformance.StartEverythingHTTP(context.Background(), nil)
	require.NoError(t, err)
	t.Cleanup(func() {
		if err := es.Close(); err != nil {
			t.Error(err)
		}
	})
	argv, err := conformance.EverythingStdioCommand()
	require.NoError(t, err)
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = fmt.Sprintf("%q", a)
	}
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", servers: fmt.Sprintf(
		"  - {name: everything-stdio, command: [%s]}\n  - {name: everything-url, url: %q}\n", strings.Join(quoted, ", "), es.URL)})
	d.waitOnline(t, "everything-stdio")

	viaURL := startAuthProxy(t, d.relayURL+"/dc1/everything-url/mcp", clientToken)
	viaStdio := startAuthProxy(t, d.relayURL+"/dc1/everything-stdio/mcp", clientToken)

	start := time.Now()
	runs := runSuites(t, es.URL, viaURL.URL, viaStdio.URL)
	direct, tunnelURL, tunnelStdio := runs[0], runs[1], runs[2]
	t.Logf("three concurrent runs of %d scenarios in %s", len(direct.Order), time.Since(start).Round(time.Millisecond))
	t.Logf("server-everything, pass/fail/warn per run:\n%s", sideBySide([]string{"direct", "tunnel url:", "tunnel command:"}, direct, tunnelURL, tunnelStdio))

	expected, err := conformance.LoadExpectedFailures(filepath.Join("..", "conformance", "testdata", "server-everything.expected-failures.yml"))
	require.NoError(t, err)
	require.NoError(t, direct.CheckExpected(expected), "direct run\n%s", direct.Table())
	var viaTunnel []string
	for _, n := range expected {
		if _, fixed := tunnelFixes[n]; !fixed {
			viaTunnel = append(viaTunnel, n)
		}
	}
	for _, r := range []*conformance.Results{tunnelURL, tunnelStdio} {
		require.NoError(t, r.CheckExpected(viaTunnel), "%s\n%s", r.URL, r.Table())
		// Scenario by scenario, check by check, the same as direct but for
		// the scenarios the tunnel fixes.
		for _, n := range direct.Order {
			if _, fixed := tunnelFixes[n]; fixed {
				continue
			}
			if a, b := checkStatuses(direct.Scenarios[n]), checkStatuses(r.Scenarios[n]); !slices.Equal(a, b) {
				t.Errorf("%s: scenario %s: checks direct %v, tunnel %v", r.URL, n, a, b)
			}
		}
	}
}

// TestSessionTransportThroughTunnel checks, through relay, tunnel and agent,
// the parts of the 2025-11-25 transport the suite does not: version and
// session errors, SSE headers, the priming event and retry, resumption with
// Last-Event-ID, and the Origin checks of relay and agent.
func TestSessionTransportThroughTunnel(t *testing.T) {
	fixtureURL := startHTTPFixture(t)
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{})
	// The relay lets this browser origin through; the agent has not been
	// told about it.
	cfg, err := os.ReadFile(d.relayYAML)
	require.NoError(t, err)
	patched := strings.Replace(string(cfg), `http: {listen: "127.0.0.1:0"}`,
		`http: {listen: "127.0.0.1:0", allowed_origins: ["https://app.example.com"]}`, 1)
	require.NotEqual(t, string(cfg), patched, "relay config layout changed")
	require.NoError(t, os.WriteFile(d.relayYAML, []byte(patched), 0o600))
	d.startRelay(t)
	d.writeAgentConfig(t, agentOpts{transport: "quic", servers: fmt.Sprintf(
		"  - {name: fixture-stdio, command: [%q, \"--stdio\"]}\n  - {name: fixture-url, url: %q}\n", fixtureBin, fixtureURL)})
	d.startAgent(t)
	d.waitOnline(t, "fixture-stdio")

	const initBody = `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"e2e","version":"1"}}}`
	for _, server := range []string{"fixture-stdio", "fixture-url"} {
		t.Run(server, func(t *testing.T) {
			url := d.relayURL + "/dc1/" + server + "/mcp"
			init := rawPost(t, url, clientToken, "", initBody)
			require.Equal(t, http.StatusOK, init.StatusCode, init.Body)
			sid := init.Header.Get("Mcp-Session-Id")
			require.NotEmpty(t, sid)
			require.Equal(t, http.StatusAccepted, rawPost(t, url, clientToken, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`).StatusCode)

			do := func(method, body string, hdr ...string) *http.Response {
				t.Helper()
				req, err := http.NewRequest(method, url, strings.NewReader(body))
				require.NoError(t, err)
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				req.Header.Set("Authorization", "Bearer "+clientToken)
				req.Header.Set("Mcp-Session-Id", sid)
				req.Header.Set("MCP-Protocol-Version", "2025-11-25")
				for i := 0; i+1 < len(hdr); i += 2 {
					req.Header.Set(hdr[i], hdr[i+1])
				}
				resp, err := http.DefaultClient.Do(req)
				require.NoError(t, err)
				return resp
			}
			status := func(resp *http.Response) int {
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			ping := `{"jsonrpc":"2.0","id":"p","method":"ping"}`
			require.Equal(t, http.StatusBadRequest, status(do("POST", ping, "MCP-Protocol-Version", "1999-01-01")), "unsupported version")
			require.Equal(t, http.StatusNotFound, status(do("POST", ping, "Mcp-Session-Id", "0123456789abcdef0123456789abcdef")), "unknown session")
			require.Equal(t, http.StatusForbidden, status(do("POST", ping, "Origin", "https://app.example.com")),
				"an origin the relay allows but the server (agent bridge, or the fixture itself) does not")
			require.Equal(t, http.StatusOK, status(do("POST", ping, "Origin", "http://127.0.0.1:6274")), "loopback origin")

			if server != "fixture-stdio" {
				return // what follows is the bridge's own SSE
			}
			call := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"test_tool_with_progress","arguments":{},"_meta":{"progressToken":"pt"}}}`
			resp := do("POST", call)
			require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
			require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
			require.Equal(t, "no-cache", resp.Header.Get("Cache-Control"))
			// retry, then the priming event (an id, empty data); then we
			// leave, which is no cancellation.
			br := bufio.NewReader(resp.Body)
			var head []string
			for len(head) < 4 {
				line, err := br.ReadString('\n')
				require.NoError(t, err)
				head = append(head, line)
			}
			resp.Body.Close()
			require.Equal(t, "retry: 2000\n", head[0])
			primeID, ok := strings.CutPrefix(strings.TrimSuffix(head[1], "\n"), "id: ")
			require.True(t, ok, "priming event: %q", head)
			require.Equal(t, []string{"data: \n", "\n"}, head[2:])

			// Resume after the priming event: every progress notification
			// and the response, in order.
			var events []string
			deadline := time.Now().Add(20 * time.Second)
			tick := time.NewTicker(20 * time.Millisecond)
			defer tick.Stop()
			for {
				get := do("GET", "", "Last-Event-ID", primeID, "Accept", "text/event-stream")
				if get.StatusCode == http.StatusConflict && time.Now().Before(deadline) {
					// The agent may not have seen the first connection end.
					status(get)
					<-tick.C
					continue
				}
				require.Equal(t, http.StatusOK, get.StatusCode)
				for m := range messages(get) {
					events = append(events, m)
				}
				break
			}
			require.Len(t, events, 4, "progress 0, 50, 100 and the response: %q", events)
			for i, p := range []string{`"progress":0`, `"progress":50`, `"progress":100`} {
				require.Contains(t, events[i], `"progressToken":"pt"`)
				require.Contains(t, events[i], p)
			}
			require.Contains(t, events[3], `"id":5`)
			require.Contains(t, events[3], "Progress reported 3 times")
		})
	}
}
