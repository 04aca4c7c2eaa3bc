// Package relay is the edge of mcptun: it accepts MCP clients over HTTP(S),
// authenticates them with bearer tokens, checks their scopes and forwards
// each exchange to the right agent through its tunnel.
//
// A client calls /{agent}/{server}/mcp. The relay answers by itself only when
// it must refuse:
//
//	401  no or unknown bearer token (with WWW-Authenticate: Bearer), or
//	     with OAuth an access token that fails a check (see OAuth)
//	403  token valid but agent/server outside the client's allow patterns,
//	     or a browser Origin that is not allowed (DNS rebinding), or an
//	     access token without the required scopes
//	404  unknown agent, or a server the connected agent does not offer,
//	     or a session whose agent replica is gone (see ReplicaAgents)
//	408  the request body made no progress for the body timeout
//	429  the client is over its rate limit, or its address sent too many
//	     wrong tokens (auth_throttled), with Retry-After
//	503  the agent is known but not connected, the agent is shutting down,
//	     or the relay is (each with Retry-After); the connection cap
//	     answers 503 too, see TooManyConnections; with OAuth, also when
//	     the authorization server's keys were never had; in a fleet
//	     (Config.Peers) also when the relay holding the agent cannot be
//	     reached
//
// and when a forward fails (forwardFailed): 400/413 for a body it cannot
// read, 503 when no stream to the agent opens, 502 when the exchange broke
// after the request went out (its outcome unknown; it is never sent again).
// Every refusal carries a JSON-RPC shaped body whose message says why, so an
// MCP client shows the reason, and error.data.reason, a stable code (the
// README lists them all). Everything else is forwarded as HTTP/1.1 on a
// tunnel stream: the path becomes /{server}/mcp, the client's Authorization
// and cookies are removed (client credentials never reach internal servers)
// and X-Mcptun-Client names the client for the agent's audit log. Streams are
// reused for later exchanges with the same agent, and answers stream back as
// they come (SSE events are flushed one by one).
//
// The relay never spawns processes or reaches internal hosts: all it can do is
// open a stream to an agent that dialed in, and the agent decides what a
// stream may reach.
package relay

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcptun/mcptun/internal/authguard"
	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/logging"
	"github.com/mcptun/mcptun/internal/ratelimit"
)

// ClientHeader tells the agent which authenticated client sent an exchange.
const ClientHeader = "X-Mcptun-Client"

// Agents is what the relay needs from the tunnel layer.
type Agents interface {
	// Offers reports whether agent is connected and whether it offers
	// server.
	Offers(agent, server string) (online, offered bool)
	// Dial opens a stream to a connected agent.
	Dial(ctx context.Context, agent string) (net.Conn, error)
}

// DrainingAgents is what Agents may also offer: whether a connected agent
// said it is shutting down. The relay routes such an agent no new
// exchanges (503 agent_draining); without it, none ever is.
type DrainingAgents interface {
	AgentDraining(agent string) bool
}

// ReplicaAgents is what Agents may also offer: agents served by several
// replicas (agent processes with a credential each). Then the relay
// spreads new sessions and stateless requests across an agent's replicas,
// and sends a session-era request to the replica holding its session:
// every Mcp-Session-Id an agent answers with reaches the client as
// "TAG.ID", TAG naming the replica, and the relay hands the agent back ID,
// byte for byte as it sent it (so a url: server's own ids reach it
// unchanged). Without it the relay routes by name alone.
type ReplicaAgents interface {
	// PickReplica names the replica of agent for an exchange with
	// server: with tag "" new work, else the replica tagged so.
	PickReplica(agent, server, tag string) (replica string, route ReplicaRoute)
	// DialReplica opens a stream to one replica.
	DialReplica(ctx context.Context, agent, replica string) (net.Conn, error)
}

// ReplicaRoute is what PickReplica found.
type ReplicaRoute uint8

const (
	ReplicaOK          ReplicaRoute = iota
	ReplicaOffline                  // no replica connected offers the server
	ReplicaDraining                 // every replica that would take new work drains
	ReplicaSessionGone              // the session's replica is gone (others are up)
)

