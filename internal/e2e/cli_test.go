package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

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
servers: [{name: notes, command: [sh]}]
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
// files they name exist: a certificate for the name the agent dials, the
// token whose hash relay.yaml lists (the example's placeholder, "test"),
// the stdio server's program.
func TestCheckExamples(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{"relay.yaml", "agent.yaml"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "examples", f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o600))
	}
	out, err := exec.Command(mcptunBin, "cert", "--dir", dir, "--name", "relay.example.com").CombinedOutput()
	require.NoError(t, err, string(out))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "agent.token"), []byte("test\n"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "notes-server"), []byte("#!/bin/sh\n"), 0o700))
	out, err = exec.Command(mcptunBin, "check", "--relay", filepath.Join(dir, "relay.yaml"), "--agent", filepath.Join(dir, "agent.yaml")).CombinedOutput()
	require.NoError(t, err, string(out))
	require.Equal(t, 2, strings.Count(string(out), ".yaml: ok"), string(out))
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

// TestSecretFileModes: a key or token file others can write stops `check`
// and the role at start; one every user can read passes with a warning
// from both. Each message names the file and the chmod that fixes it.
func TestSecretFileModes(t *testing.T) {
	d := &deployment{dir: t.TempDir()}
	relayYAML := writeRelayConfig(t, d.dir, relayOpts{})
	key := filepath.Join(d.dir, "relay.key")
	d.tunnelAddr = "127.0.0.1:1"
	d.writeAgentConfig(t, agentOpts{transport: "tcp"})
	token := filepath.Join(d.dir, "agent.token")

	exitCode := func(err error) int {
		t.Helper()
		if err == nil {
			return 0
		}
		var ee *exec.ExitError
		require.ErrorAs(t, err, &ee)
		return ee.ExitCode()
	}
	for _, tc := range []struct {
		name      string
		file      string
		mode      os.FileMode
		check     []string // the check command's arguments
		start     []string // the role's
		wantCode  int
		wantLines []string
	}{
		{"relay key readable by all", key, 0o644, []string{"--relay", relayYAML}, []string{"relay", "--config", relayYAML}, 0,
			[]string{relayYAML + ": tunnel.key_file: secret file " + key + " is readable by every user (mode 0644); fix with: chmod 600 " + key}},
		{"relay key writable by group", key, 0o660, []string{"--relay", relayYAML}, []string{"relay", "--config", relayYAML}, 1,
			[]string{relayYAML + ": tunnel.key_file: secret file " + key + " is writable by group (mode 0660)", "fix with: chmod 600 " + key}},
		{"agent token writable by others", token, 0o602, []string{"--agent", d.agentYAML}, []string{"agent", "--config", d.agentYAML}, 1,
			[]string{d.agentYAML + ": relay.token_file: secret file " + token + " is writable by others (mode 0602)", "fix with: chmod 600 " + token}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, os.Chmod(tc.file, tc.mode))
			t.Cleanup(func() { _ = os.Chmod(tc.file, 0o600) })
			cmd := exec.Command(mcptunBin, append([]string{"check"}, tc.check...)...)
			var stdout, stderr strings.Builder
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			err := cmd.Run()
			require.Equal(t, tc.wantCode, exitCode(err), "check: %s%s", stdout.String(), stderr.String())
			// check reports on stdout ("ok:", "warning:", "problem:"
			// lines) and ends with its verdict on stderr.
			report := stdout.String() + stderr.String()
			for _, l := range tc.wantLines {
				require.Contains(t, report, l)
			}
			if tc.wantCode == 0 {
				require.Contains(t, stdout.String(), "warning: config ")
				require.Contains(t, stdout.String(), ": ok")
				// At start: logged, and the role runs.
				p := startProc(t, "relay", nil, mcptunBin, tc.start...)
				p.waitLine(t, relayStarted, 20*time.Second)
				require.True(t, p.hasLine(regexp.MustCompile(`level=WARN .*readable by every user.*chmod 600`)), "no warning at start:\n%s", p.out)
				p.stop(t)
				return
			}
			out, err := exec.Command(mcptunBin, tc.start...).CombinedOutput()
			require.Equal(t, 1, exitCode(err), "start: %s", out)
			for _, l := range tc.wantLines {
				require.Contains(t, string(out), l)
			}
		})
	}
}
