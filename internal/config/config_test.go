package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

var hashA = hex.EncodeToString(func() []byte { h := sha256.Sum256([]byte("a")); return h[:] }())

func writeFile(t *testing.T, dir, name, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

const validRelay = `
tunnel: {listen: "127.0.0.1:7443", cert_file: relay.crt, key_file: relay.key}
http: {listen: "127.0.0.1:8080"}
agents: [{name: dc1, token_sha256: "HASH"}]
clients: [{name: ci, token_sha256: "HASH", allow: ["dc1/*", "*/wiki"]}]
`

func TestLoadRelay(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA))
	c, err := LoadRelay(p)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7443", c.Tunnel.Listen)
	require.Equal(t, filepath.Join(dir, "relay.crt"), c.Tunnel.CertFile, "relative paths resolve next to the file")
	require.Equal(t, []string{"dc1/*", "*/wiki"}, c.Clients[0].Allow)
	require.Equal(t, "info", c.Log.Level)
}

// agents[].token_sha256 takes one hash or a list, one per replica, from
// the file or the environment.
func TestLoadRelayReplicaHashes(t *testing.T) {
	hashB := strings.Repeat("b", 64)
	for _, tc := range []struct {
		name, agents string
		env          string
		want         []string
	}{
		{"one", `[{name: dc1, token_sha256: "` + hashA + `"}]`, "", []string{hashA}},
		{"list", `[{name: dc1, token_sha256: ["` + hashA + `", "` + hashB + `"]}]`, "", []string{hashA, hashB}},
		{"block list", "\n  - name: dc1\n    token_sha256:\n      - " + hashA + "\n      - " + hashB, "", []string{hashA, hashB}},
		{"env list", `[{name: dc1, token_sha256: "` + hashA + `"}]`, `[{name: dc1, token_sha256: ["` + hashB + `", "` + hashA + `"]}]`, []string{hashB, hashA}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			body := strings.Replace(validRelay, `agents: [{name: dc1, token_sha256: "HASH"}]`, "agents: "+tc.agents, 1)
			p := writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(body, "HASH", hashA))
			if tc.env != "" {
				t.Setenv("MCPTUN_AGENTS", tc.env)
			}
			c, err := LoadRelay(p)
			require.NoError(t, err)
			require.Len(t, c.Agents, 1)
			require.Equal(t, tc.want, c.Agents[0].TokenSHA256)
		})
	}
}

// A rate limit's burst defaults to its rate, rounded up.
func TestLoadRelayRateLimit(t *testing.T) {
	for _, tc := range []struct {
		limit string
		rps   float64
		burst int
	}{
		{"{requests_per_second: 2.5}", 2.5, 3},
		{"{requests_per_second: 0.2}", 0.2, 1},
		{"{requests_per_second: 100, burst: 400}", 100, 400},
		{"{}", 0, 0},
	} {
		body := strings.Replace(validRelay, `allow: ["dc1/*", "*/wiki"]}`, `allow: ["dc1/*"], rate_limit: `+tc.limit+`}`, 1)
		p := writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(body, "HASH", hashA))
		c, err := LoadRelay(p)
		require.NoError(t, err, tc.limit)
		require.Equal(t, tc.rps, c.Clients[0].RateLimit.RequestsPerSecond, tc.limit)
		require.Equal(t, tc.burst, c.Clients[0].RateLimit.Burst, tc.limit)
	}
}

func TestLoadRelayEnvOverride(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA))
	t.Setenv("MCPTUN_HTTP_LISTEN", "127.0.0.1:9999")
	t.Setenv("MCPTUN_LOG_LEVEL", "debug")
	t.Setenv("MCPTUN_CLIENTS", `[{name: other, token_sha256: "`+hashA+`", allow: ["*/*"]}]`)
	c, err := LoadRelay(p)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:9999", c.HTTP.Listen)
	require.Equal(t, "debug", c.Log.Level)
	require.Len(t, c.Clients, 1)
	require.Equal(t, "other", c.Clients[0].Name)
	require.Equal(t, []string{"*/*"}, c.Clients[0].Allow)
}