// sessionHeader is MCP's session header, which the relay rewrites for
// replicas.
const sessionHeader = "Mcp-Session-Id"

// splitSessionID splits "TAG.ID" (see ReplicaAgents); ok is false for an
// id the relay cannot have handed out.
func splitSessionID(id string) (tag, inner string, ok bool) {
	tag, inner, ok = strings.Cut(id, ".")
	if !ok || len(tag) == 0 || len(tag) > 16 || inner == "" {
		return "", "", false
	}
	for i := range len(tag) {
		if c := tag[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return "", "", false
		}
	}
	return tag, inner, true
}

// Client is an MCP client allowed to use the relay.
type Client struct {
	Name        string
	TokenSHA256 [32]byte
	Allow       []string // "agent/server" or "agent/server/tool-glob" patterns, "*" matches a segment
	// Rate, if > 0, limits the client to this many exchanges per second
	// (POST, GET and DELETE alike; an SSE stream counts once, when it
	// opens), with bursts of up to Burst (at least 1). Over it the relay
	// answers 429 with Retry-After and forwards nothing.
	Rate  float64
	Burst int
}

// client is a configured Client and its limiter (nil: no limit).
type client struct {
	Client
	limiter *ratelimit.Limiter
	// narrows says some allow pattern names tools.
	narrows bool
}

// Config configures a Handler.
type Config struct {
	Agents Agents
	// KnownAgents lists every configured agent name, connected or not, so an
	// offline agent gets 503 and an unknown one 404.
	KnownAgents []string
	Clients     []Client
	// AllowedOrigins lists browser origins (scheme://host[:port]) allowed
	// besides loopback ones; "*" allows any.
	AllowedOrigins []string
	Logger         *slog.Logger
	// Limits bound what a client connection may hold; zero fields take
	// the defaults.
	Limits Limits
	// AuthGuard throttles and logs wrong bearer tokens per source address
	// (nil: one with authguard's defaults, logging to Logger).
	AuthGuard *authguard.Guard
	// Peers, if set, is the relay fleet (relay.yaml cluster:): an
	// exchange for an agent this relay holds no tunnel to (or not to the
	// replica a session names) goes to a peer relay that does, over an
	// authenticated link, with the client this relay verified. Nil: the
	// relay serves only its own tunnels.
	Peers Peers
	// Name is this relay's name in the fleet: the X-Mcptun-Via header of
	// the answers it serves for a peer.
	Name string
	// MaxStalledPerAgent bounds the answers of one agent whose clients have
	// read nothing for ClientStallAfter, at once (default
	// DefaultMaxStalledPerAgent); a client that would be one more is cut
	// at once (see httpfwd.StallBudget).
	MaxStalledPerAgent int
	// OAuth, if set, also admits clients with JWT access tokens (see
	// OAuth); nil: bearer tokens only.
	OAuth *OAuth
	// Observer, if set, is told of every exchange (metrics).
	Observer Observer
}

// DefaultMaxStalledPerAgent keeps what stalled clients hold of an agent's
// tunnel connection at half its QUIC window: 32 streams of at most 1 MiB
// unread each against 64 MiB (see tunnel's quicConnWindow).
const DefaultMaxStalledPerAgent = 32

// ClientStallAfter is how long a write to a client may be blocked before
// the client counts as reading nothing (see Config.MaxStalledPerAgent).
const ClientStallAfter = time.Second

// Limits bound client connections (relay.yaml http.*).
type Limits struct {
	// HeaderTimeout bounds the wait for a request head: on a new
	// connection from accept, on a kept-alive one from its first byte
	// (default ClientHeaderTimeout).
	HeaderTimeout time.Duration
	// IdleTimeout closes a connection idle between exchanges (default
	// ClientIdleTimeout).
	IdleTimeout time.Duration
	// BodyTimeout cuts a request body that makes no progress this long,
	// with 408 body_timeout (default ClientBodyTimeout).
	BodyTimeout time.Duration
	// WriteTimeout cuts a client that accepts no bytes of its answer this
	// long (default ClientWriteTimeout): a GET stream nobody reads must not
	// hold its tunnel stream, and the agent's flow-control window, for
	// ever.
	WriteTimeout time.Duration
}

