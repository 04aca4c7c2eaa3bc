package mcpproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"net/textproto"
	"net/url"
	"regexp"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcptun/mcptun/internal/audit"
	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/ratelimit"
)

// ServerConfig describes one MCP server the handler serves at /{Name}/mcp.
// Exactly one of Command and URL is set.
type ServerConfig struct {
	Name string
	// Command runs a stdio server: one child process per MCP session.
	Command []string
	// Env is added to the child's environment. The child does not inherit
	// the agent's environment (which may hold the agent's own secrets): it
	// gets only PATH, HOME, USER, LOGNAME, SHELL, LANG, LC_*, TZ and TMPDIR
	// as the agent has them, then Env on top.
	Env map[string]string
	// Dir is the child's working directory (default: the agent's).
	Dir string
	// URL is a Streamable HTTP upstream; requests are reverse-proxied to it.
	URL string
	// Headers are set on every upstream request (for example an internal
	// Authorization), replacing what the client sent under those names.
	Headers map[string]string
	// Rate, if > 0, bounds the HTTP exchanges the server receives, from
	// all clients together, to this many per second on average, in bursts
	// of up to Burst (at least 1). Over it the agent answers 429 with
	// Retry-After itself and the server sees nothing: the customer's own
	// limit, whatever the relay allows.
	Rate  float64
	Burst int
	// Limits bound the sessions and requests of a Command server, in all
	// and per client; zero fields take their defaults.
	Limits Limits
	// Policy says which tools, prompts and resources clients may use, and
	// limits and pins tools (policy.go). The zero value allows everything.
	Policy Policy
}

// Limits bound what one stdio (Command) server takes from the agent, and
// what one client may take of it: a client is the identity the relay
// verified (ClientHeader). Over a limit the bridge refuses with 503 (the
// server's limit) or 429 (the client's), error.data.reason naming which.
// Zero means the default.
type Limits struct {
	// Sessions bounds the server's sessions (children) from all clients
	// together, the stateless era's shared child included. Default
	// Options.MaxSessions (256).
	Sessions int
	// SessionsPerClient bounds one client's sessions. A client at its
	// limit that starts another session ends its own longest-idle one (no
	// request in progress) to make room; only when all its sessions are
	// busy is it refused. Default 32, at most Sessions.
	SessionsPerClient int
	// ConcurrentRequests bounds the JSON-RPC requests in flight to the
	// server's children from all clients together, counted from the POST
	// until the child answers (a client that hangs up does not free its
	// request's place: the child still works on it). Default 1024.
	ConcurrentRequests int
	// ConcurrentRequestsPerClient bounds one client's requests in flight.
	// Default 128, at most ConcurrentRequests.
	ConcurrentRequestsPerClient int
}

// Default limits (see Limits).
const (
	DefaultSessionsPerClient           = 32
	DefaultConcurrentRequests          = 1024
	DefaultConcurrentRequestsPerClient = 128
)

// withDefaults fills in l's zero fields; maxSessions is the handler's
// default for Sessions.
func (l Limits) withDefaults(maxSessions int) Limits {
	if l.Sessions == 0 {
		l.Sessions = maxSessions
	}
	if l.SessionsPerClient == 0 {
		l.SessionsPerClient = min(DefaultSessionsPerClient, l.Sessions)
	}
	if l.ConcurrentRequests == 0 {
		l.ConcurrentRequests = DefaultConcurrentRequests
	}
	if l.ConcurrentRequestsPerClient == 0 {
		l.ConcurrentRequestsPerClient = min(DefaultConcurrentRequestsPerClient, l.ConcurrentRequests)
	}
	return l
}