func TestLoadRelayErrors(t *testing.T) {
	tests := []struct {
		name, body, key, reason string
	}{
		{"bad hash", strings.Replace(validRelay, "HASH", "abc", 1), "agents[0].token_sha256", "64 hex"},
		{"bad pattern", strings.Replace(validRelay, `"*/wiki"`, `"wiki"`, 1), "clients[0].allow[1]", "agent/server"},
		{"missing listen", strings.Replace(validRelay, `listen: "127.0.0.1:8080"`, `listen: ""`, 1), "http.listen", "required"},
		{"bad port", strings.Replace(validRelay, `127.0.0.1:8080`, `127.0.0.1:99999`, 1), "http.listen", "invalid port"},
		{"unknown key", validRelay + "\nbogus: 1\n", "", "bogus"},
		{"bad yaml", "tunnel: [", "", "invalid YAML"},
		{"bad name", strings.Replace(validRelay, "name: dc1", "name: ../x", 1), "agents[0].name", "invalid name"},
		{"dup client", strings.Replace(validRelay, `clients: [{name: ci, token_sha256: "HASH", allow: ["dc1/*", "*/wiki"]}]`,
			`clients: [{name: ci, token_sha256: "HASH", allow: ["dc1/*"]}, {name: ci, token_sha256: "HASH", allow: ["dc1/*"]}]`, 1), "clients[1].name", "duplicate"},
		{"half https", strings.Replace(validRelay, `http: {listen: "127.0.0.1:8080"}`, `http: {listen: "127.0.0.1:8080", cert_file: x.crt}`, 1), "http.cert_file", "together"},
		{"bad log", validRelay + "\nlog: {level: loud}\n", "log.level", "must be one of"},
		{"negative rate", strings.Replace(validRelay, `allow: ["dc1/*", "*/wiki"]}`, `allow: ["dc1/*"], rate_limit: {requests_per_second: -1}}`, 1),
			"clients[0].rate_limit.requests_per_second", "> 0"},
		{"rate not a number", strings.Replace(validRelay, `allow: ["dc1/*", "*/wiki"]}`, `allow: ["dc1/*"], rate_limit: {requests_per_second: fast}}`, 1),
			"", "requests_per_second"},
		{"negative burst", strings.Replace(validRelay, `allow: ["dc1/*", "*/wiki"]}`, `allow: ["dc1/*"], rate_limit: {requests_per_second: 5, burst: -2}}`, 1),
			"clients[0].rate_limit.burst", "negative"},
		{"burst alone", strings.Replace(validRelay, `allow: ["dc1/*", "*/wiki"]}`, `allow: ["dc1/*"], rate_limit: {burst: 10}}`, 1),
			"clients[0].rate_limit.burst", "without requests_per_second"},
		{"rate typo", strings.Replace(validRelay, `allow: ["dc1/*", "*/wiki"]}`, `allow: ["dc1/*"], rate_limit: {rps: 10}}`, 1),
			"", "rps"},
		{"negative grace", validRelay + "shutdown_grace: -1s\n", "shutdown_grace", "must not be negative"},
		{"no agent hash", strings.Replace(validRelay, `{name: dc1, token_sha256: "HASH"}`, `{name: dc1}`, 1), "agents[0].token_sha256", "required"},
		{"empty hash list", strings.Replace(validRelay, `{name: dc1, token_sha256: "HASH"}`, `{name: dc1, token_sha256: []}`, 1), "agents[0].token_sha256", "required"},
		{"bad replica hash", strings.Replace(validRelay, `token_sha256: "HASH"}]`+"\nclients", `token_sha256: ["HASH", "abc"]}]`+"\nclients", 1),
			"agents[0].token_sha256[1]", "64 hex"},
		{"replicas share a hash", strings.Replace(validRelay, `token_sha256: "HASH"}]`+"\nclients", `token_sha256: ["HASH", "HASH"]}]`+"\nclients", 1),
			"agents[0].token_sha256[1]", "same hash as agents[0].token_sha256[0]"},
		{"hash not a string", strings.Replace(validRelay, `{name: dc1, token_sha256: "HASH"}`, `{name: dc1, token_sha256: {a: b}}`, 1), "", "token_sha256"},
		{"grace not a duration", validRelay + "shutdown_grace: soon\n", "", "shutdown_grace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			body := strings.ReplaceAll(tt.body, "HASH", hashA)
			p := writeFile(t, dir, "relay.yaml", body)
			_, err := LoadRelay(p)
			require.Error(t, err)
			var ce *Error
			require.True(t, errors.As(err, &ce), "error %v is not a *config.Error", err)
			require.Contains(t, err.Error(), p, "error names the file")
			if tt.key != "" {
				require.Contains(t, err.Error(), tt.key+":", "error names the key")
			}
			require.Contains(t, err.Error(), tt.reason)
		})
	}
}