func (l *Limits) defaults() {
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&l.HeaderTimeout, ClientHeaderTimeout},
		{&l.IdleTimeout, ClientIdleTimeout},
		{&l.BodyTimeout, ClientBodyTimeout},
		{&l.WriteTimeout, ClientWriteTimeout},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
}

// Handler is the relay's HTTP front. It is safe for concurrent use.
type Handler struct {
	agents Agents
	// auth holds who may call what; Reconfigure replaces it whole, so a
	// request reads one consistent table without a lock (see reload.go).
	auth    atomic.Pointer[authTable]
	origins map[string]bool
	anyOrig bool
	log     *slog.Logger
	mux     *http.ServeMux
	fast    *httpfwd.FastPath // see conn.go
	// draining is the tunnel's news of agents shutting down (nil: none).
	draining DrainingAgents
	// replicas routes among an agent's replicas (nil: by name alone).
	replicas ReplicaAgents
	// peers is the relay fleet (nil: none); name this relay's name in it.
	peers Peers
	name  string
	// inflight counts the exchanges forwarded, but not GET streams:
	// those never end by themselves, so a drain does not wait for them
	// (they end when the relay closes, and clients resume them).
	inflight *httpfwd.Inflight
	leave    func()      // inflight.Leave, made once
	closed   atomic.Bool // Close was called: failures are the relay's doing
	limits   Limits
	cutLog   *logging.Limit // clients cut for a timeout
	guard    *authguard.Guard
	stallN   int
	oauth    *oauthVerifier // nil: no OAuth clients
	// transports says an agent's tunnel transport, for the access line.
	transports AgentTransports
	obs        Observer // nil: nobody observes

	mu       sync.Mutex
	perAgent map[string]*perAgent // so one agent's reconnect drops only its streams
	// peerFwds are the pooled links to peer relays, by address.
	peerFwds map[string]*httpfwd.Forwarder
	// peerDown holds when a link to a peer last failed to open, by
	// address: the registry keeps a dead relay until its entry expires,
	// and meanwhile another peer holding the agent is tried first.
	peerDown map[string]time.Time
}

// NewHandler returns the relay's HTTP handler.
func NewHandler(cfg Config) (*Handler, error) {
	if cfg.Agents == nil {
		return nil, errors.New("relay: Config.Agents is nil")
	}
	h := &Handler{
		agents:   cfg.Agents,
		origins:  make(map[string]bool),
		log:      cfg.Logger,
		perAgent: make(map[string]*perAgent),
		inflight: httpfwd.NewInflight(),
		limits:   cfg.Limits,
		cutLog:   logging.NewLimit(logging.LimitRate, logging.LimitBurst),
		guard:    cfg.AuthGuard,
		stallN:   cfg.MaxStalledPerAgent,
		obs:      cfg.Observer,
		peers:    cfg.Peers,
		name:     cfg.Name,
		peerFwds: make(map[string]*httpfwd.Forwarder),
		peerDown: make(map[string]time.Time),
	}
	h.leave = h.inflight.Leave
	h.draining, _ = cfg.Agents.(DrainingAgents)
	h.transports, _ = cfg.Agents.(AgentTransports)
	h.replicas, _ = cfg.Agents.(ReplicaAgents)
	if h.stallN <= 0 {
		h.stallN = DefaultMaxStalledPerAgent
	}
	h.limits.defaults()
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.guard == nil {
		h.guard = authguard.New(authguard.Config{What: "bearer token", Logger: h.log})
	}
	auth, err := newAuthTable(cfg.KnownAgents, cfg.Clients, nil)
	if err != nil {
		return nil, err
	}
	h.auth.Store(auth)
	for _, o := range cfg.AllowedOrigins {
		if o == "*" {
			h.anyOrig = true
		}
		h.origins[strings.ToLower(strings.TrimSuffix(o, "/"))] = true
	}
	if cfg.OAuth != nil {
		v, err := newOAuthVerifier(*cfg.OAuth, h.log)
		if err != nil {
			return nil, err
		}
		h.oauth = v
	}
	h.fast = h.newFastPath()
	h.mux = http.NewServeMux()
	if h.oauth != nil {
		h.mux.HandleFunc(metadataPath, h.oauth.serveMetadata)
		h.mux.HandleFunc(metadataPath+"/{agent}/{server}/mcp", h.oauth.serveMetadata)
	}
	h.mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		_, _ = w.Write([]byte("ok\n"))
	})
	h.mux.HandleFunc("/{agent}/{server}/mcp", h.serveMCP)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found",
			fmt.Sprintf("no MCP endpoint at %s; endpoints look like /{agent}/{server}/mcp", r.URL.Path))
	})
	return h, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Every answer on net/http's path is bounded by the write timeout (a
	// forwarded one per write, see stallWriter); net/http's server would
	// otherwise keep a deadline left from an earlier exchange.
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(h.limits.WriteTimeout))
	if r.URL.Path != "/healthz" && h.accessEnabled(r.Context()) {
		h.serveAccess(w, r)
		return
	}
	h.mux.ServeHTTP(w, r)
}

