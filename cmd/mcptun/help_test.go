package main

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/config"
)

// TestHelpListsKeys: relay --help and agent --help name every key of
// their file and point to the examples.
func TestHelpListsKeys(t *testing.T) {
	for _, tc := range []struct {
		role string
		keys []config.Key
	}{{"relay", config.RelayKeys()}, {"agent", config.AgentKeys()}} {
		var out bytes.Buffer
		root := newRootCmd()
		root.SetOut(&out)
		root.SetArgs([]string{tc.role, "--help"})
		require.NoError(t, root.Execute())
		require.Contains(t, out.String(), "examples/"+tc.role+".yaml")
		for _, k := range tc.keys {
			require.Contains(t, out.String(), "  "+k.Path+" ", tc.role)
		}
	}
}

func TestVersionFlag(t *testing.T) {
	var out bytes.Buffer
	root := newRootCmd()
	root.SetOut(&out)
	root.SetArgs([]string{"--version"})
	require.NoError(t, root.Execute())
	require.Regexp(t, `^mcptun \S+\n$`, out.String())
}
