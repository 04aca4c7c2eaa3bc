package mcpproxy

import (
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// serverStats counts what one server saw, for metrics and the status API;
// the request path only adds to atomics.
type serverStats struct {
	requests       atomic.Uint64 // exchanges routed to the server
	upstreamErrors atomic.Uint64 // exchanges the upstream failed (url servers)
	refusals       [len(LimitReasons)]atomic.Uint64

	mu      sync.Mutex
	lastErr string
	lastAt  time.Time
}

func (s *serverStats) failed(msg string) {
	s.upstreamErrors.Add(1)
	s.mu.Lock()
	s.lastErr, s.lastAt = msg, time.Now()
	s.mu.Unlock()
}

// LimitReasons are the reasons the agent refuses an exchange for one of
// its limits, counted per server (ServerStats.Refusals).
// (Spelled out: the stdio limits' constants exist only where stdio
// servers run; TestLimitReasons keeps them in step.)
var LimitReasons = [...]string{reasonRateLimited, "session_limit", "client_session_limit",
	"concurrency_limit", "client_concurrency_limit"}

func (s *serverStats) refused(reason string) {
	for i, r := range LimitReasons {
		if r == reason {
			s.refusals[i].Add(1)
			return
		}
	}
}

// statsOf returns the counters of a server handler.
func statsOf(srv http.Handler) *serverStats {
	switch s := srv.(type) {
	case *httpServer:
		return &s.stats
	case *stdioServer:
		return s.counters()
	}
	return nil
}

// countRequest counts an exchange for the server named name, if any.
func (h *Handler) countRequest(name string) {
	if s := statsOf(h.table().servers[name]); s != nil {
		s.requests.Add(1)
	}
}

// ServerStats is a snapshot of one server, for metrics and status pages.
type ServerStats struct {
	Name string `json:"name"`
	Kind string `json:"kind"` // "stdio" or "http"
	// Requests counts the HTTP exchanges routed to the server (refusals
	// by the agent's limits included).
	Requests uint64 `json:"requests"`
	// UpstreamErrors counts exchanges a url server failed (it could not
	// be reached, or broke off), and a stdio server's processes that
	// could not start or ended on their own.
	UpstreamErrors uint64 `json:"upstream_errors"`
	// Sessions are the MCP sessions open (stdio: with a child each);
	// Children the child processes running, the stateless era's shared
	// one included; Calls the JSON-RPC requests in flight to them.
	Sessions int `json:"sessions"`
	Children int `json:"children"`
	Calls    int `json:"calls"`
	// Refusals counts the exchanges refused for a limit, by reason
	// (LimitReasons).
	Refusals map[string]uint64 `json:"refusals,omitempty"`
	// LastError is the most recent failure, if any.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	// URL is a url: server's upstream as configured now (a reload may
	// change it), for a reachability probe; never shown (it may carry
	// credentials).
	URL string `json:"-"`
}

// Stats reports every server, in configuration order, stdio servers
// first.
func (h *Handler) Stats() []ServerStats {
	tab := h.table()
	out := make([]ServerStats, 0, len(tab.stdio)+len(tab.proxies))
	for _, s := range tab.stdio {
		out = append(out, s.snapshot())
	}
	for _, p := range tab.proxies {
		st := p.stats.snapshot(p.name, "http")
		st.Sessions = p.sessions.count()
		st.URL = tab.cfgs[p.name].URL
		out = append(out, st)
	}
	return out
}

func (s *serverStats) snapshot(name, kind string) ServerStats {
	st := ServerStats{Name: name, Kind: kind, Requests: s.requests.Load(), UpstreamErrors: s.upstreamErrors.Load()}
	for i, r := range LimitReasons {
		if n := s.refusals[i].Load(); n > 0 {
			if st.Refusals == nil {
				st.Refusals = map[string]uint64{}
			}
			st.Refusals[r] = n
		}
	}
	s.mu.Lock()
	st.LastError, st.LastErrorAt = s.lastErr, s.lastAt
	s.mu.Unlock()
	return st
}

// count is the number of upstream sessions the agent knows the owner of.
func (u *urlSessions) count() int {
	if u == nil {
		return 0
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.m)
}