func (l Limits) validate() error {
	if l.Sessions < 0 || l.SessionsPerClient < 0 || l.ConcurrentRequests < 0 || l.ConcurrentRequestsPerClient < 0 {
		return fmt.Errorf("limits %+v: want numbers ≥ 0 (0: the default)", l)
	}
	if l.Sessions > 0 && l.SessionsPerClient > l.Sessions {
		return fmt.Errorf("limits: sessions per client (%d) above the server's sessions (%d)", l.SessionsPerClient, l.Sessions)
	}
	if l.ConcurrentRequests > 0 && l.ConcurrentRequestsPerClient > l.ConcurrentRequests {
		return fmt.Errorf("limits: concurrent requests per client (%d) above the server's (%d)", l.ConcurrentRequestsPerClient, l.ConcurrentRequests)
	}
	return nil
}

// Options tune a [Handler]. The zero value is usable.
type Options struct {
	// Logger receives session lifecycle, child stderr lines and errors.
	// Default: discard.
	Logger *slog.Logger
	// IdleTimeout ends a stdio session after this long without an HTTP
	// request in progress for it. Default 2 minutes: most command-line
	// clients never send DELETE, and their children would otherwise hold
	// their memory that long after they exit. A client with its GET
	// stream open is never idle.
	IdleTimeout time.Duration
	// MaxMessageBytes bounds one JSON-RPC message in either direction on
	// stdio servers. Default 64 MiB.
	MaxMessageBytes int64
	// MaxSessions bounds concurrent sessions (children) per stdio server
	// whose Limits.Sessions is 0; over it, initialize gets 503. Default 256.
	MaxSessions int
	// KeepAlive is the interval of ": keepalive" comments on SSE streams.
	// Default 20 s.
	KeepAlive time.Duration
	// WriteTimeout bounds one write of an SSE stream of a stdio server: a
	// client that accepts no bytes for this long is cut (with a logged
	// reason); its undelivered messages wait in the session's replay
	// buffer for a resume with Last-Event-ID. While such a client holds
	// a full replay buffer, the session's child is held back. Default 1
	// minute.
	WriteTimeout time.Duration
	// KillGrace is how long a child may take to exit after its stdin is
	// closed and it got SIGTERM, before its process group gets SIGKILL.
	// Default 2 s.
	KillGrace time.Duration
	// AllowedOrigins lists the browser origins (scheme://host[:port]) the
	// stdio bridge accepts besides loopback ones; "*" accepts any. A
	// request with another Origin gets 403: DNS-rebinding defence that
	// does not rely on the relay having checked. Requests without Origin
	// (non-browser clients) pass. URL servers see the client's Origin and
	// decide for themselves.
	AllowedOrigins []string
	// AllowedHosts, if set, lists the Host header values (host names, any
	// port) the stdio bridge accepts besides loopback ones; others get 403.
	// Behind the relay the Host is the agent's name.
	AllowedHosts []string
	// UpstreamNetworks, if set, are the only addresses URL servers are
	// dialed at: the check is on the address a name resolved to, at
	// connect time, so a poisoned DNS answer cannot send a server's
	// configured headers (its credentials) anywhere else. An exchange
	// whose upstream resolves outside gets 502 and a logged reason.
	UpstreamNetworks []netip.Prefix
	// Audit, if set, gets a line for every JSON-RPC message of every
	// exchange the handler serves, refusals included (see audit.go). The
	// caller owns it (and closes it after Close).
	Audit *audit.Log
	// PinFile is where servers with Policy.Pin keep their tools' pins
	// (pins.go). Required when one does.
	PinFile string
}

const (
	defaultIdleTimeout     = 2 * time.Minute
	defaultMaxMessageBytes = 64 << 20
	defaultMaxSessions     = 256
	defaultKeepAlive       = 20 * time.Second
	defaultKillGrace       = 2 * time.Second
	defaultWriteTimeout    = time.Minute

	// Replay buffer bounds per session (see the package comment).
	replayMaxEvents = 1024
	replayMaxBytes  = 8 << 20
)

