//go:build unix

package mcpproxy

import "fmt"

// noteExit records a child that ended on its own (not stopped by the
// agent: its session had not ended) as the server's last error.
func (srv *stdioServer) noteExit(s *session, werr error) {
	s.mu.Lock()
	ended := s.ended
	s.mu.Unlock()
	if !ended {
		srv.stats.failed(fmt.Sprintf("server process ended on its own (%s)", exitReason(werr)))
	}
}

func (srv *stdioServer) counters() *serverStats { return &srv.stats }

func (srv *stdioServer) snapshot() ServerStats {
	st := srv.stats.snapshot(srv.cfg.Name, "stdio")
	srv.mu.Lock()
	st.Sessions, st.Children = len(srv.sessions), len(srv.live)
	srv.mu.Unlock()
	srv.callMu.Lock()
	st.Calls = srv.calls
	srv.callMu.Unlock()
	return st
}
