package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestCLIExitCodes: every subcommand of the built binary exits 0 when it
// did its job and 1 with one line naming the problem when it did not;
// usage mistakes do not start anything.
func TestCLIExitCodes(t *testing.T) {
	dir := t.TempDir()
	badYAML := filepath.Join(dir, "bad.yaml")
	require.NoError(t, os.WriteFile(badYAML, []byte("tunnel: [unclosed\n"), 0o600))
	relayYAML := writeRelayConfig(t, dir, relayOpts{})
	missing := filepath.Join(dir, "missing.yaml")
	for _, tc := range []struct {
		args  []string
		stdin string
		code  int
		out   string // in the combined output
	}{
		{nil, "", 0, "Available Commands:"},
		{[]string{"--help"}, "", 0, "Available Commands:"},
		{[]string{"version"}, "", 0, "mcptun "},
		{[]string{"version", "extra"}, "", 1, `mcptun: unknown command "extra" for "mcptun version"`},
		{[]string{"nosuch"}, "", 1, `mcptun: unknown command "nosuch" for "mcptun"`},
		{[]string{"relay", "--bogus"}, "", 1, "mcptun: unknown flag: --bogus"},
		{[]string{"agent", "--bogus"}, "", 1, "mcptun: unknown flag: --bogus"},
		{[]string{"relay", "--config", missing}, "", 1, "mcptun: config " + missing + ": open " + missing + ": no such file or directory"},
		{[]string{"agent", "--config", missing}, "", 1, "mcptun: config " + missing + ": open " + missing + ": no such file or directory"},
		{[]string{"check"}, "", 1, "mcptun: check: give --relay FILE and/or --agent FILE"},
		{[]string{"check", "--relay", missing}, "", 1, "problem: config " + missing + ": open"},
		{[]string{"check", "--relay", badYAML}, "", 1, "problem: config " + badYAML + ": invalid YAML"},
		{[]string{"check", "--agent", badYAML}, "", 1, "problem: config " + badYAML + ": invalid YAML"},
		{[]string{"check", "--relay", relayYAML}, "", 0, relayYAML + ": ok"},
		// Both files: the bad one fails the command, naming itself.
		{[]string{"check", "--relay", relayYAML, "--agent", badYAML}, "", 1, badYAML + ": invalid YAML"},
		{[]string{"token", "new", "extra"}, "", 1, `unknown command "extra"`},
		{[]string{"token", "hash"}, "", 1, "mcptun: token hash: no token on stdin"},
		{[]string{"token", "hash"}, "tok\n", 0, sha256Hex("tok")},
		{[]string{"bench"}, "", 1, "mcptun: bench: --url is required"},
		{[]string{"bench", "--url", "http://127.0.0.1:1/mcp", "--sessions", "-1"}, "", 1, "mcptun: bench: --sessions"},
		{[]string{"bench", "--url", "http://127.0.0.1:1/mcp", "--duration", "1s"}, "", 1, "mcptun: bench: initialize"},
		{[]string{"demo", "--bogus"}, "", 1, "mcptun: unknown flag: --bogus"},
		{[]string{"audit", "verify"}, "", 1, "mcptun: requires at least 1 arg(s)"},
		{[]string{"audit", "verify", missing}, "", 1, "mcptun: audit verify: audit: open " + missing + ": no such file or directory"},
		{[]string{"audit", "verify", badYAML}, "", 1, "mcptun: audit verify: NOT INTACT: " + badYAML + ":1: no \"hash\" at its end"},
		{[]string{"--log-level", "chatty", "relay", "--config", relayYAML}, "", 1, "chatty"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := exec.Command(mcptunBin, tc.args...)
			cmd.Stdin = strings.NewReader(tc.stdin)
			cmd.Env = append(os.Environ(), "MCPTUN_BENCH_TOKEN=x")
			done := make(chan struct{})
			timer := time.AfterFunc(30*time.Second, func() {
				select {
				case <-done:
				default:
					_ = cmd.Process.Kill()
				}
			})
			out, err := cmd.CombinedOutput()
			close(done)
			timer.Stop()
			code := 0
			if err != nil {
				var ee *exec.ExitError
				require.ErrorAs(t, err, &ee)
				code = ee.ExitCode()
			}
			require.Equal(t, tc.code, code, "exit code; output:\n%s", out)
			require.Contains(t, string(out), tc.out)
			if tc.code != 0 {
				require.Equal(t, 1, strings.Count(string(out), "mcptun: "), "one error line:\n%s", out)
			}
		})
	}
}

// The roles exit 0 when told to stop, after draining: the agent on
// SIGINT, the relay on SIGTERM (one deployment; both roles share main's
// signal handling, so each signal is covered).
func TestRolesExitCleanlyOnSignal(t *testing.T) {
	d := deploy(t, relayOpts{}, agentOpts{transport: "tcp"})
	d.waitOnline(t, "notes")
	for _, step := range []struct {
		p   *proc
		sig syscall.Signal
	}{{d.agent, syscall.SIGINT}, {d.relay, syscall.SIGTERM}} {
		p := step.p
		require.NoError(t, p.cmd.Process.Signal(step.sig))
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not exit within 30 s of %v", p.name, step.sig)
		}
		require.NoError(t, p.err, "%s exits 0 on %v", p.name, step.sig)
		require.True(t, p.hasLine(regexpMust(p.name+" drained")), "%s says it drained", p.name)
	}
}

func regexpMust(s string) *regexp.Regexp { return regexp.MustCompile(regexp.QuoteMeta(s)) }

// The README's quick start names CI's command, and .ci/run runs exactly
// that command, which the Makefile defines.
func TestCICommandMatchesREADME(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	require.NoError(t, err)
	m := regexp.MustCompile("(?m)^(make [a-z-]+) +# what CI runs").FindSubmatch(readme)
	require.NotNil(t, m, "the README's quick start names CI's command")
	command := string(m[1])
	run, err := os.ReadFile(filepath.Join("..", "..", ".ci", "run"))
	require.NoError(t, err)
	var last string
	for _, line := range strings.Split(string(run), "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			last = l
		}
	}
	require.Equal(t, command, last, ".ci/run ends by running the README's command")
	mk, err := os.ReadFile(filepath.Join("..", "..", "Makefile"))
	require.NoError(t, err)
	require.Regexp(t, "(?m)^"+regexp.QuoteMeta(strings.TrimPrefix(command, "make "))+":", string(mk))
}
