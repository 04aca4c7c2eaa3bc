package main

import (
	"testing"

	"github.com/stretchr/testify/require"
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
