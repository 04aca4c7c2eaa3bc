package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestConfigErrors: a bad config stops the binary at start with the file,
// the key and the reason, and `mcptun check` reports the same.
func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "relay.yaml")
	require.NoError(t, os.WriteFile(bad, []byte(`tunnel: {listen: "127.0.0.1:0", cert_file: c, key_file: k}
http: {listen: "127.0.0.1:0"}
agents: [{name: dc1, token_sha256: "abc"}]
clients: [{name: ci, token_sha256: "abc", allow: ["wiki"]}]
`), 0o600))
	for _, args := range [][]string{
		{"relay", "--config", bad},
		{"check", "--relay", bad},
	} {
		out, err := exec.Command(mcptunBin, args...).CombinedOutput()
		require.Error(t, err, "mcptun %v must fail", args)
		s := string(out)
		require.Contains(t, s, bad)
		require.Contains(t, s, "agents[0].token_sha256: must be the 64 hex characters")
		require.Contains(t, s, `clients[0].allow[0]: pattern "wiki" must be agent/server`)
	}

	agentCfg := filepath.Join(dir, "agent.yaml")
	require.NoError(t, os.WriteFile(agentCfg, []byte(`name: dc1
relay: {address: "127.0.0.1:1", token: "inline-secret"}
servers: [{name: notes, command: [x]}]
`), 0o600))
	out, err := exec.Command(mcptunBin, "agent", "--config", agentCfg).CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), "relay.token: secrets must not be written inline")
	require.NotContains(t, string(out), "inline-secret", "the secret itself is never echoed")

	// Environment overrides reach the same validation.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.token"), []byte("s3cret\n"), 0o600))
	require.NoError(t, os.WriteFile(agentCfg, []byte(`name: dc1
relay: {address: "127.0.0.1:1", token_file: agent.token}
servers: [{name: notes, command: [x]}]
`), 0o600))
	out, err = exec.Command(mcptunBin, "check", "--agent", agentCfg).CombinedOutput()
	require.NoError(t, err, string(out))
	cmd := exec.Command(mcptunBin, "check", "--agent", agentCfg)
	cmd.Env = append(os.Environ(), "MCPTUN_RELAY_TRANSPORT=carrier-pigeon")
	out, err = cmd.CombinedOutput()
	require.Error(t, err)
	require.Contains(t, string(out), `relay.transport: must be one of auto, quic, tcp, not "carrier-pigeon"`)
}

// TestCheckExamples: the shipped examples pass `mcptun check` once the
// files they name exist.
func TestCheckExamples(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"relay.yaml", "agent.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o600))
	}
	for _, f := range []string{"agent.token", "relay.crt", "relay.key"} {
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), []byte("x\n"), 0o600))
	}
	out, err := exec.Command(mcptunBin, "check", "--relay", filepath.Join(dir, "relay.yaml"), "--agent", filepath.Join(dir, "agent.yaml")).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Equal(t, 2, strings.Count(string(out), ": ok"))
}

// TestTokenCommands: `token new` prints a token and its hash; `token hash`
// agrees.
func TestTokenCommands(t *testing.T) {
	out, err := exec.Command(mcptunBin, "token", "new").Output()
	require.NoError(t, err)
	var token, hash string
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "token:"); ok {
			token = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "token_sha256:"); ok {
			hash = strings.TrimSpace(v)
		}
	}
	require.GreaterOrEqual(t, len(token), 40)
	require.Equal(t, sha256Hex(token), hash)
	cmd := exec.Command(mcptunBin, "token", "hash")
	cmd.Stdin = strings.NewReader(token + "\n")
	out, err = cmd.Output()
	require.NoError(t, err)
	require.Equal(t, hash, strings.TrimSpace(string(out)))
}

// TestSystemdUnits: the example units start a subcommand that exists, with
// flags it takes, on a config named like a shipped example.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob(filepath.Join("..", "..", "examples", "systemd", "*.service"))
	require.NoError(t, err)
	require.Len(t, units, 2)
	for _, u := range units {
		b, err := os.ReadFile(u)
		require.NoError(t, err)
		var argv []string
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "ExecStart="); ok {
				argv = strings.Fields(v)
			}
		}
		require.GreaterOrEqual(t, len(argv), 4, "%s: ExecStart", u)
		require.Equal(t, "/usr/local/bin/mcptun", argv[0], u)
		sub := argv[1]
		require.Contains(t, filepath.Base(u), sub, "%s runs the %s role", u, sub)
		help, err := exec.Command(mcptunBin, sub, "--help").CombinedOutput()
		require.NoError(t, err, "%s: %s", u, help)
		for i := 2; i < len(argv); i++ {
			if flag, ok := strings.CutPrefix(argv[i], "--"); ok {
				require.Contains(t, string(help), "--"+flag+" ", "%s: mcptun %s takes --%s", u, sub, flag)
				continue
			}
			_, err := os.Stat(filepath.Join("..", "..", "examples", filepath.Base(argv[i])))
			require.NoError(t, err, "%s: %s is named like a shipped example config", u, argv[i])
		}
	}
}