// Drain makes the relay refuse new exchanges, with 503 relay_draining,
// Retry-After and Connection: close, while the exchanges in flight go on.
// Wait says when they are done.
func (h *Handler) Drain() { h.inflight.Drain() }

// Draining reports whether Drain was called: the relay is not ready.
func (h *Handler) Draining() bool { return h.inflight.Draining() }

// Wait returns nil once no exchange is in flight (open GET streams aside),
// or ctx's error.
func (h *Handler) Wait(ctx context.Context) error { return h.inflight.Wait(ctx) }

// InFlight is the number of exchanges in flight, open GET streams aside.
func (h *Handler) InFlight() int { return h.inflight.Count() }

// agentDraining reports whether agent said it is shutting down.
func (h *Handler) agentDraining(agent string) bool {
	return h.draining != nil && h.draining.AgentDraining(agent)
}

// AgentDown drops the pooled streams of an agent whose session ended.
func (h *Handler) AgentDown(agent string) {
	var fs map[string]*httpfwd.Forwarder
	h.mu.Lock()
	if pa := h.perAgent[agent]; pa != nil {
		fs, pa.fwds = pa.fwds, nil
	}
	h.mu.Unlock()
	for _, f := range fs {
		f.Close()
	}
}

// Close releases pooled streams. Exchanges still in flight fail when the
// tunnel under them closes; those not answered yet get 503
// relay_shutdown.
func (h *Handler) Close() error {
	h.closed.Store(true)
	var fs []*httpfwd.Forwarder
	h.mu.Lock()
	for _, pa := range h.perAgent {
		for _, f := range pa.fwds {
			fs = append(fs, f)
		}
		pa.fwds = nil
	}
	for addr, f := range h.peerFwds {
		fs = append(fs, f)
		delete(h.peerFwds, addr)
	}
	h.mu.Unlock()
	for _, f := range fs {
		f.Close()
	}
	return nil
}

// AuthGuard returns the guard against token guessing (for its Stats).
func (h *Handler) AuthGuard() *authguard.Guard { return h.guard }

func (h *Handler) serveMCP(w http.ResponseWriter, r *http.Request) {
	if h.inflight.Draining() {
		// This connection's next exchange would be refused too.
		w.Header().Set("Connection", "close")
	}
	agent, server := r.PathValue("agent"), r.PathValue("server")
	src := authguard.ParseAddr(r.RemoteAddr)
	sid := r.Header.Values(sessionHeader)
	if len(sid) > 1 {
		writeError(w, http.StatusBadRequest, reasonBadRequest, "more than one Mcp-Session-Id header")
		return
	}
	adm, ref := h.admit(src, r.Header.Get("Origin"), r.Header.Get("Authorization"), r.Host, agent, server, r.Header.Get(sessionHeader))
	if ref != nil {
		// Counted here, not in admit: every refusal is answered here
		// (the fast path hands them over), and only once.
		switch {
		case ref.wrongToken:
			h.guard.Failed(src, "agent", agent, "server", server)
		case ref.reason == "auth_throttled":
			h.guard.Refused(src)
		}
		if ref.logMsg != "" {
			h.log.Log(r.Context(), ref.logLevel, ref.logMsg, ref.logArgs...)
		}
		if ref.header != "" {
			w.Header().Set(ref.header, ref.value)
		}
		if ref.status != http.StatusUnauthorized && ref.reason != "auth_throttled" && h.accessEnabled(r.Context()) {
			// Who was refused, for the access line (admit names a
			// client it authenticated before refusing).
			if ref.client != "" {
				noteAccess(w, ref.client, "")
			}
		}
		if h.obs != nil {
			h.observedRefusal(agent, server, mcpMethod(r.Method, nil), ref)
		}
		writeError(w, ref.status, ref.reason, ref.msg)
		return
	}
	noteAccess(w, adm.client.Name, "")
	h.forward(w, r, adm, agent, server)
}

