package e2e

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/devcert"
)

// requireEcho calls echo in session sid at url and checks the answer.
func requireEcho(t *testing.T, url, token, sid string, id int, text string) {
	t.Helper()
	r := rawPost(t, url, token, sid, echoCall(id, text))
	require.Equal(t, http.StatusOK, r.StatusCode, "echo in session %s at %s: %s", sid, url, r.Body)
	require.Contains(t, r.Body, text)
}

// replaceFile writes content to path the way editors save: a new file
// renamed over the old one (a watch on the file itself would lose it).
func replaceFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".swp")
	require.NoError(t, os.WriteFile(tmp, []byte(content), 0o600))
	require.NoError(t, os.Rename(tmp, path))
}

var agentConnectedLine = regexp.MustCompile(`msg="tunnel: agent connected" .*agent=dc1`)

// TestReloadAgentServers: editing agent.yaml adds a server while a session
// on another goes on (same session id, its calls answered), removes one
// (the relay answers 404 unknown_server for it from then on), and a bad
// edit is refused with file, key and reason while the old configuration
// keeps serving. The tunnel is never re-made.
func TestReloadAgentServers(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{})
	d.waitOnline(t, "notes")
	notesURL := d.relayURL + "/dc1/notes/mcp"
	extraURL := d.relayURL + "/dc1/extra/mcp"
	sid := openSession(t, notesURL)
	requireEcho(t, notesURL, clientToken, sid, 1, "before")
	r := rawPost(t, extraURL, clientToken, "", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	require.Equal(t, http.StatusNotFound, r.StatusCode, r.Body)
	require.Equal(t, "unknown_server", reason(r.Body))

	notes := fmt.Sprintf("  - {name: notes, command: [%q, \"--stdio\"]}\n", fixtureBin)
	extra := fmt.Sprintf("  - {name: extra, command: [%q, \"--stdio\"]}\n", fixtureBin)
	agentYAML := func(servers string) string {
		b, err := os.ReadFile(d.agentYAML)
		require.NoError(t, err)
		s := string(b)
		i, j := strings.Index(s, "servers:\n"), strings.Index(s, "log:")
		return s[:i] + "servers:\n" + servers + s[j:]
	}

	// Add a server, saved as an editor does.
	replaceFile(t, d.agentYAML, agentYAML(notes+extra))
	d.agent.waitLine(t, regexp.MustCompile(`msg="config reloaded".*trigger="file changed".*servers \+extra`), 15*time.Second)
	d.relay.waitLine(t, regexp.MustCompile(`msg="tunnel: agent offers changed" .*agent=dc1 .*added=extra`), 15*time.Second)
	requireEcho(t, notesURL, clientToken, sid, 2, "after adding a server")
	esid := openSession(t, extraURL)
	requireEcho(t, extraURL, clientToken, esid, 1, "on the new server")

	// A bad edit: refused, named by file, key and reason; nothing changes.
	replaceFile(t, d.agentYAML, agentYAML(notes+"  - {name: \"bad name!\", command: [x]}\n"))
	refused := d.agent.waitLine(t, regexp.MustCompile(`level=ERROR msg="config reload refused: the running configuration stays".*err="(.*)"`), 15*time.Second)
	require.Contains(t, refused[1], "config "+d.agentYAML+": servers[1].name")
	requireEcho(t, notesURL, clientToken, sid, 3, "after a bad edit")
	requireEcho(t, extraURL, clientToken, esid, 2, "extra after a bad edit")

	// Remove the new server (a file written in place this time).
	require.NoError(t, os.WriteFile(d.agentYAML, []byte(agentYAML(notes)), 0o600))
	d.relay.waitLine(t, regexp.MustCompile(`msg="tunnel: agent offers changed" .*agent=dc1 .*removed=extra`), 15*time.Second)
	r = rawPost(t, extraURL, clientToken, esid, echoCall(3, "gone"))
	require.Equal(t, http.StatusNotFound, r.StatusCode, r.Body)
	require.Equal(t, "unknown_server", reason(r.Body))
	requireEcho(t, notesURL, clientToken, sid, 4, "after removing a server")

	require.Equal(t, 1, countLines(d.relay, agentConnectedLine), "the agent reconnected during the reloads")
}

