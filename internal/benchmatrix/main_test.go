package benchmatrix

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The test binary serves as the plain tunnel's relay and agent
	// (Options.Self), as the benchmark command does.
	if ok, code := RunRole(os.Args[1:], os.Stderr); ok {
		os.Exit(code)
	}
	goleak.VerifyTestMain(m)
}