func TestLoadRelayMissingFile(t *testing.T) {
	_, err := LoadRelay(filepath.Join(t.TempDir(), "nope.yaml"))
	require.ErrorContains(t, err, "nope.yaml")
}

const validAgent = `
name: dc1
relay: {address: "127.0.0.1:7443", token_file: agent.token, transport: auto}
servers:
  - {name: notes, command: ["./notes-server", "--stdio"], env: {NOTES_DIR: /srv/notes}}
  - {name: wiki, url: "http://127.0.0.1:9000/mcp", headers: {Authorization: "Bearer internal"}}
`

func TestLoadAgent(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "agent.token", "s3cret\n")
	p := writeFile(t, dir, "agent.yaml", validAgent)
	c, err := LoadAgent(p)
	require.NoError(t, err)
	require.Equal(t, "s3cret", c.Relay.Token)
	require.Equal(t, filepath.Join(dir, "notes-server"), c.Servers[0].Command[0])
	require.Equal(t, map[string]string{"NOTES_DIR": "/srv/notes"}, c.Servers[0].Env, "env names keep their case")
	require.Equal(t, "Bearer internal", c.Servers[1].Headers["authorization"])
	require.Equal(t, 2*time.Minute, c.IdleTimeout, "the documented default")
	require.Equal(t, "native", c.Relay.Mux)
}

func TestLoadAgentRateLimit(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "agent.token", "s3cret\n")
	p := writeFile(t, dir, "agent.yaml", strings.Replace(validAgent, `headers: {Authorization: "Bearer internal"}}`,
		`rate_limit: {requests_per_second: 7.5}}`, 1))
	c, err := LoadAgent(p)
	require.NoError(t, err)
	require.Equal(t, RateLimit{RequestsPerSecond: 7.5, Burst: 8}, c.Servers[1].RateLimit, "burst defaults to the rate, rounded up")
	require.Zero(t, c.Servers[0].RateLimit, "no limit unless set")
}

func TestLoadAgentLimits(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "agent.token", "s3cret\n")
	p := writeFile(t, dir, "agent.yaml", strings.Replace(validAgent, `env: {NOTES_DIR: /srv/notes}}`,
		`limits: {sessions: 64, sessions_per_client: 4, concurrent_requests: 100, concurrent_requests_per_client: 10}}`, 1))
	c, err := LoadAgent(p)
	require.NoError(t, err)
	require.Equal(t, ServerLimits{Sessions: 64, SessionsPerClient: 4, ConcurrentRequests: 100, ConcurrentRequestsPerClient: 10}, c.Servers[0].Limits)
	require.Zero(t, c.Servers[1].Limits, "zero: mcpproxy's defaults")
}

