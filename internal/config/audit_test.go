package config

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestLoadAgentAudit(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		key, msg   string
		size       int64
		files      int
		args       string
	}{
		{"defaults", "audit: {file: audit.log}\n", "", "", 100 << 20, 10, "hash"},
		{"set", "audit: {file: audit.log, arguments: full, max_size: 5MB, max_files: 3}\n", "", "", 5_000_000, 3, "full"},
		{"bytes", "audit: {file: audit.log, max_size: 65536}\n", "", "", 65536, 10, "hash"},
		{"bad size", "audit: {file: audit.log, max_size: lots}\n", "audit.max_size", "not a size", 0, 0, ""},
		{"tiny", "audit: {file: audit.log, max_size: 10B}\n", "audit.max_size", "too small", 0, 0, ""},
		{"bad arguments", "audit: {file: audit.log, arguments: some}\n", "audit.arguments", "hash", 0, 0, ""},
		{"negative files", "audit: {file: audit.log, max_files: -1}\n", "audit.max_files", "negative", 0, 0, ""},
		{"no file", "audit: {arguments: full}\n", "audit.file", "required", 0, 0, ""},
		{"no dir", "audit: {file: nodir/audit.log}\n", "audit.file", "nodir", 0, 0, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			writeFile(t, dir, "agent.token", "s3cret\n")
			p := writeFile(t, dir, "agent.yaml", validAgent+tc.yaml)
			c, err := LoadAgent(p)
			if tc.key != "" {
				var ce *Error
				require.ErrorAs(t, err, &ce)
				require.Equal(t, tc.key, ce.Key)
				require.Equal(t, p, ce.File)
				require.Contains(t, ce.Reason, tc.msg)
				return
			}
			require.NoError(t, err)
			require.Equal(t, filepath.Join(dir, "audit.log"), c.Audit.File)
			require.Equal(t, tc.size, c.Audit.MaxSizeBytes)
			require.Equal(t, tc.files, c.Audit.MaxFiles)
			require.Equal(t, tc.args, c.Audit.Arguments)
		})
	}
}
