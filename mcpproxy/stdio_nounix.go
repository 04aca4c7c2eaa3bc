//go:build !unix

package mcpproxy

import (
	"errors"
	"net/http"

	"github.com/mcptun/mcptun/internal/ratelimit"
)

// Stdio servers need process groups and signals; elsewhere NewHandler
// refuses them.
func stdioSupported() error {
	return errors.New("stdio (Command) servers need a Unix system")
}

// stdioServer is never made here (NewHandler refuses Command servers);
// it has the fields portable code sets.
type stdioServer struct {
	limit *ratelimit.Limiter
}

func newStdioServer(*Handler, ServerConfig) *stdioServer { return &stdioServer{} }

func (*stdioServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	writeError(w, http.StatusNotImplemented, nil, codeInternal, stdioSupported().Error())
}

func (*stdioServer) closeAll() {}

func (*stdioServer) counters() *serverStats { return nil }

func (*stdioServer) snapshot() ServerStats { return ServerStats{Kind: "stdio"} }