// Handler serves /{server}/mcp for each configured server. Anything else is
// 404: the handler never reaches a server that is not configured.
type Handler struct {
	log  *slog.Logger
	opts Options
	// tab holds the servers; SetServers replaces it whole, so an exchange
	// finds its server with one atomic load and no lock (see reload.go).
	tab   atomic.Pointer[serverTable]
	guard *originGuard
	pins  *pinStore         // nil unless a server pins its tools
	fast  *httpfwd.FastPath // see conn.go
	// inflight counts the exchanges in progress, GET streams aside (they
	// never end by themselves), so a draining agent knows when it is done.
	inflight *httpfwd.Inflight
	leave    func() // inflight.Leave, made once

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup // per-session goroutines (stdout, stderr, reaper)
	// release is the pending releaseMemorySoon, if any.
	release *time.Timer

	// The audit trail (audit.go); nil: off. auditMax bounds the request
	// body it keeps (audit.MaxBody).
	audit    *audit.Log
	auditMax int
}

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// NewHandler validates servers and returns a handler for them. It starts
// no process: stdio children start with their sessions.
func NewHandler(servers []ServerConfig, opts Options) (*Handler, error) {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = defaultIdleTimeout
	}
	if opts.MaxMessageBytes <= 0 {
		opts.MaxMessageBytes = defaultMaxMessageBytes
	}
	if opts.MaxSessions <= 0 {
		opts.MaxSessions = defaultMaxSessions
	}
	if opts.KeepAlive <= 0 {
		opts.KeepAlive = defaultKeepAlive
	}
	if opts.KillGrace <= 0 {
		opts.KillGrace = defaultKillGrace
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = defaultWriteTimeout
	}
	h := &Handler{log: opts.Logger, opts: opts, inflight: httpfwd.NewInflight(), audit: opts.Audit, auditMax: audit.MaxBody}
	h.leave = h.inflight.Leave
	if len(servers) == 0 {
		return nil, errors.New("mcpproxy: no servers configured")
	}
	guard, err := newOriginGuard(opts.AllowedOrigins, opts.AllowedHosts)
	if err != nil {
		return nil, fmt.Errorf("mcpproxy: %w", err)
	}
	h.guard = guard
	h.fast = h.newFastPath()
	tab, _, err := h.newServerTable(servers, nil)
	if err != nil {
		return nil, err
	}
	h.tab.Store(tab)
	return h, nil
}

func validate(sc ServerConfig) error {
	if !namePattern.MatchString(sc.Name) {
		return fmt.Errorf("invalid name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", sc.Name)
	}
	if err := sc.Limits.validate(); err != nil {
		return err
	}
	if err := sc.Policy.validate(); err != nil {
		return err
	}
	if sc.Limits != (Limits{}) && sc.URL != "" {
		return errors.New("limits apply to Command servers only")
	}
	if sc.Rate < 0 || sc.Burst < 0 || math.IsNaN(sc.Rate) || math.IsInf(sc.Rate, 0) {
		return fmt.Errorf("rate %v and burst %d: want a number of requests per second ≥ 0 and a burst ≥ 0", sc.Rate, sc.Burst)
	}
	switch {
	case len(sc.Command) > 0 && sc.URL != "":
		return errors.New("set Command (stdio server) or URL (HTTP server), not both")
	case len(sc.Command) > 0:
		if sc.Command[0] == "" {
			return errors.New("empty program name in Command")
		}
		if len(sc.Headers) > 0 {
			return errors.New("headers apply to URL servers only")
		}
		for k := range sc.Env {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return fmt.Errorf("invalid environment variable name %q", k)
			}
		}
	case sc.URL != "":
		u, err := url.Parse(sc.URL)
		if err != nil {
			return fmt.Errorf("invalid URL: %w", err)
		}
		if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("invalid URL %q: want http:// or https:// with a host", sc.URL)
		}
		if len(sc.Env) > 0 || sc.Dir != "" {
			return errors.New("env and dir apply to Command servers only")
		}
		for k, v := range sc.Headers {
			if !validHeaderName(k) {
				return fmt.Errorf("invalid header name %q", k)
			}
			if strings.ContainsAny(v, "\r\n\x00") {
				return fmt.Errorf("header %q: value contains CR, LF or NUL", k)
			}
			if isHopByHop(textproto.CanonicalMIMEHeaderKey(k)) {
				return fmt.Errorf("header %q is hop-by-hop and cannot be set", k)
			}
		}
	default:
		return errors.New("set Command (stdio server) or URL (HTTP server)")
	}
	return nil
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for _, c := range []byte(k) {
		// RFC 9110 token characters.
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

func isHopByHop(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Host", "Content-Length":
		return true
	}
	return false
}

