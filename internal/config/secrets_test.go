package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSecretFileModes: a token or key file others can write is refused, one
// every user can read loads with a warning, as ssh treats its keys; both
// name the key, the file and the chmod that fixes it.
func TestSecretFileModes(t *testing.T) {
	// Each secret key: the config that names it (as "secret") and how to
	// load it.
	kinds := []struct {
		key  string
		body string
		load func(path string) ([]*Error, error)
	}{
		{"tunnel.key_file", strings.Replace(validRelay, "key_file: relay.key", "key_file: secret", 1), loadRelayWarnings},
		{"http.key_file", strings.Replace(validRelay, `http: {listen: "127.0.0.1:8080"}`,
			`http: {listen: "127.0.0.1:8080", cert_file: relay.crt, key_file: secret}`, 1), loadRelayWarnings},
		{"relay.token_file", strings.Replace(validAgent, "token_file: agent.token", "token_file: secret", 1), loadAgentWarnings},
	}
	modes := []struct {
		mode os.FileMode
		// want is "" (silent), "warn" or "error"; reason is in the message.
		want, reason string
	}{
		{0o600, "", ""},
		{0o400, "", ""},
		{0o640, "", ""}, // a service group may read it
		{0o644, "warn", "readable by every user (mode 0644)"},
		{0o604, "warn", "readable by every user (mode 0604)"},
		{0o620, "error", "writable by group (mode 0620)"},
		{0o660, "error", "writable by group (mode 0660)"},
		{0o602, "error", "writable by others (mode 0602)"},
		{0o666, "error", "writable by group and others (mode 0666)"},
		{0o777, "error", "writable by group and others (mode 0777)"},
	}
	for _, k := range kinds {
		for _, m := range modes {
			t.Run(k.key+"/"+m.mode.String(), func(t *testing.T) {
				dir := t.TempDir()
				cfg := writeFile(t, dir, "config.yaml", strings.ReplaceAll(k.body, "HASH", hashA))
				secret := writeFile(t, dir, "secret", "s3cret\n")
				require.NoError(t, os.Chmod(secret, m.mode))
				warnings, err := k.load(cfg)
				fix := "fix with: chmod 600 " + filepath.Join(dir, "secret")
				switch m.want {
				case "":
					require.NoError(t, err)
					require.Empty(t, warnings)
				case "warn":
					require.NoError(t, err)
					require.Len(t, warnings, 1)
					w := warnings[0]
					require.Equal(t, cfg, w.File)
					require.Equal(t, k.key, w.Key)
					require.Contains(t, w.Reason, m.reason)
					require.Contains(t, w.Reason, fix)
				case "error":
					require.Error(t, err)
					require.Empty(t, warnings)
					msg := err.Error()
					require.Contains(t, msg, "config "+cfg+": "+k.key+": secret file "+secret)
					require.Contains(t, msg, m.reason)
					require.Contains(t, msg, fix)
				}
			})
		}
	}
}

// One key file for both ports is reported once, under the tunnel's key.
func TestSecretFileSharedKeyReportedOnce(t *testing.T) {
	dir := t.TempDir()
	body := strings.Replace(validRelay, `http: {listen: "127.0.0.1:8080"}`,
		`http: {listen: "127.0.0.1:8080", cert_file: relay.crt, key_file: relay.key}`, 1)
	cfg := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(body, "HASH", hashA))
	key := writeFile(t, dir, "relay.key", "k")
	require.NoError(t, os.Chmod(key, 0o644))
	warnings, err := loadRelayWarnings(cfg)
	require.NoError(t, err)
	require.Len(t, warnings, 1)
	require.Equal(t, "tunnel.key_file", warnings[0].Key)
}

func loadRelayWarnings(path string) ([]*Error, error) {
	c, err := LoadRelay(path)
	if err != nil {
		return nil, err
	}
	return c.Warnings, nil
}

func loadAgentWarnings(path string) ([]*Error, error) {
	c, err := LoadAgent(path)
	if err != nil {
		return nil, err
	}
	return c.Warnings, nil
}

// A configuration file group or others may write is refused (it names the
// programs the agent runs and whom the relay trusts); reading is fine.
func TestConfigFileMode(t *testing.T) {
	for _, tc := range []struct {
		mode   os.FileMode
		reason string // "" means it loads
	}{
		{0o600, ""},
		{0o644, ""},
		{0o640, ""},
		{0o664, "is writable by group (mode 0664)"},
		{0o646, "is writable by others (mode 0646)"},
		{0o666, "is writable by group and others (mode 0666)"},
	} {
		for _, kind := range []struct {
			name string
			body string
			load func(string) ([]*Error, error)
		}{
			{"relay", validRelay, loadRelayWarnings},
			{"agent", validAgent, loadAgentWarnings},
		} {
			t.Run(kind.name+"/"+tc.mode.String(), func(t *testing.T) {
				dir := t.TempDir()
				writeFile(t, dir, "agent.token", "s3cret\n")
				cfg := writeFile(t, dir, kind.name+".yaml", strings.ReplaceAll(kind.body, "HASH", hashA))
				require.NoError(t, os.Chmod(cfg, tc.mode))
				_, err := kind.load(cfg)
				if tc.reason == "" {
					require.NoError(t, err)
					return
				}
				require.Error(t, err)
				require.Contains(t, err.Error(), "config "+cfg+": configuration file "+cfg+" "+tc.reason)
				require.Contains(t, err.Error(), "fix with: chmod go-w "+cfg)
			})
		}
	}
}