// refusal is an answer the relay gives by itself instead of forwarding.
type refusal struct {
	status        int
	reason, msg   string
	header, value string // one extra header, if any
	logLevel      slog.Level
	logMsg        string
	logArgs       []any
	wrongToken    bool   // a bearer token was sent and matches no client
	client        string // the authenticated client refused after authentication, for the access line
}

// admission is an exchange admit lets through: the client, and with
// replicas the replica it goes to and the session id the agent knows.
type admission struct {
	client *client
	// tools is the ToolsHeader value ("" none: the client may use every
	// tool the agent allows).
	tools   string
	replica string // "" without ReplicaAgents
	sid     string // the Mcp-Session-Id to send on, its tag taken off
	// peer, if set, is the address of the peer relay the exchange goes
	// to (see Config.Peers); replica is then "" and sid as the client
	// sent it: the peer routes among its own replicas.
	peer string
}

var sessionGone = &refusal{status: http.StatusNotFound, reason: "session_not_found",
	msg: "no such session (the agent replica holding it is gone): send initialize again"}

// admit decides whether a client's exchange with agent/server goes
// through, from the source address and the headers that decide it: the
// client, or why not. It only looks (serveMCP counts refusals).
func (h *Handler) admit(src netip.Addr, origin, authorization, host, agent, server, sid string) (_ admission, ref *refusal) {
	var client *client
	defer func() {
		// A refusal after authentication names the client (for the
		// access line); shared refusals are copied, not changed.
		if ref != nil && client != nil {
			named := *ref
			named.client = client.Name
			ref = &named
		}
	}()
	if h.inflight.Draining() {
		return admission{}, relayDraining
	}
	if !h.originAllowed(origin, host) {
		return admission{}, &refusal{status: http.StatusForbidden, reason: "origin_not_allowed",
			msg:      fmt.Sprintf("origin %q is not allowed (add it to http.allowed_origins)", origin),
			logLevel: slog.LevelWarn, logMsg: "refused foreign origin",
			logArgs: []any{"origin", origin, "host", host, "agent", agent, "server", server}}
	}
	// Before the token is looked at: a guess that happens to be right
	// must not go through either, or guessing would not be slowed.
	if wait, ok := h.guard.Check(src); !ok {
		return admission{}, &refusal{status: http.StatusTooManyRequests, reason: "auth_throttled",
			msg: fmt.Sprintf("too many failed authentications from your address; retry in %s",
				wait.Round(time.Second)+time.Second),
			header: "Retry-After", value: ratelimit.RetryAfter(wait)}
	}
	auth := h.auth.Load()
	client, ref = h.authenticate(auth, authorization, agent, server)
	if ref != nil {
		return admission{}, ref
	}
	if !client.allowed(agent, server) {
		return admission{}, &refusal{status: http.StatusForbidden, reason: "forbidden",
			msg:      fmt.Sprintf("client %q may not use %s/%s", client.Name, agent, server),
			logLevel: slog.LevelInfo, logMsg: "client not allowed",
			logArgs: []any{"client", client.Name, "agent", agent, "server", server}}
	}
	if !auth.known[agent] {
		return admission{}, &refusal{status: http.StatusNotFound, reason: "unknown_agent", msg: fmt.Sprintf("no agent named %q", agent)}
	}
	adm := admission{client: client, sid: sid}
	if client.narrows {
		adm.tools = client.narrowTools(agent, server)
	}
	if ref := h.routeAgent(&adm, agent, server, h.peers != nil); ref != nil {
		return admission{}, ref
	}
	// Last: an exchange refused for another reason takes no token.
	if wait, ok := client.limiter.Take(); !ok {
		return admission{}, &refusal{status: http.StatusTooManyRequests, reason: "rate_limited",
			msg: fmt.Sprintf("client %q is over its rate limit of %s; retry in %s",
				client.Name, client.limiter, wait.Round(time.Millisecond)),
			header: "Retry-After", value: ratelimit.RetryAfter(wait),
			logLevel: slog.LevelDebug, logMsg: "client over its rate limit",
			logArgs: []any{"client", client.Name, "agent", agent, "server", server}}
	}
	return adm, nil
}

