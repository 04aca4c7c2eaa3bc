package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

// relayLine runs `mcptun ARGS...` and returns the value of the YAML line
// it prints for relay.yaml that starts with key (public_keys:, cert_sha256:).
func relayLine(t *testing.T, key string, args ...string) string {
	t.Helper()
	out, err := exec.Command(mcptunBin, args...).CombinedOutput()
	require.NoError(t, err, "mcptun %v: %s", args, out)
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatalf("mcptun %v printed no %s line:\n%s", args, key, out)
	return ""
}

// newAgentKey makes a key file with `mcptun key new` and returns the flow
// list it prints for public_keys.
func newAgentKey(t *testing.T, path string) string {
	t.Helper()
	list := relayLine(t, "public_keys", "key", "new", "--out", path)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), "key new writes the key for its owner only")
	return list
}

// keyRelayConfig writes relay.yaml with dc1 authenticated by creds (YAML
// flow keys, e.g. `public_keys: [...]`) instead of its token.
func keyRelayConfig(t *testing.T, d *deployment, ro relayOpts, creds string) {
	t.Helper()
	d.relayYAML = writeRelayConfig(t, d.dir, ro)
	b, err := os.ReadFile(d.relayYAML)
	require.NoError(t, err)
	old := fmt.Sprintf("{name: dc1, token_sha256: %q}", sha256Hex(agentToken))
	require.Contains(t, string(b), old)
	require.NoError(t, os.WriteFile(d.relayYAML, []byte(strings.Replace(string(b), old, "{name: dc1, "+creds+"}", 1)), 0o600))
}

// startKeyAgent runs agent dc1 (the stdio fixture as "notes") with the
// relay keys given, e.g. `key_file: agent.key`.
func (d *deployment) startKeyAgent(t *testing.T, transport, creds string) {
	t.Helper()
	cfg := fmt.Sprintf(`name: dc1
relay: {address: %q, ca_file: relay.crt, transport: %s, %s}
servers:
  - {name: notes, command: [%q, "--stdio"]}
log: {level: debug}
`, d.tunnelAddr, transport, creds, fixtureBin)
	d.agentYAML = filepath.Join(d.dir, "agent.yaml")
	require.NoError(t, os.WriteFile(d.agentYAML, []byte(cfg), 0o600))
	d.startAgent(t)
}

// callEchoTool makes one tools/call through the relay with a real MCP client.
func callEchoTool(t *testing.T, url string) {
	t.Helper()
	c, _ := newClient(t, url, clientToken)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := mcp.CallToolRequest{}
	req.Params.Name = mcptest.ToolEcho
	req.Params.Arguments = map[string]any{"text": "signed, not shared"}
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err)
	require.False(t, res.IsError, textOf(res))
	require.Contains(t, textOf(res), "signed, not shared")
}

// TestAgentKey: an agent whose relay.key_file holds a key from `mcptun key
// new`, listed in relay.yaml as the line that command prints, connects over
// QUIC and over TCP and serves a tools/call; the relay logs how it
// authenticated and never the key.
func TestAgentKey(t *testing.T) {
	for _, tc := range []struct{ transport, want string }{{"quic", "quic"}, {"tcp", "tcp+yamux"}} {
		t.Run(tc.transport, func(t *testing.T) {
			d := &deployment{dir: t.TempDir()}
			pubs := newAgentKey(t, filepath.Join(d.dir, "agent.key"))
			keyRelayConfig(t, d, relayOpts{}, "public_keys: "+pubs)
			d.startRelay(t)
			d.startKeyAgent(t, tc.transport, "key_file: agent.key")
			d.waitOnline(t, "notes")
			d.relay.waitLine(t, regexp.MustCompile(`agent connected.* agent=dc1 .*auth=ed25519 .*transport=`+regexp.QuoteMeta(tc.want)), 5*time.Second)
			callEchoTool(t, d.relayURL+"/dc1/notes/mcp")

			keyPEM, err := os.ReadFile(filepath.Join(d.dir, "agent.key"))
			require.NoError(t, err)
			b64 := strings.Split(string(keyPEM), "\n")[1]
			require.False(t, d.agent.hasLine(regexp.MustCompile(regexp.QuoteMeta(b64))), "the agent never logs its private key")
		})
	}
}