// ServeHTTP routes /{server}/mcp to the server's handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h.audit != nil && !auditing(r) {
		h.auditServe(w, r)
		return
	}
	name, rest, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	tab := h.table()
	srv := tab.servers[name]
	if !ok || rest != "mcp" || srv == nil || !strings.HasPrefix(r.URL.Path, "/") {
		writeError(w, http.StatusNotFound, nil, codeInvalidRequest,
			fmt.Sprintf("mcpproxy: no MCP server at %q (want /{server}/mcp)", r.URL.Path))
		return
	}
	if h.isClosed() {
		writeError(w, http.StatusServiceUnavailable, nil, codeInternal, "mcpproxy: shutting down")
		return
	}
	h.countRequest(name)
	if r.Method == http.MethodGet {
		if h.inflight.Draining() {
			h.refuseDraining(w)
			return
		}
	} else {
		if !h.inflight.Enter() {
			h.refuseDraining(w)
			return
		}
		defer h.inflight.Leave()
	}
	// A stdio server's bridge takes from the allowance itself, once it
	// has nothing to refuse the exchange for (stdioServer.admit), and so
	// does a URL server's policy path (httpServer.admit).
	if !ownsLimit(srv, r.Header) {
		if wait, ok := tab.limits[name].Take(); !ok {
			h.refuseOverLimit(w, name, tab.limits[name], wait)
			return
		}
	}
	srv.ServeHTTP(w, r)
}

// refuseOverLimit answers an exchange for a server over its rate limit.
func (h *Handler) refuseOverLimit(w http.ResponseWriter, name string, limit *ratelimit.Limiter, wait time.Duration) {
	if s := statsOf(h.table().servers[name]); s != nil {
		s.refused(reasonRateLimited)
	}
	h.log.Debug("server over its rate limit", "server", name)
	w.Header().Set("Retry-After", ratelimit.RetryAfter(wait))
	writeErrorData(w, http.StatusTooManyRequests, nil, codeRateLimited,
		fmt.Sprintf("mcpproxy: server %q is over its rate limit of %s; retry in %s", name, limit, wait.Round(time.Millisecond)),
		map[string]string{"reason": reasonRateLimited})
}

// Drain makes the handler refuse new exchanges (503, reason
// agent_draining, with Retry-After) while those in progress go on; Wait
// says when they are done. The relay, told by the tunnel, sends none
// after a moment: this covers the exchanges already on their way.
func (h *Handler) Drain() { h.inflight.Drain() }

// Draining reports whether Drain was called: the agent is not ready.
func (h *Handler) Draining() bool { return h.inflight.Draining() }

// Wait returns nil once no exchange is in progress (open GET streams
// aside), or ctx's error.
func (h *Handler) Wait(ctx context.Context) error { return h.inflight.Wait(ctx) }

// InFlight is the number of exchanges in progress, open GET streams aside.
func (h *Handler) InFlight() int { return h.inflight.Count() }

// refuseDraining answers an exchange that arrived after Drain.
func (h *Handler) refuseDraining(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	writeErrorData(w, http.StatusServiceUnavailable, nil, codeDraining,
		"mcpproxy: the agent is shutting down and takes no new requests; try again shortly",
		map[string]string{"reason": reasonAgentDraining})
}