// agentOffline refuses an exchange for an agent nobody holds a tunnel to.
func agentOffline(agent string) *refusal {
	return &refusal{status: http.StatusServiceUnavailable, reason: "agent_offline",
		msg:    fmt.Sprintf("agent %q is not connected; try again when it reconnects", agent),
		header: "Retry-After", value: unavailableRetryAfter}
}

// routeAgent decides where an admitted exchange with a known agent goes:
// to one of the agent's replicas connected here, or (viaPeers) to a peer
// relay holding the agent when none here can take it. adm.sid is the
// client's Mcp-Session-Id on the way in.
func (h *Handler) routeAgent(adm *admission, agent, server string, viaPeers bool) *refusal {
	clientSID := adm.sid
	var want string
	if t, _, ok := splitSessionID(clientSID); ok {
		want = t
	}
	// toPeer sends the exchange on to a relay holding the agent (the
	// session's replica, if it names one), with the session id as the
	// client sent it: that relay routes among its own replicas.
	toPeer := func(tag string) bool {
		if !viaPeers {
			return false
		}
		peers := h.peers.Lookup(agent, tag)
		if len(peers) == 0 {
			return false
		}
		adm.peer, adm.replica, adm.sid = h.pickPeer(peers), "", clientSID
		return true
	}
	online, offered := h.agents.Offers(agent, server)
	if !online {
		if toPeer(want) {
			return nil
		}
		if want != "" && viaPeers && len(h.peers.Lookup(agent, "")) > 0 {
			// Other replicas are up at other relays: the session's
			// replica is gone, as if they were connected here.
			return sessionGone
		}
		return agentOffline(agent)
	}
	if !offered {
		return &refusal{status: http.StatusNotFound, reason: "unknown_server",
			msg: fmt.Sprintf("agent %q offers no server named %q", agent, server)}
	}
	if h.replicas != nil {
		if _, inner, ok := splitSessionID(clientSID); ok {
			adm.sid = inner
		}
		// An id the relay cannot have handed out goes, as it is, to a
		// replica as new work: that agent answers 404 as for any session
		// it does not know, in the same words as for another client's.
		var route ReplicaRoute
		switch adm.replica, route = h.replicas.PickReplica(agent, server, want); route {
		case ReplicaOffline:
			if toPeer(want) {
				return nil
			}
			return agentOffline(agent)
		case ReplicaSessionGone:
			// The session's replica may be connected to another relay.
			if toPeer(want) {
				return nil
			}
			return sessionGone
		case ReplicaDraining:
			if toPeer("") {
				return nil
			}
			return agentDrainingRefusal(agent)
		}
	} else if h.agentDraining(agent) {
		if toPeer("") {
			return nil
		}
		return agentDrainingRefusal(agent)
	}
	return nil
}

// unavailableRetryAfter is the Retry-After of every 503 (an agent offline
// or draining, a draining relay): about the time a restart or reconnect
// takes.
const unavailableRetryAfter = "5"

// agentDrainingRefusal refuses new work for an agent whose every replica
// drains.
func agentDrainingRefusal(agent string) *refusal {
	return &refusal{status: http.StatusServiceUnavailable, reason: "agent_draining",
		msg:    fmt.Sprintf("agent %q is shutting down and takes no new requests; try again shortly", agent),
		header: "Retry-After", value: unavailableRetryAfter}
}

