//go:build unix

package mcpproxy

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Refusal reasons (error.data.reason) of the stdio bridge's limits.
const (
	reasonSessionLimit           = "session_limit"
	reasonClientSessionLimit     = "client_session_limit"
	reasonConcurrencyLimit       = "concurrency_limit"
	reasonClientConcurrencyLimit = "client_concurrency_limit"
)

// limitError refuses a request over one of a server's Limits.
type limitError struct {
	status int    // 503: the server's limit; 429: the client's
	reason string // error.data.reason
	limit  int
	msg    string
	// retry is the Retry-After to send, if any: requests end soon,
	// sessions whenever their clients say.
	retry string
}

func (e *limitError) Error() string { return e.msg }

// writeLimit answers a request refused by a limit.
func writeLimit(w http.ResponseWriter, id []byte, e *limitError) {
	if e.retry != "" {
		w.Header().Set("Retry-After", e.retry)
	}
	writeErrorData(w, e.status, id, codeRateLimited, "mcpproxy: "+e.msg,
		map[string]any{"reason": e.reason, "limit": e.limit})
}

// refused logs a refusal: at debug level, as a flood of them would
// otherwise flood the log too (the client sees the reason).
func (srv *stdioServer) refused(e *limitError) {
	srv.stats.refused(e.reason)
	srv.log.Debug("over a limit: refused", "reason", e.reason, "limit", e.limit, "why", e.msg)
}

// clientName is how logs and messages name a client identity.
func clientName(client string) string {
	if client == "" {
		return "(anonymous)"
	}
	return client
}

// reserve takes a session place for owner (none for the shared child, which
// is no one client's): under owner's limit, where owner's longest-idle
// session makes room if owner has no place left, and under the server's.
// releaseLocked gives the place back.
func (srv *stdioServer) reserve(shared bool, owner string) error {
	for range 3 { // a concurrent start may take the place an eviction made
		srv.mu.Lock()
		if srv.closed {
			srv.mu.Unlock()
			return errClosing
		}
		if !shared && srv.perClient[owner] >= srv.lim.SessionsPerClient {
			var mine []*session
			for _, s := range srv.sessions {
				if s.owner == owner && !s.shared {
					mine = append(mine, s)
				}
			}
			srv.mu.Unlock()
			if !endLongestIdle(mine) {
				break
			}
			continue
		}
		if n := len(srv.live) + srv.starting; n >= srv.lim.Sessions {
			srv.mu.Unlock()
			return &limitError{status: http.StatusServiceUnavailable, reason: reasonSessionLimit, limit: srv.lim.Sessions,
				msg: fmt.Sprintf("server %q already has its maximum of %d sessions (limits.sessions); retry when one ends", srv.cfg.Name, srv.lim.Sessions)}
		}
		srv.starting++ // so concurrent initializes cannot overshoot
		if !shared {
			srv.perClient[owner]++
		}
		srv.mu.Unlock()
		return nil
	}
	return &limitError{status: http.StatusTooManyRequests, reason: reasonClientSessionLimit, limit: srv.lim.SessionsPerClient,
		msg: fmt.Sprintf("client %s already has its maximum of %d sessions on server %q, all of them busy (limits.sessions_per_client); end one with DELETE",
			clientName(owner), srv.lim.SessionsPerClient, srv.cfg.Name)}
}

// releaseLocked gives back a place reserve took, for a session that did
// not start or (from remove) one that ended.
func (srv *stdioServer) releaseLocked(shared bool, owner string) {
	if shared {
		return
	}
	if srv.perClient[owner]--; srv.perClient[owner] <= 0 {
		delete(srv.perClient, owner)
	}
}

// endLongestIdle ends the session of ss that has been idle (no HTTP request
// in progress) the longest, if any is idle; it reports whether it ended one.
func endLongestIdle(ss []*session) bool {
	for len(ss) > 0 {
		var oldest *session
		var since time.Time
		for _, s := range ss {
			if t, idle := s.idleSince(); idle && (oldest == nil || t.Before(since)) {
				oldest, since = s, t
			}
		}
		if oldest == nil {
			return false
		}
		if oldest.endIfIdle(errReplaced) {
			return true
		}
		// It got a request meanwhile: try the others.
		for i, s := range ss {
			if s == oldest {
				ss = append(ss[:i], ss[i+1:]...)
				break
			}
		}
	}
	return false
}

// takeCall counts a request of client in flight, or refuses it over the
// server's or the client's limit. callMu is a leaf lock: takeCall runs
// under a session's mu.
func (srv *stdioServer) takeCall(client string) error {
	srv.callMu.Lock()
	defer srv.callMu.Unlock()
	if srv.calls >= srv.lim.ConcurrentRequests {
		return &limitError{status: http.StatusServiceUnavailable, reason: reasonConcurrencyLimit, limit: srv.lim.ConcurrentRequests, retry: "1",
			msg: fmt.Sprintf("server %q already has its maximum of %d requests in flight (limits.concurrent_requests)", srv.cfg.Name, srv.lim.ConcurrentRequests)}
	}
	if srv.clientCalls[client] >= srv.lim.ConcurrentRequestsPerClient {
		return &limitError{status: http.StatusTooManyRequests, reason: reasonClientConcurrencyLimit, limit: srv.lim.ConcurrentRequestsPerClient, retry: "1",
			msg: fmt.Sprintf("client %s already has its maximum of %d requests in flight on server %q (limits.concurrent_requests_per_client)",
				clientName(client), srv.lim.ConcurrentRequestsPerClient, srv.cfg.Name)}
	}
	srv.calls++
	srv.clientCalls[client]++
	return nil
}

// releaseCall ends what takeCall counted.
func (srv *stdioServer) releaseCall(client string) {
	srv.callMu.Lock()
	defer srv.callMu.Unlock()
	srv.calls--
	if srv.clientCalls[client]--; srv.clientCalls[client] <= 0 {
		delete(srv.clientCalls, client)
	}
}

// asLimit reports whether err is a limit's refusal.
func asLimit(err error) (*limitError, bool) {
	var le *limitError
	ok := errors.As(err, &le)
	return le, ok
}