func (h *Handler) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// Close ends every stdio session, kills the children's process groups and
// waits until they are reaped. Requests still being served get errors.
func (h *Handler) Close() error {
	h.mu.Lock()
	h.closed = true
	if h.release != nil && h.release.Stop() {
		h.wg.Done()
	}
	h.mu.Unlock()
	tab := h.table()
	for _, s := range tab.stdio {
		s.closeAll()
	}
	h.wg.Wait()
	for _, p := range tab.proxies {
		p.close()
	}
	return nil
}

// releaseMemorySoon hands the heap a large replay buffer left behind back
// to the operating system a second after a session ended, at most once a
// second. Left to itself the runtime would collect it only at its next
// forced collection (up to two minutes away on an idle agent) and return it
// gradually after that: an agent's RSS is what its operators watch.
func (h *Handler) releaseMemorySoon() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.release != nil {
		return
	}
	h.wg.Add(1)
	h.release = time.AfterFunc(time.Second, func() {
		defer h.wg.Done()
		debug.FreeOSMemory()
		h.mu.Lock()
		h.release = nil
		h.mu.Unlock()
	})
}

// acquire reserves a place in the set of goroutines Close waits for, or
// reports false once Close has begun: no child starts after that. The
// caller passes the reservation to a goroutine that calls h.wg.Done.
func (h *Handler) acquire() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.wg.Add(1)
	return true
}

// JSON-RPC error codes used in answers the handler makes itself.
const (
	codeParse          = -32700
	codeInvalidRequest = -32600
	codeInternal       = -32603
	codeMethodNotFound = -32601
	// codeHeaderMismatch is 2026-07-28 HEADER_MISMATCH: an Mcp-* header
	// disagrees with the body.
	codeHeaderMismatch = -32020
	// codeUnsupportedVersion is the 2026-07-28 UNSUPPORTED_PROTOCOL_VERSION;
	// its data lists the versions we support, which lets a 2026 client fall
	// back to initialize.
	codeUnsupportedVersion = -32022
	// codeServerGone marks a request whose server process ended before
	// answering (implementation-defined range).
	codeServerGone = -32000
	// codeRateLimited refuses an exchange over the server's rate limit:
	// the relay's code for its own refusals, whose data.reason tells them
	// apart.
	codeRateLimited = -32000
	// codeDraining refuses an exchange that came after the agent began
	// to drain, as the relay's own refusals do (data.reason tells).
	codeDraining = -32000
)

type rpcError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Data    any    `json:"data,omitempty"`
}

// errorBody renders a JSON-RPC error response; id nil means null. data
// gets a "reason" if it has none (see reasonFor).
func errorBody(id []byte, code int, msg string, data any) []byte {
	return errorBodyStatus(id, 0, code, msg, data)
}

func errorBodyStatus(id []byte, status, code int, msg string, data any) []byte {
	if id == nil {
		id = []byte("null")
	}
	data = withReason(data, status, code)
	e, err := json.Marshal(rpcError{Code: code, Message: msg, Data: data})
	if err != nil { // data is always ours and marshalable
		e, _ = json.Marshal(rpcError{Code: code, Message: msg})
	}
	b := make([]byte, 0, len(id)+len(e)+40)
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, id...)
	b = append(b, `,"error":`...)
	b = append(b, e...)
	return append(b, '}')
}

// writePeekError answers a client message Peek could not read: 400, with
// JSON-RPC's parse error for bytes that are not JSON.
func writePeekError(w http.ResponseWriter, err error) {
	code := codeInvalidRequest
	if errors.Is(err, ErrParse) {
		code = codeParse
	}
	writeError(w, http.StatusBadRequest, nil, code, "mcpproxy: "+err.Error())
}

func writeError(w http.ResponseWriter, status int, id []byte, code int, msg string) {
	writeErrorData(w, status, id, code, msg, nil)
}

func writeErrorData(w http.ResponseWriter, status int, id []byte, code int, msg string, data any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(errorBodyStatus(id, status, code, msg, data))
}
