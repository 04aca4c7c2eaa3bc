package benchmatrix

import (
	"bytes"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestRunRoleArguments(t *testing.T) {
	for _, tc := range []struct {
		name     string
		args     []string
		handled  bool
		wantCode int
		wantErr  string
	}{
		{"no role", nil, false, 0, ""},
		{"benchmark flags", []string{"--quick"}, false, 0, ""},
		{"relay without certificate", []string{RolePlainRelay, "--agent", "a"}, true, 1, "certificate"},
		{"relay with unknown flag", []string{RolePlainRelay, "--bogus"}, true, 1, "bogus"},
		{"agent without token file", []string{RolePlainAgent, "--token-file", "/nonexistent"}, true, 1, "token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			handled, code := RunRole(tc.args, &stderr)
			assert.Equal(t, tc.handled, handled)
			assert.Equal(t, tc.wantCode, code)
			if tc.wantErr == "" {
				// Not a role of ours: left to the caller, silently.
				assert.Empty(t, stderr.String())
			} else {
				assert.Contains(t, stderr.String(), tc.wantErr)
			}
		})
	}
}
