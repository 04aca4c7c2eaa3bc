package e2e

// The adversarial suite: a table of named attacks on a real deployment (the
// built binary as relay and as two agents, one over QUIC and one over TLS/TCP
// + yamux, with the fixture MCP server over stdio and over HTTP), each with
// the outcome the defence promises. Every case is an attack that succeeds if
// its defence breaks. TestAdversarial prints one summary line,
// "adversarial suite: N cases, F failed[, K pending]"; `make test` shows it.
//
// Run one category:  go test -run 'TestAdversarial/smuggling/' ./internal/e2e
// Run one case:      go test -run 'TestAdversarial/auth/wrong_token$' ./internal/e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/devcert"
)

// pendingFixes lists the cases that wait on a fix being made on another
// branch, each with the defect it waits on. They are skipped with that
// reason and counted as pending in the summary line. The lead empties this
// list once those branches are merged: every case must then pass.
var pendingFixes = map[string]string{}

// Credentials of the suite's deployment. Each agent has its own token, so
// one agent's token can be tried as another's.
const (
	advAliceToken  = "adv-alice-0123456789abcdef"
	advBobToken    = "adv-bob-0123456789abcdef"
	advNarrowToken = "adv-narrow-0123456789abcdef" // allowed dc1/notes only
	advDC1Token    = "adv-agent-dc1-0123456789"
	advDC2Token    = "adv-agent-dc2-0123456789"
	advDC3Token    = "adv-agent-dc3-0123456789" // no real agent: the impersonation cases use it
	advDC4Token    = "adv-agent-dc4-0123456789" // an agent with per-client limits, started by its case
)

// advAttack is one case of the suite.
type advAttack struct {
	category string
	name     string
	// slow cases wait on a timeout of the system under test; they run in
	// parallel with each other, after the quick ones of their category.
	slow bool
	run  func(t *testing.T, e *advEnv)
}

func (a advAttack) id() string { return a.category + "/" + a.name }

// advCategories is the order the categories run in.
var advCategories = []string{"auth", "scope", "smuggling", "session", "exhaustion", "slow", "jsonrpc", "agent", "relay", "reach"}

func adversarialCases() []advAttack {
	var all []advAttack
	for _, group := range [][]advAttack{
		authCases(), scopeCases(), smugglingCases(), sessionCases(), exhaustionCases(),
		slowClientCases(), jsonrpcCases(), agentImpersonationCases(), relayImpersonationCases(), reachCases(),
	} {
		all = append(all, group...)
	}
	return all
}

// TestAdversarial runs every attack against one deployment.
func TestAdversarial(t *testing.T) {
	cases := adversarialCases()
	seen := map[string]bool{}
	for _, c := range cases {
		require.False(t, seen[c.id()], "case %s listed twice", c.id())
		require.Contains(t, advCategories, c.category, "case %s", c.id())
		seen[c.id()] = true
	}
	for id := range pendingFixes {
		require.True(t, seen[id], "pendingFixes names %q, which is no case", id)
	}
	e := startAdvEnv(t)

	var mu sync.Mutex
	var ran, failed, pending int
	var failures []string
	record := func(id string, t *testing.T) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case t.Failed():
			ran++
			failed++
			failures = append(failures, id)
		case t.Skipped():
			pending++
		default:
			ran++
		}
	}
	// The summary, once every case has ended: the categories run in
	// parallel with each other (so the cases that wait out a timeout of
	// the system overlap), the cases of one category in order, except
	// its slow ones, which run in parallel after the others.
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if ran+pending == 0 {
			return // filtered to nothing
		}
		line := fmt.Sprintf("adversarial suite: %d cases, %d failed", ran+pending, failed)
		if pending > 0 {
			line += fmt.Sprintf(", %d pending", pending)
		}
		t.Log(line)
		fmt.Println(line)
		for _, f := range failures {
			t.Errorf("adversarial case failed: %s", f)
		}
	})
	for _, cat := range advCategories {
		t.Run(cat, func(t *testing.T) {
			t.Parallel()
			for _, slow := range []bool{false, true} {
				for _, c := range cases {
					if c.category != cat || c.slow != slow {
						continue
					}
					t.Run(c.name, func(t *testing.T) {
						t.Cleanup(func() { record(c.id(), t) })
						if why, ok := pendingFixes[c.id()]; ok {
							t.Skipf("pending: %s", why)
						}
						if c.slow {
							t.Parallel()
						}
						c.run(t, e)
					})
				}
			}
		})
	}
}