// TestAgentUnlistedKeyRefused: an agent with a key the relay does not list
// is refused; the agent's log names the public key to list, and the relay
// never routes it an exchange (503, agent offline).
func TestAgentUnlistedKeyRefused(t *testing.T) {
	d := &deployment{dir: t.TempDir()}
	listed := newAgentKey(t, filepath.Join(d.dir, "listed.key"))
	unlisted := newAgentKey(t, filepath.Join(d.dir, "agent.key"))
	keyRelayConfig(t, d, relayOpts{}, "public_keys: "+listed)
	d.startRelay(t)
	d.startKeyAgent(t, "quic", "key_file: agent.key")

	var pub []string
	require.NoError(t, json.Unmarshal([]byte(unlisted), &pub))
	d.agent.waitLine(t, regexp.MustCompile(`relay refused: bad credential.*public_key="?`+regexp.QuoteMeta(pub[0])), 20*time.Second)
	d.relay.waitLine(t, regexp.MustCompile(`refused agent".* agent=dc1 .*reason="key not listed"`), 5*time.Second)
	// The refusal came before any registration: the endpoint is offline.
	r := rawPost(t, d.relayURL+"/dc1/notes/mcp", clientToken, "", initializeBody)
	require.Equal(t, http.StatusServiceUnavailable, r.StatusCode, r.Body)
	require.Contains(t, r.Body, "agent_offline")
	require.False(t, d.relay.hasLine(regexp.MustCompile(`agent connected`)), "the relay never registered the agent")
}

// TestAgentClientCertificate: an agent with relay.cert_file and key_file
// (mTLS), listed in relay.yaml by the cert_sha256 line `mcptun key show`
// prints for its certificate, serves a tools/call over TCP.
func TestAgentClientCertificate(t *testing.T) {
	d := &deployment{dir: t.TempDir()}
	writeClientCert(t, d.dir)
	hashes := relayLine(t, "cert_sha256", "key", "show", filepath.Join(d.dir, "agent.crt"))
	keyRelayConfig(t, d, relayOpts{}, "cert_sha256: "+hashes)
	d.startRelay(t)
	d.startKeyAgent(t, "tcp", "cert_file: agent.crt, key_file: agent.key")
	d.waitOnline(t, "notes")
	d.relay.waitLine(t, regexp.MustCompile(`agent connected.* agent=dc1 .*auth=certificate `), 5*time.Second)
	callEchoTool(t, d.relayURL+"/dc1/notes/mcp")
}

// writeClientCert writes agent.crt and agent.key: a self-signed ECDSA
// client certificate valid for a day.
func writeClientCert(t *testing.T, dir string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "dc1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600))
}

// TestKeyCommands: `key new` never overwrites a key, `key show` prints the
// line `key new` printed, `--out -` keeps the key on stdout and the rest
// on stderr, and a certificate's ECDSA key is not taken for an agent key.
// `token new` prints the quoted token_sha256 line for relay.yaml.
func TestKeyCommands(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "agent.key")
	line := newAgentKey(t, path)
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	out, err := exec.Command(mcptunBin, "key", "new", "--out", path).CombinedOutput()
	require.Error(t, err, "key new over an existing file: %s", out)
	require.Contains(t, string(out), "exists; not overwriting")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after, "the existing key is untouched")
	require.Equal(t, line, relayLine(t, "public_keys", "key", "show", path))

	cmd := exec.Command(mcptunBin, "key", "new", "--out", "-")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(stdout), "-----BEGIN PRIVATE KEY-----\n"), "stdout holds the key only: %q", stdout)
	require.Contains(t, stderr.String(), `public_keys: ["ed25519:`)

	writeClientCert(t, dir)
	out, err = exec.Command(mcptunBin, "key", "show", filepath.Join(dir, "agent.key")).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "not an Ed25519 key")

	out, err = exec.Command(mcptunBin, "token", "new").Output()
	require.NoError(t, err)
	require.Regexp(t, `(?m)^  token_sha256: "[0-9a-f]{64}"$`, string(out))
}
