package e2e

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/conformance"
	"github.com/mcptun/mcptun/internal/pki"
	"github.com/mcptun/mcptun/tunnel"
)

// freePort returns a port free on 127.0.0.1 for both TCP and UDP just now
// (init needs fixed ports: the agent and the clients must know them).
func freePort(t *testing.T) int {
	t.Helper()
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		port := ln.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		ln.Close()
		if err == nil {
			udp.Close()
			return port
		}
	}
	t.Fatal("no port free for both TCP and UDP")
	return 0
}

// runMcptun runs the binary to completion and returns its output.
func runMcptun(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, mcptunBin, args...).CombinedOutput()
	return string(out), err
}

// initDir runs mcptun init into a fresh directory with free ports and
// returns the directory, the client URL and the client token it printed.
func initDir(t *testing.T) (dir, url, token string) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "mcptun")
	tport, hport := freePort(t), freePort(t)
	out, err := runMcptun(t, "init", dir, "--host", "127.0.0.1",
		"--tunnel-listen", "127.0.0.1:"+strconv.Itoa(tport), "--http-listen", "127.0.0.1:"+strconv.Itoa(hport))
	require.NoError(t, err, out)
	m := regexp.MustCompile(`URL (http://\S+)\n\s+header Authorization: Bearer (\S+)`).FindStringSubmatch(out)
	require.NotNil(t, m, "init printed no client URL and token:\n%s", out)
	for _, want := range []string{"1. start the relay:", "2. start the agent:", "3. point a client:"} {
		require.Contains(t, out, want)
	}
	b, err := os.ReadFile(filepath.Join(dir, "relay.yaml"))
	require.NoError(t, err)
	require.NotContains(t, string(b), m[2], "relay.yaml stores only the client token's hash")
	require.Contains(t, string(b), sha256Hex(m[2]))
	for _, f := range []string{"agent.token", "ca.key", "relay.key"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	return dir, m[1], m[2]
}

// TestInitCheckRunCall: init → check --probe → relay + agent as printed →
// check --probe sees the relay over QUIC → a real client's call.
func TestInitCheckRunCall(t *testing.T) {
	dir, url, token := initDir(t)
	relayYAML, agentYAML := filepath.Join(dir, "relay.yaml"), filepath.Join(dir, "agent.yaml")
	// A url server too: the example server over HTTP.
	wiki := startProc(t, "wiki", nil, mcptunBin, "example-server", "--listen", "127.0.0.1:0", "--notes-dir", t.TempDir())
	wikiURL := wiki.waitLine(t, regexp.MustCompile(`^listening (http://\S+)$`), 10*time.Second)[1]
	b, err := os.ReadFile(agentYAML)
	require.NoError(t, err)
	withWiki := strings.Replace(string(b), "log: {", "  - {name: wiki, url: \""+wikiURL+"\"}\nlog: {", 1)
	require.NotEqual(t, string(b), withWiki)
	require.NoError(t, os.WriteFile(agentYAML, []byte(withWiki), 0o600))

	out, err := runMcptun(t, "check", "--relay", relayYAML, "--agent", agentYAML, "--probe")
	require.NoError(t, err, out)
	require.Regexp(t, `ok: +servers\[0\] notes \(stdio\) answers: 5 tool\(s\): .*write_note`, out)
	require.Regexp(t, `ok: +servers\[1\] wiki \(url\) answers: 5 tool\(s\): .*write_note`, out)
	require.Regexp(t, `ok: +agent "dc1" is agents\[0\] of .* matches its token_sha256`, out)
	require.Regexp(t, `ok: +relay.ca_file .* trusts the relay's tunnel certificate for 127.0.0.1`, out)
	require.Contains(t, out, "nothing listens there", "the relay is not started yet: a warning")

	relay := startProc(t, "relay", nil, mcptunBin, "relay", "--config", relayYAML)
	relay.waitLine(t, relayStarted, 20*time.Second)
	agent := startProc(t, "agent", nil, mcptunBin, "agent", "--config", agentYAML)
	agent.waitLine(t, regexp.MustCompile(`tunnel: relay up`), 20*time.Second)

	out, err = runMcptun(t, "check", "--relay", relayYAML, "--agent", agentYAML, "--probe")
	require.NoError(t, err, out)
	require.Regexp(t, `ok: +relay 127\.0\.0\.1:\d+: QUIC \(UDP\): ok in .*TLS/TCP: ok in .*the agent \(transport auto\) would use quic`, out)
	out, err = runMcptun(t, "check", "--relay", relayYAML, "--probe")
	require.NoError(t, err, out)
	require.Regexp(t, `ok: +relay 127\.0\.0\.1:\d+: .*would use quic`, out, "the relay's own tunnel listener")

	c, _ := newClient(t, url, token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := mcp.CallToolRequest{}
	req.Params.Name = "write_note"
	req.Params.Arguments = map[string]any{"name": "hello", "content": "through the tunnel"}
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err)
	require.False(t, res.IsError, "%+v", res.Content)
	notes, err := filepath.Glob(filepath.Join(dir, "notes", "hello*"))
	require.NoError(t, err)
	require.Len(t, notes, 1, "the note is written by the agent's example server, in init's notes/")
	b, err = os.ReadFile(notes[0])
	require.NoError(t, err, "the note is written by the agent's example server, in init's notes/")
	require.Contains(t, string(b), "through the tunnel")
}