// advEnv is the deployment under attack.
type advEnv struct {
	root       *testing.T // the suite's test: owns what outlives one case
	dir        string
	relay      *proc
	relayURL   string // http://127.0.0.1:PORT
	httpAddr   string // the relay's HTTP front, host:port
	tunnelAddr string // the relay's tunnel port (UDP and TCP)
	relayCert  string // path of the relay's certificate (PEM)
	wikiURL    string // the HTTP fixture, direct
	hc         *http.Client

	reachOnce   sync.Once
	advReachEnv *advReachEnv
	reachErr    error

	// attackers numbers the loopback addresses attackers connect from: the
	// relay throttles failed authentication per source address, so each
	// attack gets its own, and the victims' 127.0.0.1 stays unthrottled.
	attackers atomic.Int32
}

// attackerIP returns a loopback address no one has connected from yet
// (127.0.0.2, 127.0.0.3, ...; all of 127/8 is the loopback interface).
func (e *advEnv) attackerIP() net.IP {
	n := int(e.attackers.Add(1)) - 1
	return net.IPv4(127, 0, byte(n/250), byte(n%250+2))
}

func startAdvEnv(t *testing.T) *advEnv {
	t.Helper()
	e := &advEnv{root: t, dir: t.TempDir()}
	certPEM, keyPEM, err := devcert.Generate("127.0.0.1", "localhost")
	require.NoError(t, err)
	e.relayCert = filepath.Join(e.dir, "relay.crt")
	require.NoError(t, os.WriteFile(e.relayCert, certPEM, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(e.dir, "relay.key"), keyPEM, 0o600))
	relayYAML := filepath.Join(e.dir, "relay.yaml")
	require.NoError(t, os.WriteFile(relayYAML, []byte(fmt.Sprintf(`tunnel: {listen: "127.0.0.1:0", cert_file: relay.crt, key_file: relay.key}
http: {listen: "127.0.0.1:0"}
agents:
  - {name: dc1, token_sha256: %q}
  - {name: dc2, token_sha256: %q}
  - {name: dc3, token_sha256: %q}
  - {name: dc4, token_sha256: %q}
clients:
  - {name: alice, token_sha256: %q, allow: ["dc1/*", "dc2/*", "dc3/*", "dc4/*"]}
  - {name: bob, token_sha256: %q, allow: ["dc1/*", "dc2/*", "dc4/*"]}
  - {name: narrow, token_sha256: %q, allow: ["dc1/notes"]}
log: {level: debug}
`, sha256Hex(advDC1Token), sha256Hex(advDC2Token), sha256Hex(advDC3Token), sha256Hex(advDC4Token),
		sha256Hex(advAliceToken), sha256Hex(advBobToken), sha256Hex(advNarrowToken))), 0o600))
	e.relay = startProc(t, "relay", nil, mcptunBin, "relay", "--config", relayYAML)
	m := e.relay.waitLine(t, relayStarted, 20*time.Second)
	e.tunnelAddr, e.relayURL = m[1], m[2]
	e.httpAddr = strings.TrimPrefix(e.relayURL, "http://")
	e.wikiURL = startHTTPFixture(t)

	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	e.hc = &http.Client{Transport: tr, Timeout: 60 * time.Second}
	t.Cleanup(tr.CloseIdleConnections)

	servers := fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"]}\n  - {name: wiki, url: %q}\n", fixtureBin, e.wikiURL)
	e.startAgent(t, "dc1", advDC1Token, fmt.Sprintf("{address: %q, ca_file: %q, transport: quic}", e.tunnelAddr, e.relayCert), servers, "")
	e.startAgent(t, "dc2", advDC2Token, fmt.Sprintf("{address: %q, ca_file: %q, transport: tcp}", e.tunnelAddr, e.relayCert), servers, "")
	for _, a := range []string{"dc1", "dc2"} {
		for _, s := range []string{"notes", "wiki"} {
			e.waitOnline(t, "/"+a+"/"+s+"/mcp")
		}
	}
	e.relay.waitLine(t, regexp.MustCompile(`agent connected.*agent=dc1.*transport=quic\b`), 5*time.Second)
	e.relay.waitLine(t, regexp.MustCompile(`agent connected.*agent=dc2.*transport=tcp\+yamux`), 5*time.Second)
	t.Cleanup(func() {
		for _, secret := range []string{advAliceToken, advBobToken, advNarrowToken, advDC1Token, advDC2Token, advDC3Token, advDC4Token} {
			if e.relay.hasLine(regexp.MustCompile(regexp.QuoteMeta(secret))) {
				t.Errorf("the relay logged a secret (%.12s...)", secret)
			}
		}
	})
	return e
}

