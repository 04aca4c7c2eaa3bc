package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestExamples loads every config in examples/ so they never drift from
// what the code accepts. Files they refer to (tokens, certificates) are
// created beside a copy.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			body, err := os.ReadFile(f)
			require.NoError(t, err)
			dir := t.TempDir()
			for _, aux := range []string{"agent.token", "relay.crt", "relay.key"} {
				require.NoError(t, os.WriteFile(filepath.Join(dir, aux), []byte("x\n"), 0o600))
			}
			p := filepath.Join(dir, filepath.Base(f))
			require.NoError(t, os.WriteFile(p, body, 0o600))
			switch {
			case strings.Contains(filepath.Base(f), "relay"):
				_, err = LoadRelay(p)
			case strings.Contains(filepath.Base(f), "agent"):
				_, err = LoadAgent(p)
			default:
				t.Fatalf("example %s: name it *relay*.yaml or *agent*.yaml so the test knows its role", f)
			}
			require.NoError(t, err)
		})
	}
}