// TestCheckCatches: check finds, with a message naming the cause, a key
// that is not the certificate's, a command that is not installed, an agent
// token the relay does not list, an agent pointed at the HTTP port, and a
// CA that did not sign the relay's certificate.
func TestCheckCatches(t *testing.T) {
	dir, _, _ := initDir(t)
	relayYAML, agentYAML := filepath.Join(dir, "relay.yaml"), filepath.Join(dir, "agent.yaml")
	read := func(f string) string {
		b, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		return string(b)
	}
	write := func(f, s string) {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte(s), 0o600))
	}
	origAgent, origKey, origToken := read("agent.yaml"), read("relay.key"), read("agent.token")
	otherDir := t.TempDir()
	other, err := pki.Make(pki.Options{Dir: otherDir, Names: []string{"127.0.0.1"}})
	require.NoError(t, err)
	httpPort := regexp.MustCompile(`http:\n  listen: "127\.0\.0\.1:(\d+)"`).FindStringSubmatch(read("relay.yaml"))[1]

	for _, tc := range []struct {
		name   string
		break_ func()
		want   string
	}{
		{"key of another certificate", func() {
			b, err := os.ReadFile(other.Key)
			require.NoError(t, err)
			write("relay.key", string(b))
			out, err := runMcptun(t, "relay", "--config", relayYAML)
			require.Error(t, err, "the relay does not start with it either")
			require.Contains(t, out, "tunnel.cert_file: tls: private key does not match public key")
		}, `tunnel.key_file: .*relay.key is not the key of the certificate in .*relay.crt \(tunnel.cert_file\): they do not match`},
		{"missing command", func() {
			write("agent.yaml", regexp.MustCompile(`command: \[.*\]`).ReplaceAllString(origAgent, `command: [no-such-mcp-server-4711, --stdio]`))
		}, `servers\[0\]\.command\[0\]: "no-such-mcp-server-4711" not found on PATH`},
		{"wrong credential", func() {
			write("agent.token", "not-the-token-relay-yaml-lists\n")
		}, `agents\[0\]\.token_sha256: does not match the token in .*agent.token .*whose SHA-256 is ` + sha256Hex("not-the-token-relay-yaml-lists") + `: the relay will refuse the agent`},
		{"agent at the HTTP port", func() {
			write("agent.yaml", regexp.MustCompile(`address: "127\.0\.0\.1:\d+"`).ReplaceAllString(origAgent, `address: "127.0.0.1:`+httpPort+`"`))
		}, `relay.address: 127\.0\.0\.1:` + httpPort + ` is the relay's HTTP port \(http.listen`},
		{"CA that did not sign the relay's certificate", func() {
			write("agent.yaml", strings.Replace(origAgent, "ca_file: ca.crt", "ca_file: "+other.CACert, 1))
		}, `relay.ca_file: relay.ca_file .* does not trust the relay's tunnel certificate .*set relay.ca_file to the CA that signed it .*or relay.pin_sha256: "[0-9a-f]{64}"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.break_()
			defer func() {
				write("agent.yaml", origAgent)
				write("relay.key", origKey)
				write("agent.token", origToken)
			}()
			out, err := runMcptun(t, "check", "--relay", relayYAML, "--agent", agentYAML)
			require.Error(t, err, out)
			require.Regexp(t, `problem: config .*`+tc.want, out)
			require.Contains(t, out, "check: 1 problem(s) found")
		})
	}
	out, err := runMcptun(t, "check", "--relay", relayYAML, "--agent", agentYAML)
	require.NoError(t, err, "restored: %s", out)

	// A server that starts and fails: --probe shows the end of its stderr.
	write("agent.yaml", regexp.MustCompile(`command: \[.*\]`).ReplaceAllString(origAgent, `command: [sh, -c, "echo no database at /srv/db >&2; exit 3"]`))
	out, err = runMcptun(t, "check", "--agent", agentYAML, "--probe", "--timeout", "10s")
	require.Error(t, err, out)
	require.Regexp(t, `problem: config .*servers\[0\]: notes: .*its stderr ends: no database at /srv/db`, out)
	write("agent.yaml", origAgent)

	// A renewed certificate from the same CA: agents with ca_file keep
	// trusting it; one that expires within 30 days is a warning.
	out, err = runMcptun(t, "cert", "--dir", dir, "--name", "127.0.0.1", "--days", "10", "--force")
	require.NoError(t, err, out)
	require.Contains(t, out, "(existing, reused)")
	out, err = runMcptun(t, "check", "--relay", relayYAML, "--agent", agentYAML)
	require.NoError(t, err, out)
	require.Regexp(t, `warning: config .*tunnel.cert_file: the certificate in .*relay.crt expires on \d{4}-\d\d-\d\d; renew it soon`, out)
	require.Contains(t, out, "trusts the relay's tunnel certificate for 127.0.0.1")
}

// TestQuickExpose: an agent without a config file exposes a real npm MCP
// server (server-everything) by its command line, prints the client URL
// the relay told it, and a real client uses that URL. The relay's HTTP
// port, given as --relay by mistake, gets the hint in the agent's log.
func TestQuickExpose(t *testing.T) {
	conformance.RequireTools(t)
	argv, err := conformance.EverythingStdioCommand()
	require.NoError(t, err)
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{})
	d.startRelay(t)
	pair, err := tls.LoadX509KeyPair(filepath.Join(d.dir, "relay.crt"), filepath.Join(d.dir, "relay.key"))
	require.NoError(t, err)
	pin := tunnel.PinSHA256(pair.Leaf)
	tokenFile := filepath.Join(d.dir, "dc1.token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(agentToken+"\n"), 0o600))

	args := append([]string{"agent", "--relay", d.tunnelAddr, "--name", "dc1", "--token-file", tokenFile, "--pin", pin, "--"}, argv...)
	agent := startProc(t, "agent", nil, mcptunBin, args...)
	m := agent.waitLine(t, regexp.MustCompile(`^client URL: (\S+)$`), 30*time.Second)
	require.Equal(t, d.relayURL+"/dc1/everything/mcp", m[1], "the server is named after its package")

	c, _ := newClient(t, m[1], clientToken)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req := mcp.CallToolRequest{}
	req.Params.Name = "echo"
	req.Params.Arguments = map[string]any{"message": "quick"}
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err)
	require.Contains(t, res.Content[0].(mcp.TextContent).Text, "quick")

	// The relay's HTTP port instead of its tunnel port.
	httpAddr := strings.TrimPrefix(d.relayURL, "http://")
	wrong := startProc(t, "agent-wrong-port", nil, mcptunBin, "agent", "--relay", httpAddr, "--name", "dc1",
		"--token-file", tokenFile, "--pin", pin, "--transport", "tcp", "--url", "wiki=http://127.0.0.1:1/mcp")
	wrong.waitLine(t, regexp.MustCompile(`cannot connect to relay.*hint="this address answers, but not as a relay tunnel: it looks like the relay's HTTP port`), 20*time.Second)
}