// startAgent runs an agent process named name with its own config
// directory; relay is the YAML of its relay section without the token, extra
// is appended to the config as it is.
func (e *advEnv) startAgent(t *testing.T, name, token, relay, servers, extra string) *proc {
	t.Helper()
	// A directory of its own for every agent started: agents reload
	// their config when its file changes, so two must never share one.
	dir, err := os.MkdirTemp(e.dir, "agent-"+name+"-"+strings.ReplaceAll(t.Name(), "/", "_")+"-")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.token"), []byte(token+"\n"), 0o600))
	relay = strings.TrimSuffix(relay, "}") + ", token_file: agent.token}"
	cfg := fmt.Sprintf("name: %s\nrelay: %s\nservers:\n%s%slog: {level: debug}\n", name, relay, servers, extra)
	path := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(path, []byte(cfg), 0o600))
	return startProc(t, "agent "+name, nil, mcptunBin, "agent", "--config", path)
}

// waitOnline waits until the relay routes path: its agent is connected and
// offers the server (a ping without a session then gets the server's own
// answer, not the relay's refusal).
func (e *advEnv) waitOnline(t *testing.T, path string) {
	t.Helper()
	last := ""
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := e.doCtx(ctx, http.MethodPost, path, advAliceToken, "", nil, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
		if err != nil {
			return false
		}
		last = r.Body
		return !strings.Contains(r.Body, `"reason":"agent_offline"`) && !strings.Contains(r.Body, `"reason":"unknown_server"`)
	}, 30*time.Second, 20*time.Millisecond, "%s not routed (last answer %.200s)", path, last)
}

// --- MCP helpers -----------------------------------------------------------

const advProtocol = "2025-11-25"

func advInit(id int) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"initialize","params":{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":"adversary","version":"1"}}}`, id, advProtocol)
}

