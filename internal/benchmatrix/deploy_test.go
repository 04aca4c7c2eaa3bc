package benchmatrix

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/config"
)

// The configs the harness writes load with mcptun's own config loader,
// and the control mode turns on a policy on every server, the audit trail
// and the admin listeners; without it none of them is on.
func TestWorkspaceConfigs(t *testing.T) {
	exe, err := os.Executable()
	require.NoError(t, err)
	for _, control := range []bool{false, true} {
		t.Run(map[bool]string{false: "off", true: "control"}[control], func(t *testing.T) {
			ws, err := newWorkspace(t.TempDir(), exe, exe)
			require.NoError(t, err)
			ws.control = control
			spec := agentSpec{Name: PathQUIC, Transport: "quic", Mux: "native", token: randomToken()}

			relayPath := filepath.Join(ws.dir, "relay.yaml")
			require.NoError(t, os.WriteFile(relayPath, []byte(ws.relayConfig("127.0.0.1:0", []agentSpec{spec})), 0o600))
			rc, err := config.LoadRelay(relayPath)
			require.NoError(t, err)
			tokFile := filepath.Join(ws.dir, "agent.token")
			require.NoError(t, os.WriteFile(tokFile, []byte(spec.token+"\n"), 0o600))
			agentPath := filepath.Join(ws.dir, "agent.yaml")
			require.NoError(t, os.WriteFile(agentPath, []byte(ws.agentConfig(spec, "127.0.0.1:4433", tokFile, "http://127.0.0.1:1/mcp")), 0o600))
			ac, err := config.LoadAgent(agentPath)
			require.NoError(t, err)

			require.Len(t, ac.Servers, 2)
			if !control {
				assert.Empty(t, rc.Admin.Listen)
				assert.Empty(t, ac.Admin.Listen)
				assert.Empty(t, ac.Audit.File)
				for _, s := range ac.Servers {
					assert.Empty(t, s.Tools.Allow, s.Name)
					assert.Empty(t, s.Tools.Deny, s.Name)
				}
				return
			}
			assert.Equal(t, "127.0.0.1:0", rc.Admin.Listen)
			assert.Equal(t, "127.0.0.1:0", ac.Admin.Listen)
			assert.Equal(t, filepath.Join(ws.dir, "audit-quic.log"), ac.Audit.File)
			for _, s := range ac.Servers {
				assert.Equal(t, []string{"*"}, s.Tools.Allow, s.Name)
				assert.Equal(t, []string{"admin_*"}, s.Tools.Deny, s.Name)
			}
		})
	}
}

func TestWithVariants(t *testing.T) {
	paths := []string{PathDirect, PathQUIC, PathStdio, PathPlainQUIC, PathForwarded}
	assert.Equal(t, paths, withVariants(paths))
	assert.Equal(t, []string{PathDirect, PathQUIC, PathQUIC + BaselineSuffix, PathQUIC + ControlSuffix,
		PathStdio, PathStdio + BaselineSuffix, PathStdio + ControlSuffix, PathPlainQUIC, PathForwarded},
		withVariants(paths, BaselineSuffix, ControlSuffix))
}