// TestSIGHUPReloads: SIGHUP ends neither the relay nor the agent (before
// hot reload it ended the relay: Go's default action); each reloads its
// file, and the session that was open goes on. Sent twice in a row, too.
func TestSIGHUPReloads(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{})
	d.waitOnline(t, "notes")
	url := d.relayURL + "/dc1/notes/mcp"
	sid := openSession(t, url)
	for i, p := range []*proc{d.relay, d.agent, d.relay, d.agent} {
		before := countLines(p, regexp.MustCompile(`msg="config reloaded: nothing to change live".*trigger=SIGHUP`))
		p.signal(t, syscall.SIGHUP)
		waitLinesAlive(t, p, regexp.MustCompile(`msg="config reloaded: nothing to change live".*trigger=SIGHUP`), before+1, 15*time.Second)
		requireEcho(t, url, clientToken, sid, i+1, fmt.Sprintf("after SIGHUP %d to the %s", i+1, p.name))
	}
	require.Equal(t, 1, countLines(d.relay, agentConnectedLine), "the agent reconnected")
}

// TestReloadRelayClients: editing relay.yaml adds a client (its token
// works at once) and removes one (its next request gets 401), while the
// tunnel and the sessions of other clients go on; a bad edit is refused
// and a key that needs a restart is named; removing the agent's
// credential disconnects it.
func TestReloadRelayClients(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{})
	d.waitOnline(t, "notes")
	url := d.relayURL + "/dc1/notes/mcp"
	sid := openSession(t, url)
	const newToken = "newbie-secret-0123456789"
	r := rawPost(t, url, newToken, "", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	require.Equal(t, http.StatusUnauthorized, r.StatusCode, r.Body)
	r = rawPost(t, url, throttledToken, "", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	require.NotEqual(t, http.StatusUnauthorized, r.StatusCode, r.Body)

	orig, err := os.ReadFile(d.relayYAML)
	require.NoError(t, err)
	throttledLine := regexp.MustCompile(`(?m)^  - \{name: throttled.*\n`)
	require.True(t, throttledLine.Match(orig))
	edited := throttledLine.ReplaceAllString(string(orig),
		fmt.Sprintf("  - {name: newbie, token_sha256: %q, allow: [\"dc1/notes\"]}\n", sha256Hex(newToken)))
	replaceFile(t, d.relayYAML, edited)
	d.relay.waitLine(t, regexp.MustCompile(`msg="config reloaded".*changes="clients \+newbie -throttled"`), 15*time.Second)

	nsid := openSessionAs(t, url, newToken)
	requireEcho(t, url, newToken, nsid, 1, "new client")
	r = rawPost(t, url, throttledToken, "", `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
	require.Equal(t, http.StatusUnauthorized, r.StatusCode, r.Body)
	requireEcho(t, url, clientToken, sid, 1, "old session after the reload")
	require.False(t, d.relay.hasLine(regexp.MustCompile(regexp.QuoteMeta(sha256Hex(newToken)))), "a token hash was logged")

	// A bad edit is refused; the file, key and reason are logged.
	bad := strings.Replace(edited, `allow: ["dc1/notes"]`, `allow: []`, 1)
	replaceFile(t, d.relayYAML, bad)
	refused := d.relay.waitLine(t, regexp.MustCompile(`level=ERROR msg="config reload refused: the running configuration stays".*err="(.*)"`), 15*time.Second)
	require.Contains(t, refused[1], "config "+d.relayYAML+": clients[2].allow: empty")
	requireEcho(t, url, newToken, nsid, 2, "new client after a bad edit")

	// A key that needs a restart: named, and the rest still applies.
	restart := strings.Replace(edited, `http: {listen: "127.0.0.1:0"`, `http: {listen: "127.0.0.1:0", max_connections: 77`, 1)
	restart = strings.Replace(restart, "log: {level: debug}", "log: {level: info}", 1)
	replaceFile(t, d.relayYAML, restart)
	d.relay.waitLine(t, regexp.MustCompile(`level=WARN msg=.*needs restart.* keys=http.max_connections`), 15*time.Second)
	d.relay.waitLine(t, regexp.MustCompile(`msg="config reloaded".*changes="log.level debug→info"`), 15*time.Second)
	requireEcho(t, url, clientToken, sid, 2, "after a restart-only change")
	require.Equal(t, 1, countLines(d.relay, agentConnectedLine), "the agent reconnected")

	// The agent's credential removed: its session is cut, and it is
	// refused from then on.
	cut := strings.Replace(restart, fmt.Sprintf("{name: dc1, token_sha256: %q}", sha256Hex(agentToken)),
		fmt.Sprintf("{name: dc1, token_sha256: %q}", sha256Hex("another-token-0123456789")), 1)
	require.NotEqual(t, restart, cut)
	replaceFile(t, d.relayYAML, cut)
	d.relay.waitLine(t, regexp.MustCompile(`msg="tunnel: agent credential removed from the configuration: disconnecting" .*agent=dc1`), 15*time.Second)
	d.agent.waitLine(t, regexp.MustCompile(`credential_removed`), 15*time.Second)
	d.waitOffline(t, "notes")
}

// openSessionAs is openSession with another client's token.
func openSessionAs(t *testing.T, url, token string) string {
	t.Helper()
	r := rawPost(t, url, token, "", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"`+mcp.LATEST_LEGACY_PROTOCOL_VERSION+`","capabilities":{},"clientInfo":{"name":"reload","version":"1"}}}`)
	require.Equal(t, http.StatusOK, r.StatusCode, "initialize: %s", r.Body)
	sid := r.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)
	r = rawPost(t, url, token, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	require.Equal(t, http.StatusAccepted, r.StatusCode, r.Body)
	return sid
}

// waitLinesAlive is waitLines failing at once, with how, if p exits first.
func waitLinesAlive(t *testing.T, p *proc, re *regexp.Regexp, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		_, changed := p.out.snapshot()
		if countLines(p, re) >= n {
			return
		}
		select {
		case <-changed:
		case <-p.done:
			t.Fatalf("%s exited (%v) before printing %d lines matching %q", p.name, p.err, n, re)
		case <-deadline:
			t.Fatalf("%s printed %d lines matching %q within %s, want %d", p.name, countLines(p, re), re, timeout, n)
		}
	}
}

// peerCert is the SHA-256 of the certificate a TLS server at addr
// presents now (with the tunnel's ALPN when alpn is set).
func peerCert(t *testing.T, addr string, alpn ...string) string {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{InsecureSkipVerify: true, NextProtos: alpn}) // #nosec G402 -- the test compares what it is shown
	require.NoError(t, err)
	defer c.Close()
	return sha256Hex(string(c.ConnectionState().PeerCertificates[0].Raw))
}

// TestReloadRelayCertificates: a certificate renewed under the same file
// names is served to new connections after SIGHUP, on the tunnel port and
// the HTTPS front, while the agent's tunnel stays up; a broken certificate
// file is refused and the running one stays.
func TestReloadRelayCertificates(t *testing.T) {
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{http: "cert_file: relay.crt, key_file: relay.key"})
	d.startRelay(t)
	d.writeAgentConfig(t, agentOpts{})
	d.startAgent(t)
	d.relay.waitLine(t, agentConnectedLine, 20*time.Second)
	httpAddr := strings.TrimPrefix(d.relayURL, "https://")
	oldCert := peerCert(t, httpAddr)
	require.Equal(t, oldCert, peerCert(t, d.tunnelAddr, "mcptun/1"))

	certPEM, keyPEM, err := devcert.Generate("127.0.0.1", "localhost")
	require.NoError(t, err)
	replaceFile(t, filepath.Join(d.dir, "relay.key"), string(keyPEM))
	replaceFile(t, filepath.Join(d.dir, "relay.crt"), string(certPEM))
	d.relay.signal(t, syscall.SIGHUP)
	d.relay.waitLine(t, regexp.MustCompile(`msg="config reloaded" .*changes="certificate reloaded: tunnel,http"`), 15*time.Second)
	newCert := peerCert(t, httpAddr)
	require.NotEqual(t, oldCert, newCert)
	require.Equal(t, newCert, peerCert(t, d.tunnelAddr, "mcptun/1"))

	// The tunnel made with the old certificate carries calls still.
	cl := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // #nosec G402
	defer cl.CloseIdleConnections()
	req, _ := http.NewRequest(http.MethodPost, d.relayURL+"/dc1/notes/mcp", strings.NewReader(
		`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"`+mcp.LATEST_LEGACY_PROTOCOL_VERSION+`","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`))
	req.Header.Set("Authorization", "Bearer "+clientToken)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	resp, err := cl.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, 1, countLines(d.relay, agentConnectedLine), "the agent reconnected")

	// A broken certificate: refused, named; the served one stays.
	replaceFile(t, filepath.Join(d.dir, "relay.crt"), "not a certificate\n")
	d.relay.signal(t, syscall.SIGHUP)
	refused := d.relay.waitLine(t, regexp.MustCompile(`level=ERROR msg="config reload refused: the running configuration stays".*err="(.*)"`), 15*time.Second)
	require.Contains(t, refused[1], "config "+d.relayYAML+": tunnel.cert_file:")
	require.Equal(t, newCert, peerCert(t, httpAddr))
}