func TestLoadAgentUpstreamNetworks(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "agent.token", "s3cret\n")
	p := writeFile(t, dir, "agent.yaml", validAgent+"upstream_networks: [127.0.0.0/8, 10.1.2.3, \"fd00::/8\", 192.168.1.7/16]\n")
	c, err := LoadAgent(p)
	require.NoError(t, err)
	var got []string
	for _, pf := range c.UpstreamPrefixes {
		got = append(got, pf.String())
	}
	require.Equal(t, []string{"127.0.0.0/8", "10.1.2.3/32", "fd00::/8", "192.168.0.0/16"}, got, "an address is a network of one; host bits are dropped")
}

func TestLoadAgentTokenFromEnv(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "agent.yaml", strings.Replace(validAgent, "token_file: agent.token, ", "", 1))
	t.Setenv("MCPTUN_RELAY_TOKEN", "fromenv")
	t.Setenv("MCPTUN_RELAY_TRANSPORT", "tcp")
	c, err := LoadAgent(p)
	require.NoError(t, err)
	require.Equal(t, "fromenv", c.Relay.Token)
	require.Equal(t, "tcp", c.Relay.Transport)
}

// relay.address takes one host:port or a list, from the file or the
// environment (a YAML or JSON list, or words).
func TestLoadAgentRelayAddresses(t *testing.T) {
	for _, tc := range []struct {
		name, address, env string
		want               []string
	}{
		{"one", `"relay.example.com:7443"`, "", []string{"relay.example.com:7443"}},
		{"list", `["r1.example.com:7443", "10.0.0.2:7443", "[fd00::1]:7443"]`, "", []string{"r1.example.com:7443", "10.0.0.2:7443", "[fd00::1]:7443"}},
		{"block list", "\n    - r1:7443\n    - r2:7443\n", "", []string{"r1:7443", "r2:7443"}},
		{"env one", `"file:1"`, "r9:7443", []string{"r9:7443"}},
		{"env yaml list", `"file:1"`, "[r1:7443, r2:7443]", []string{"r1:7443", "r2:7443"}},
		{"env json list", `"file:1"`, `["r1:7443","r2:7443"]`, []string{"r1:7443", "r2:7443"}},
		{"env words", `"file:1"`, "r1:7443 r2:7443", []string{"r1:7443", "r2:7443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "agent.token", "s3cret\n")
			body := strings.Replace(validAgent, `relay: {address: "127.0.0.1:7443", token_file: agent.token, transport: auto}`,
				"relay:\n  token_file: agent.token\n  address: "+tc.address, 1)
			if tc.env != "" {
				t.Setenv("MCPTUN_RELAY_ADDRESS", tc.env)
			}
			c, err := LoadAgent(writeFile(t, dir, "agent.yaml", body))
			require.NoError(t, err)
			require.Equal(t, tc.want, c.Relay.Address)
			require.Equal(t, 30*time.Second, c.Relay.ResolveInterval, "the documented default")
		})
	}
}

