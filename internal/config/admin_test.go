package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestAdminSection: admin is off unless listen is set; a listener beyond
// loopback needs a token file; the token file is read and its mode
// checked like every other secret; every error names file, key and reason.
func TestAdminSection(t *testing.T) {
	cases := []struct {
		name  string
		admin string // the admin: line
		mode  os.FileMode
		// wantErr is "" or the key and a fragment of the reason.
		wantErr, wantKey string
		wantToken        string
	}{
		{name: "off", admin: ""},
		{name: "loopback without token", admin: `admin: {listen: "127.0.0.1:9090"}`},
		{name: "localhost without token", admin: `admin: {listen: "localhost:9090"}`},
		{name: "ipv6 loopback without token", admin: `admin: {listen: "[::1]:9090"}`},
		{name: "all interfaces without token", admin: `admin: {listen: "0.0.0.0:9090"}`,
			wantKey: "admin.token_file", wantErr: "is not a loopback address"},
		{name: "empty host without token", admin: `admin: {listen: ":9090"}`,
			wantKey: "admin.token_file", wantErr: "is not a loopback address"},
		{name: "all interfaces with token", admin: `admin: {listen: "0.0.0.0:9090", token_file: admin.token}`, mode: 0o600, wantToken: "t0ken"},
		{name: "token file writable by others", admin: `admin: {listen: "0.0.0.0:9090", token_file: admin.token}`, mode: 0o666,
			wantKey: "admin.token_file", wantErr: "writable by group and others"},
		{name: "token file missing", admin: `admin: {listen: "0.0.0.0:9090", token_file: nope.token}`,
			wantKey: "admin.token_file", wantErr: "cannot read secret file"},
		{name: "bad listen", admin: `admin: {listen: "9090"}`, wantKey: "admin.listen", wantErr: "invalid address"},
		{name: "token without listen", admin: `admin: {token_file: admin.token}`, mode: 0o600,
			wantKey: "admin.token_file", wantErr: "without admin.listen"},
	}
	for _, role := range []string{"relay", "agent"} {
		for _, tc := range cases {
			t.Run(role+"/"+tc.name, func(t *testing.T) {
				dir := t.TempDir()
				writeFile(t, dir, "agent.token", "s3cret\n")
				if tc.mode != 0 {
					tok := writeFile(t, dir, "admin.token", "t0ken\n")
					require.NoError(t, os.Chmod(tok, tc.mode))
				}
				var (
					adm Admin
					err error
				)
				if role == "relay" {
					p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+tc.admin+"\n")
					var c *Relay
					if c, err = LoadRelay(p); err == nil {
						adm = c.Admin
					}
				} else {
					p := writeFile(t, dir, "agent.yaml", validAgent+tc.admin+"\n")
					var c *Agent
					if c, err = LoadAgent(p); err == nil {
						adm = c.Admin
					}
				}
				if tc.wantErr == "" {
					require.NoError(t, err)
					require.Equal(t, tc.wantToken, adm.Token)
					if tc.wantToken != "" {
						require.Equal(t, filepath.Join(dir, "admin.token"), adm.TokenFile)
					}
					return
				}
				require.Error(t, err)
				require.Contains(t, err.Error(), "config "+dir)
				require.Contains(t, err.Error(), ": "+tc.wantKey+": ")
				require.Contains(t, err.Error(), tc.wantErr)
			})
		}
	}
}

// TestAdminTokenNotInline: the admin token, a secret, is refused inline.
func TestAdminTokenNotInline(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+`admin: {listen: "127.0.0.1:9090", token: x}`+"\n")
	_, err := LoadRelay(p)
	require.ErrorContains(t, err, "admin.token: secrets must not be written inline")
}