// relayDraining refuses every exchange once the relay drains: the client
// should go to another relay, or come back once this one restarted.
var relayDraining = &refusal{status: http.StatusServiceUnavailable, reason: "relay_draining",
	msg:    "the relay is shutting down and takes no new requests; try again shortly",
	header: "Retry-After", value: unavailableRetryAfter}

// authenticate returns the client whose token the request carries (a
// token client's from the current table t, or with OAuth a valid access
// token's), or the refusal, whose WWW-Authenticate challenge points OAuth
// clients at the metadata of agent/server's endpoint.
func (h *Handler) authenticate(t *authTable, auth, agent, server string) (*client, *refusal) {
	scheme, token, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" {
		challenge := `Bearer realm="mcptun"`
		if h.oauth != nil {
			challenge = h.oauth.challenge(agent, server, "", "", true)
		}
		return nil, &refusal{status: http.StatusUnauthorized, reason: "unauthorized",
			msg:    "missing bearer token: send Authorization: Bearer <token>",
			header: "WWW-Authenticate", value: challenge}
	}
	token = strings.TrimSpace(token)
	sum := sha256.Sum256([]byte(token))
	var found *client
	// Compare against every client so the time taken does not tell which
	// (or whether any) client matched.
	for i := range t.clients {
		if subtle.ConstantTimeCompare(sum[:], t.clients[i].TokenSHA256[:]) == 1 {
			found = &t.clients[i]
		}
	}
	if found != nil {
		return found, nil
	}
	if h.oauth != nil && looksLikeJWT(token) {
		return h.oauth.verify(token, agent, server)
	}
	challenge := `Bearer realm="mcptun", error="invalid_token"`
	if h.oauth != nil {
		challenge = h.oauth.challenge(agent, server, "invalid_token", "", false)
	}
	return nil, &refusal{status: http.StatusUnauthorized, reason: "unauthorized", msg: "invalid bearer token",
		header: "WWW-Authenticate", value: challenge, wrongToken: true}
}

func (c *Client) allowed(agent, server string) bool {
	for _, p := range c.Allow {
		pa, ps, _ := strings.Cut(p, "/")
		ps, _, _ = strings.Cut(ps, "/")
		if (pa == "*" || pa == agent) && (ps == "*" || ps == server) {
			return true
		}
	}
	return false
}

// ToolsHeader carries to the agent the tool globs a client's allow
// patterns grant it on a server ("dc1/wiki/search_*"), when every pattern
// that covers the server names tools (mcpproxy.NarrowHeader). The agent
// intersects them with its own policy: the relay can narrow what the agent
// allows, never widen it. A client's own copy is removed.
const ToolsHeader = "X-Mcptun-Tools"

// narrowTools returns the ToolsHeader value for agent/server: the tool
// globs of the patterns that cover it, comma-separated and each
// query-escaped, or "" when one of them covers the whole server.
func (c *Client) narrowTools(agent, server string) string {
	var globs []string
	for _, p := range c.Allow {
		pa, rest, _ := strings.Cut(p, "/")
		ps, tools, narrowed := strings.Cut(rest, "/")
		if pa != "*" && pa != agent || ps != "*" && ps != server {
			continue
		}
		if !narrowed {
			return ""
		}
		globs = append(globs, url.QueryEscape(tools))
	}
	return strings.Join(globs, ",")
}

// originAllowed guards against DNS rebinding: a browser always sends Origin,
// and a page on a foreign origin must not reach the relay. Same-origin is not
// enough (rebinding makes a foreign page same-origin with the relay), so an
// Origin passes only when allowed_origins lists it, or when both it and the
// Host are loopback (local tools such as the MCP Inspector). Requests
// without Origin (non-browser clients) pass.
func (h *Handler) originAllowed(origin, host string) bool {
	if origin == "" || h.anyOrig {
		return true
	}
	if h.origins[strings.ToLower(origin)] {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && isLoopbackHost(u.Hostname()) && isLoopbackHost(hostOnly(host))
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return strings.Trim(hostport, "[]")
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