func TestLoadAgentErrors(t *testing.T) {
	tests := []struct {
		name, body, key, reason string
	}{
		{"inline token", strings.Replace(validAgent, "token_file: agent.token", "token: abc", 1), "relay.token", "inline"},
		{"no token", strings.Replace(validAgent, "token_file: agent.token, ", "", 1), "relay.token_file", "required"},
		{"missing token file", strings.Replace(validAgent, "agent.token", "missing.token", 1), "relay.token_file", "cannot read"},
		{"bad transport", strings.Replace(validAgent, "transport: auto", "transport: udp", 1), "relay.transport", "must be one of"},
		{"both kinds", strings.Replace(validAgent, `url: "http://127.0.0.1:9000/mcp"`, `url: "http://x/mcp", command: [x]`, 1), "servers[1]", "not both"},
		{"neither kind", strings.Replace(validAgent, `url: "http://127.0.0.1:9000/mcp", headers: {Authorization: "Bearer internal"}`, `dir: /tmp`, 1), "servers[1]", "set command"},
		{"bad url", strings.Replace(validAgent, `http://127.0.0.1:9000/mcp`, `ftp://x/mcp`, 1), "servers[1].url", "scheme"},
		{"dup server", strings.Replace(validAgent, "name: wiki", "name: notes", 1), "servers[1].name", "duplicate"},
		{"bad pin", strings.Replace(validAgent, "transport: auto", "pin_sha256: zz", 1), "relay.pin_sha256", "64 hex"},
		{"no servers", "name: dc1\nrelay: {address: \"127.0.0.1:1\", token_file: agent.token}\n", "servers", "at least one"},
		{"wrong type", strings.Replace(validAgent, `command: ["./notes-server", "--stdio"]`, `command: {a: b}`, 1), "", "command"},
		{"bad idle", validAgent + "idle_timeout: 1ms\n", "idle_timeout", "at least 1s"},
		{"bad origin", validAgent + "allowed_origins: [example.com]\n", "allowed_origins[0]", "must look like"},
		{"negative server rate", strings.Replace(validAgent, `headers: {Authorization: "Bearer internal"}}`, `rate_limit: {requests_per_second: -5}}`, 1),
			"servers[1].rate_limit.requests_per_second", "> 0"},
		{"bad upstream network", validAgent + "upstream_networks: [10.0.0.0/8, intranet]\n", "upstream_networks[1]", "is not a network"},
		{"literal url outside", validAgent + "upstream_networks: [10.0.0.0/8]\n", "servers[1].url", "127.0.0.1 is outside upstream_networks"},
		{"negative sessions", strings.Replace(validAgent, `env: {NOTES_DIR: /srv/notes}}`, `limits: {sessions: -1}}`, 1),
			"servers[0].limits.sessions", "negative"},
		{"per client above server", strings.Replace(validAgent, `env: {NOTES_DIR: /srv/notes}}`, `limits: {sessions: 8, sessions_per_client: 9}}`, 1),
			"servers[0].limits.sessions_per_client", "more than the server's sessions (8)"},
		{"requests per client above server", strings.Replace(validAgent, `env: {NOTES_DIR: /srv/notes}}`, `limits: {concurrent_requests: 8, concurrent_requests_per_client: 9}}`, 1),
			"servers[0].limits.concurrent_requests_per_client", "more than"},
		{"limits on a url server", strings.Replace(validAgent, `headers: {Authorization: "Bearer internal"}}`, `limits: {sessions: 3}}`, 1),
			"servers[1].limits", "command servers only"},
		{"limits typo", strings.Replace(validAgent, `env: {NOTES_DIR: /srv/notes}}`, `limits: {session: 3}}`, 1),
			"", "session"},
		{"server burst alone", strings.Replace(validAgent, `headers: {Authorization: "Bearer internal"}}`, `rate_limit: {burst: 5}}`, 1),
			"servers[1].rate_limit.burst", "without requests_per_second"},
		{"negative grace", validAgent + "shutdown_grace: -5s\n", "shutdown_grace", "must not be negative"},
		{"grace without unit", validAgent + "shutdown_grace: 30\n", "shutdown_grace", "give a unit"},
		{"no relay address", strings.Replace(validAgent, `address: "127.0.0.1:7443", `, "", 1), "relay.address", "required (host:port, or a list of them)"},
		{"empty relay list", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: []`, 1), "relay.address", "required"},
		{"relay without port", strings.Replace(validAgent, `"127.0.0.1:7443"`, `"relay.example.com"`, 1), "relay.address", "want host:port"},
		{"relay list entry without port", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: ["r1:7443", "r2"]`, 1), "relay.address[1]", `invalid address "r2"`},
		{"relay list entry without host", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: ["r1:7443", "r2:7443", ":7443"]`, 1), "relay.address[2]", `":7443" has no host`},
		{"relay port zero", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: ["r1:7443", "r2:0"]`, 1), "relay.address[1]", `invalid port "0"`},
		{"relay port name", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: ["r1:https"]`, 1), "relay.address", `invalid port "https"`},
		{"relay empty entry", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: ["r1:7443", ""]`, 1), "relay.address[1]", "empty"},
		{"relay listed twice", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: ["R1.example.com:7443", "r2:7443", "r1.example.com:7443"]`, 1),
			"relay.address[2]", "listed twice (also relay.address[0])"},
		{"relay address a map", strings.Replace(validAgent, `address: "127.0.0.1:7443"`, `address: {a: b}`, 1), "", "address"},
		{"resolve interval too short", strings.Replace(validAgent, "transport: auto", "resolve_interval: 10ms", 1), "relay.resolve_interval", "at least 1s"},
		{"connections negative", strings.Replace(validAgent, "transport: auto", "connections: -1", 1), "relay.connections", "between 1 and 16, not -1"},
		{"connections too many", strings.Replace(validAgent, "transport: auto", "connections: 100", 1), "relay.connections", "between 1 and 16, not 100"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "agent.token", "s3cret")
			p := writeFile(t, dir, "agent.yaml", tt.body)
			_, err := LoadAgent(p)
			require.Error(t, err)
			var ce *Error
			require.True(t, errors.As(err, &ce), "error %v is not a *config.Error", err)
			require.Contains(t, err.Error(), p)
			if tt.key != "" {
				require.Contains(t, err.Error(), tt.key+":")
			}
			require.Contains(t, err.Error(), tt.reason)
			require.NotContains(t, err.Error(), "s3cret", "secrets never appear in errors")
		})
	}
}

// FuzzLoad feeds arbitrary bytes as a config file: loading must return a
// config or an error, never panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(strings.ReplaceAll(validRelay, "HASH", hashA)))
	f.Add([]byte(validAgent))
	f.Add([]byte("servers: [{name: a, command: 5}]"))
	f.Add([]byte("agents: {x: 1}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := LoadRelay(p); err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("relay: untyped error %v", err)
			}
		}
		if _, err := LoadAgent(p); err != nil {
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("agent: untyped error %v", err)
			}
		}
	})
}

// shutdown_grace defaults to 30 s in both files and takes a duration.
func TestShutdownGrace(t *testing.T) {
	for _, tc := range []struct {
		extra string
		want  time.Duration
	}{
		{"", 30 * time.Second},
		{"shutdown_grace: 1s\n", time.Second},
		{"shutdown_grace: 2m\n", 2 * time.Minute},
	} {
		dir := t.TempDir()
		writeFile(t, dir, "agent.token", "s3cret")
		r, err := LoadRelay(writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+tc.extra))
		require.NoError(t, err, tc.extra)
		require.Equal(t, tc.want, r.ShutdownGrace, "relay %q", tc.extra)
		a, err := LoadAgent(writeFile(t, dir, "agent.yaml", validAgent+tc.extra))
		require.NoError(t, err, tc.extra)
		require.Equal(t, tc.want, a.ShutdownGrace, "agent %q", tc.extra)
	}
}

// The client connection limits: documented defaults, values taken, and
// bad values named by key.
func TestLoadRelayHTTPLimits(t *testing.T) {
	load := func(http string) (*Relay, error) {
		body := strings.Replace(validRelay, `http: {listen: "127.0.0.1:8080"}`, `http: {listen: "127.0.0.1:8080"`+http+`}`, 1)
		return LoadRelay(writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(body, "HASH", hashA)))
	}
	c, err := load("")
	require.NoError(t, err)
	require.Equal(t, 10000, c.HTTP.MaxConnections)
	require.Equal(t, 10*time.Second, c.HTTP.HeaderTimeout)
	require.Equal(t, 120*time.Second, c.HTTP.IdleTimeout)
	require.Equal(t, 30*time.Second, c.HTTP.BodyTimeout)
	require.Equal(t, 30*time.Second, c.HTTP.WriteTimeout)

	c, err = load(", max_connections: 50, header_timeout: 2s, idle_timeout: 1m, body_timeout: 5s, write_timeout: 7s")
	require.NoError(t, err)
	require.Equal(t, 50, c.HTTP.MaxConnections)
	require.Equal(t, 2*time.Second, c.HTTP.HeaderTimeout)
	require.Equal(t, time.Minute, c.HTTP.IdleTimeout)
	require.Equal(t, 5*time.Second, c.HTTP.BodyTimeout)
	require.Equal(t, 7*time.Second, c.HTTP.WriteTimeout)

	for _, tc := range []struct{ http, want string }{
		{", max_connections: -1", "http.max_connections: must be a number of connections"},
		{", header_timeout: 10ms", "http.header_timeout: must be at least 1s"},
		{", idle_timeout: -5s", "http.idle_timeout: must be at least 1s"},
		{", body_timeout: 500ms", "http.body_timeout: must be at least 1s"},
		{", write_timeout: 1ns", "http.write_timeout: must be at least 1s"},
		{", write_timeout: soon", "write_timeout"},
	} {
		_, err := load(tc.http)
		require.ErrorContains(t, err, tc.want, tc.http)
		require.ErrorContains(t, err, "relay.yaml", tc.http)
	}
}

func TestLoadAgentPolicy(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "agent.token", "s3cret\n")
	p := writeFile(t, dir, "agent.yaml", strings.Replace(validAgent, `headers: {Authorization: "Bearer internal"}}`,
		`tools: {allow: ["Search_*"], deny: ["Search_Admin"]}, prompts: {deny: ["*"]}, resources: {allow: ["file:///docs/*"]},
    tool_rate_limits: [{tool: "Search_*", requests_per_second: 2.5}], pin: true}`, 1))
	c, err := LoadAgent(p)
	require.NoError(t, err)
	s := c.Servers[1]
	require.Equal(t, PolicyRules{Allow: []string{"Search_*"}, Deny: []string{"Search_Admin"}}, s.Tools, "tool globs keep their case")
	require.Equal(t, []string{"*"}, s.Prompts.Deny)
	require.Equal(t, []string{"file:///docs/*"}, s.Resources.Allow)
	require.Equal(t, []ToolRateLimit{{Tool: "Search_*", RequestsPerSecond: 2.5, Burst: 3}}, s.ToolRateLimits)
	require.True(t, s.Pin)
	require.Equal(t, filepath.Join(dir, "agent.pins.json"), c.PinFile, "next to agent.yaml by default")
}

func TestLoadAgentPolicyErrors(t *testing.T) {
	for _, tc := range []struct{ name, server, key, reason string }{
		{"empty glob", `tools: {deny: [""]}}`, "servers[1].tools.deny[0]", "empty pattern"},
		{"lone backslash", `prompts: {allow: ["a\\"]}}`, "servers[1].prompts.allow[0]", "lone backslash"},
		{"rate without rate", `tool_rate_limits: [{tool: "x"}]}`, "servers[1].tool_rate_limits[0].requests_per_second", "required"},
		{"rate without tool", `tool_rate_limits: [{requests_per_second: 1}]}`, "servers[1].tool_rate_limits[0].tool", "empty pattern"},
		{"negative burst", `tool_rate_limits: [{tool: x, requests_per_second: 1, burst: -1}]}`, "servers[1].tool_rate_limits[0].burst", "negative"},
		{"map not list", `tool_rate_limits: {x: {requests_per_second: 1}}}`, "", "tool_rate_limits"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "agent.token", "s3cret\n")
			p := writeFile(t, dir, "agent.yaml", strings.Replace(validAgent, `headers: {Authorization: "Bearer internal"}}`, tc.server, 1))
			_, err := LoadAgent(p)
			require.Error(t, err)
			require.Contains(t, err.Error(), p)
			require.Contains(t, err.Error(), tc.key)
			require.Contains(t, err.Error(), tc.reason)
		})
	}
}

func TestCheckPatternTools(t *testing.T) {
	require.NoError(t, CheckPattern("dc1/wiki/search_*"))
	require.NoError(t, CheckPattern("*/*/a/b*"))
	require.ErrorContains(t, CheckPattern("dc1/wiki/"), "empty pattern")
	require.ErrorContains(t, CheckPattern("dc1/wi ki/x"), "segment")
}
