package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/tunnel"
)

func TestDeriveServerName(t *testing.T) {
	for _, tc := range []struct {
		cmd  []string
		want string
	}{
		{[]string{"npx", "-y", "@modelcontextprotocol/server-memory"}, "memory"},
		{[]string{"npx", "-y", "@modelcontextprotocol/server-filesystem@2025.1.1", "/srv"}, "filesystem"},
		{[]string{"uvx", "mcp-server-git", "--repository", "."}, "git"},
		{[]string{"python3", "-m", "mcp_server_time"}, "mcp_server_time"},
		{[]string{"/usr/bin/node", "/opt/tools/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"}, "everything"},
		{[]string{"./notes-server", "--stdio"}, "notes"},
		{[]string{"/opt/bin/github-mcp-server", "stdio"}, "github"},
		{[]string{"docker", "run", "-i", "--rm", "ghcr.io/github/github-mcp-server"}, "github"},
		{[]string{"npx"}, "npx"},
		{[]string{"@@@"}, "mcp"},
	} {
		require.Equal(t, tc.want, deriveServerName(tc.cmd), "%q", tc.cmd)
	}
}

// TestExposeFlagErrors: a quick expose mistake names the flag, not the
// config key behind it.
func TestExposeFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		f    exposeFlags
		cmd  []string
		want string
	}{
		{exposeFlags{relays: []string{"r:7443"}, name: "dc1", pin: strings.Repeat("a", 64)}, []string{"sh"},
			"config (command line): --token-file: required: the agent's credential"},
		{exposeFlags{name: "dc1"}, []string{"sh"}, "quick expose needs --relay HOST:PORT"},
		{exposeFlags{relays: []string{"r:7443"}, name: "dc1", pin: "abc", tokenFile: "/nonexistent"}, []string{"sh"},
			"--pin: must be the 64 hex characters of the relay certificate's pin"},
		{exposeFlags{relays: []string{"r:7443"}, name: "dc1", urls: []string{"wiki"}}, nil, `--url "wiki": want NAME=URL`},
		{exposeFlags{relays: []string{"r:7443"}, name: "dc1", server: "x"}, nil, "--server names the command given after --"},
	} {
		_, err := tc.f.config(tc.cmd)
		require.ErrorContains(t, err, tc.want)
	}
}

// TestReportProbe: what check --probe says for each outcome of the dial.
func TestReportProbe(t *testing.T) {
	quicErr := fmt.Errorf("tunnel: dial quic r:7443: %w", context.DeadlineExceeded)
	refused := fmt.Errorf("tunnel: dial tcp r:7443: %w", syscall.ECONNREFUSED)
	for _, tc := range []struct {
		name, mode string
		r          tunnel.ProbeResult
		want       string
		problems   int
	}{
		{"both", "auto", tunnel.ProbeResult{}, "would use quic", 0},
		{"udp blocked", "auto", tunnel.ProbeResult{QUIC: quicErr}, "QUIC does not connect, so the agent runs over TLS/TCP", 0},
		{"quic only, udp blocked", "quic", tunnel.ProbeResult{QUIC: quicErr}, "would not connect", 1},
		{"not running", "auto", tunnel.ProbeResult{QUIC: quicErr, TCP: refused}, "nothing listens there", 0},
	} {
		var out bytes.Buffer
		c := &checker{out: &out}
		c.reportProbe("agent.yaml", "r:7443", tc.mode, tc.r)
		require.Contains(t, out.String(), tc.want, tc.name)
		require.Equal(t, tc.problems, c.problems, tc.name)
	}
}
