// Package e2e runs mcptun as it is deployed: the built binary as relay and as
// agent in separate processes on 127.0.0.1, real MCP servers (the fixture
// over stdio and over HTTP) and a real MCP client.
package e2e

import (
	"testing"

	"github.com/mcptun/mcptun/internal/leakcheck"
)

// TestMain builds the binaries into the run's directory, runs the tests,
// and then, whether they passed or not, fails the run if any process it
// started (relay, agent, stdio children in their own process groups, npm
// tools), listening socket or goroutine is left (see leakcheck).
func TestMain(m *testing.M) {
	leakcheck.Run(m, leakcheck.Options{Setup: buildBinaries})
}