func advEcho(id int, text string) string {
	return fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"echo","arguments":{"text":%q}}}`, id, text)
}

// do sends one exchange through the relay with net/http's client.
func (e *advEnv) do(t *testing.T, method, path, token, session string, hdr map[string]string, body string) rawResp {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	r, err := e.doCtx(ctx, method, path, token, session, hdr, body)
	require.NoError(t, err, "%s %s", method, path)
	return r
}

// doCtx is do without a test: safe in any goroutine. A header in hdr with
// an empty value is removed.
func (e *advEnv) doCtx(ctx context.Context, method, path, token, session string, hdr map[string]string, body string) (rawResp, error) {
	req, err := http.NewRequestWithContext(ctx, method, e.relayURL+path, strings.NewReader(body))
	if err != nil {
		return rawResp{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("MCP-Protocol-Version", advProtocol)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
	}
	for k, v := range hdr {
		if v == "" {
			req.Header.Del(k)
		} else {
			req.Header.Set(k, v)
		}
	}
	resp, err := e.hc.Do(req)
	if err != nil {
		return rawResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return rawResp{}, fmt.Errorf("read answer: %w", err)
	}
	return rawResp{resp.StatusCode, resp.Header, string(b)}, nil
}

// initialize starts a session on path as the client of token.
func (e *advEnv) initialize(t *testing.T, path, token string) string {
	t.Helper()
	r := e.do(t, http.MethodPost, path, token, "", nil, advInit(1))
	require.Equal(t, http.StatusOK, r.StatusCode, "initialize %s: %s", path, r.Body)
	sid := r.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid, "initialize %s minted no session", path)
	n := e.do(t, http.MethodPost, path, token, sid, nil, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	require.Equal(t, http.StatusAccepted, n.StatusCode, "notifications/initialized: %s", n.Body)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodDelete, e.relayURL+path, nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Mcp-Session-Id", sid)
		if resp, err := e.hc.Do(req); err == nil {
			resp.Body.Close()
		}
	})
	return sid
}

// echoWorks asserts that the session sid of token's client on path still
// answers a tools/call with its own text.
func (e *advEnv) echoWorks(t *testing.T, path, token, sid, text string) {
	t.Helper()
	r := e.do(t, http.MethodPost, path, token, sid, nil, advEcho(7, text))
	require.Equal(t, http.StatusOK, r.StatusCode, "victim's call on %s: %s", path, r.Body)
	require.Contains(t, r.Body, text, "victim's call on %s", path)
}

// victimWorks asserts that an uninvolved client (alice) can still start a
// session on path and call a tool in it: the attack had no effect on others.
func (e *advEnv) victimWorks(t *testing.T, path string) {
	t.Helper()
	sid := e.initialize(t, path, advAliceToken)
	e.echoWorks(t, path, advAliceToken, sid, "victim unaffected")
}

// advWantError asserts an answer's status and, when reason is set, its
// JSON-RPC error body's data.reason; with no reason, that the body is a
// JSON-RPC error at all.
func advWantError(t *testing.T, status int, reason string, gotStatus int, body string) {
	t.Helper()
	require.Equal(t, status, gotStatus, "status; body %.300s", body)
	var b struct {
		Error *struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			Data    struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &b), "a JSON-RPC error body, got %.300q", body)
	require.NotNil(t, b.Error, "a JSON-RPC error body, got %.300q", body)
	require.NotEmpty(t, b.Error.Message, "the error says why")
	if reason != "" {
		require.Equal(t, reason, b.Error.Data.Reason, "error.data.reason; body %.300s", body)
	}
}

// advWantRPCError asserts the status and the JSON-RPC error code of an answer
// the agent's MCP endpoint made.
func advWantRPCError(t *testing.T, status, code int, r rawResp) {
	t.Helper()
	require.Equal(t, status, r.StatusCode, "status; body %.300s", r.Body)
	var b struct {
		Error *struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	require.NoError(t, json.Unmarshal([]byte(r.Body), &b), "a JSON-RPC error body, got %.300q", r.Body)
	require.NotNil(t, b.Error, "a JSON-RPC error body, got %.300q", r.Body)
	require.Equal(t, code, b.Error.Code, "JSON-RPC error code; body %.300s", r.Body)
}

// --- raw HTTP/1.1 ---------------------------------------------------------

// advRawConn is a client connection to the relay's HTTP front on which the
// test writes exact bytes.
type advRawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func (e *advEnv) dialHTTP(t *testing.T) *advRawConn {
	t.Helper()
	return e.dialHTTPFrom(t, e.attackerIP())
}

// dialHTTPFrom connects to the relay's HTTP front from the address ip.
func (e *advEnv) dialHTTPFrom(t *testing.T, ip net.IP) *advRawConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: ip}}
	c, err := d.Dial("tcp", e.httpAddr)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &advRawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *advRawConn) send(s string) {
	r.t.Helper()
	require.NoError(r.t, r.c.SetWriteDeadline(time.Now().Add(10*time.Second)))
	_, err := io.WriteString(r.c, s)
	require.NoError(r.t, err, "write request")
}

// answer reads one response (head and body) within 20 s.
func (r *advRawConn) answer() rawResp {
	r.t.Helper()
	require.NoError(r.t, r.c.SetReadDeadline(time.Now().Add(20*time.Second)))
	resp, err := http.ReadResponse(r.br, nil)
	require.NoError(r.t, err, "read a response")
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(r.t, err, "read the response body")
	return rawResp{resp.StatusCode, resp.Header, string(b)}
}

// closed asserts that the relay closes the connection within d without
// sending anything more.
func (r *advRawConn) closed(d time.Duration) {
	r.t.Helper()
	require.NoError(r.t, r.c.SetReadDeadline(time.Now().Add(d)))
	b, err := r.br.ReadByte()
	if err == nil {
		rest, _ := r.br.Peek(r.br.Buffered())
		r.t.Fatalf("want the connection closed, got more bytes: %.200q", append([]byte{b}, rest...))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		r.t.Fatalf("the relay kept the connection open for %s", d)
	}
}

// advHTTPReq renders a request; headers are full lines without CRLF. A
// Content-Length is added for a body unless a header sets framing.
func advHTTPReq(method, target string, headers []string, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
	framed := false
	hasHost := false
	for _, h := range headers {
		l := strings.ToLower(h)
		if strings.HasPrefix(l, "content-length:") || strings.HasPrefix(l, "transfer-encoding:") {
			framed = true
		}
		if strings.HasPrefix(l, "host:") {
			hasHost = true
		}
	}
	if !hasHost {
		b.WriteString("Host: relay.test\r\n")
	}
	for _, h := range headers {
		b.WriteString(h)
		b.WriteString("\r\n")
	}
	if !framed && (body != "" || method == http.MethodPost) {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.String()
}

// advMCPHeaders are what an MCP client sends, with the bearer token of tok
// ("" for none).
func advMCPHeaders(tok string, extra ...string) []string {
	h := []string{"Content-Type: application/json", "Accept: application/json, text/event-stream", "MCP-Protocol-Version: " + advProtocol}
	if tok != "" {
		h = append(h, "Authorization: Bearer "+tok)
	}
	return append(h, extra...)
}

// --- a listener that must never be reached ---------------------------------

// advSentinel counts connections to an address nothing in the deployment may
// reach; each case that uses one asserts it stayed at zero.
type advSentinel struct {
	ln    net.Listener
	conns atomic.Int64
	done  chan struct{}
}

func advNewSentinel(t *testing.T) *advSentinel {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &advSentinel{ln: ln, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-s.done })
	return s
}

func (s *advSentinel) addr() string { return s.ln.Addr().String() }

// --- misc ------------------------------------------------------------------

// advInsecureTLS is what an attacker that verifies nothing uses.
func advInsecureTLS(alpn ...string) *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, NextProtos: alpn, MinVersion: tls.VersionTLS12} //nolint:gosec // the attacker's side
}
