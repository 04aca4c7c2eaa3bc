package tunnel

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/mcptun/mcptun/internal/authguard"
	"github.com/mcptun/mcptun/internal/logging"
)

// ErrAgentOffline is returned, wrapped, by Server.Dial when the agent has no
// session.
var ErrAgentOffline = errors.New("agent offline")

// DefaultHandshakeTimeout bounds a connection's time from accept to welcome.
const DefaultHandshakeTimeout = 10 * time.Second

const (
	// maxPendingHandshakes bounds unauthenticated connections; more are
	// dropped at accept.
	maxPendingHandshakes = 256
	// lingerTimeout is how long the relay waits, after a refusal or goaway,
	// for the agent to read it and hang up before closing the session
	// itself: closing at once could discard the frame in flight.
	lingerTimeout = 2 * time.Second
	// replaceGrace bounds how long a replaced session keeps its streams:
	// new exchanges go to the newer session at once, and the old one ends
	// when its last stream closes or after this, whichever comes first.
	// An agent moving from TCP back to QUIC relies on it.
	replaceGrace = 30 * time.Second
)

// AgentCredential is an agent the relay accepts: its name and one
// credential, either the SHA-256 of its token, its Ed25519 public key, or
// the SHA-256 of its TLS client certificate. A name may be listed once per
// replica, each with a credential of its own (see ReplicaTag).
type AgentCredential struct {
	Name string
	// TokenSHA256 is the SHA-256 of the agent's token, unless PublicKey or
	// CertSHA256 is set.
	TokenSHA256 [32]byte
	// PublicKey is the agent's Ed25519 key: it signs the TLS session it
	// connects on (see authTranscript), so what the relay sees cannot be
	// replayed on another session or at another relay.
	PublicKey ed25519.PublicKey
	// CertSHA256 is the SHA-256 of the agent's TLS client certificate's
	// SubjectPublicKeyInfo (see PinSHA256) or of the whole certificate
	// (DER); either matches.
	CertSHA256 [32]byte
}

// kind is the credential's kind, or an error if it sets more than one.
func (c *AgentCredential) kind() (string, error) {
	var kinds []string
	if c.PublicKey != nil {
		kinds = append(kinds, AuthEd25519)
	}
	if c.CertSHA256 != ([32]byte{}) {
		kinds = append(kinds, AuthCertificate)
	}
	if c.TokenSHA256 != ([32]byte{}) {
		kinds = append(kinds, AuthToken)
	}
	switch len(kinds) {
	case 0:
		return AuthToken, nil // a zero token hash: matches no token anyone has
	case 1:
		if kinds[0] == AuthEd25519 && len(c.PublicKey) != ed25519.PublicKeySize {
			return "", fmt.Errorf("public key of %d bytes, want %d", len(c.PublicKey), ed25519.PublicKeySize)
		}
		return kinds[0], nil
	}
	return "", fmt.Errorf("credential sets %s: one per entry", strings.Join(kinds, " and "))
}

// ReplicaTag names the replica of an agent that authenticates with the
// token whose SHA-256 is tokenSHA256 (for a key or certificate the relay
// passes a hash of it instead, see keyCredID and certCredID): 8 hex digits, the same at every
// relay given the same credential, and telling nothing of the token (it
// is a hash of its hash). The relay puts it in front of the session ids
// it passes on, so that a session-era request goes
// back to the replica holding its session.
func ReplicaTag(tokenSHA256 [32]byte) string {
	h := sha256.New()
	h.Write([]byte("mcptun replica tag\x00"))
	h.Write(tokenSHA256[:])
	return hex.EncodeToString(h.Sum(nil))[:replicaTagLen]
}

const replicaTagLen = 8

// replicaCred is one credential of an agent.
type replicaCred struct {
	kind string   // AuthToken, AuthEd25519, AuthCertificate
	sum  [32]byte // token: its SHA-256; certificate: the listed hash
	pub  ed25519.PublicKey
	id   [32]byte // what ReplicaTag is made of, unique per credential
	tag  string
}

// ServerConfig configures the relay end of the tunnel.
type ServerConfig struct {
	// Listen is the host:port for both QUIC (UDP) and TLS (TCP). Port 0
	// picks a port that is free for both.
	Listen string
	// TLSConfig holds the relay certificate. Listen uses copies with the
	// tunnel's ALPN and TLS 1.3 as the minimum.
	TLSConfig *tls.Config
	Agents    []AgentCredential
	// DisableQUIC and DisableTCP turn one transport off.
	DisableQUIC, DisableTCP bool
	Logger                  *slog.Logger
	// OnAgentChange, if set, is called with up=true whenever a session
	// becomes the agent's current one (also when it replaces an older
	// session) and with up=false when the current session ends. Calls are
	// serialised and in order; the callback may call Agent, Agents and Dial
	// but not Close, and should return quickly.
	OnAgentChange func(name string, up bool)
	// HandshakeTimeout bounds TLS, mux setup, hello and answer together;
	// default DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// AuthGuard throttles and logs refused handshakes per source address
	// (nil: one with authguard's defaults, logging to Logger).
	AuthGuard *authguard.Guard
	// Fleet tells agents, in the welcome, that this relay is one of a
	// fleet whose relays forward to each other (see MultiConfig.Connections).
	Fleet bool
}

// AgentStatus describes a connected agent. With several replicas
// connected, Servers, Transport, Remote and ConnectedAt are those of the
// replica connected longest, Draining is set only when every replica
// drains, and Replicas lists each.
type AgentStatus struct {
	Name        string          `json:"name"`
	Servers     []OfferedServer `json:"servers"`
	Transport   string          `json:"transport"`
	Remote      string          `json:"remote"`
	ConnectedAt time.Time       `json:"connected_at"`
	// Draining: the agent said it is shutting down (see Server.Draining).
	Draining bool            `json:"draining"`
	Replicas []ReplicaStatus `json:"replicas"`
	// Software is the agent's build, as its hello said ("" if it did not).
	Software string `json:"software,omitempty"`
}

// ReplicaStatus describes one connected replica of an agent: one agent
// process, known by its credential.
type ReplicaStatus struct {
	// Tag is ReplicaTag of the replica's credential.
	Tag         string          `json:"tag"`
	Servers     []OfferedServer `json:"servers"`
	Transport   string          `json:"transport"`
	Remote      string          `json:"remote"`
	ConnectedAt time.Time       `json:"connected_at"`
	// Draining: the replica said it is shutting down; it gets no new
	// sessions or stateless requests, only those of its sessions.
	Draining bool `json:"draining"`
	// Auth is how the replica proved its identity: AuthToken, AuthEd25519
	// or AuthCertificate.
	Auth string `json:"auth"`

	Software string `json:"software,omitempty"` // as in AgentStatus
	// Connections is how many sessions the replica has to this relay
	// (several when its tunnels through a load balancer land here).
	Connections int `json:"connections"`
}

func (a *agentSession) replicaStatus() ReplicaStatus {
	return ReplicaStatus{Tag: a.tag, Servers: slices.Clone(a.status.Servers), Transport: a.status.Transport,
		Remote: a.status.Remote, ConnectedAt: a.status.ConnectedAt, Draining: a.draining.Load(), Auth: a.auth, Software: a.status.Software}
}

// Server is the relay end: it accepts agent sessions and opens streams to
// them.
type Server struct {
	log *slog.Logger
	// creds is replaced whole by SetAgents (a config reload); a handshake
	// reads it without a lock.
	creds     atomic.Pointer[map[string][]replicaCred]
	dummy     [32]byte // compared against for unknown names
	id        string   // random instance id, sent in the welcome
	fleet     bool     // sent in the welcome
	hsTimeout time.Duration
	onChange  func(string, bool)
	tcpTLS    *tls.Config
	tlsCfg    *tls.Config  // the certificate, for the pins Ed25519 agents sign
	clientURL atomic.Value // string; see SetClientURL

	tcpLn   net.Listener
	udpConn net.PacketConn
	qtr     *quic.Transport
	qln     *quic.Listener
	addr    string

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	slots     chan struct{}
	closeOnce sync.Once
	drops     logging.Every // the "dropping connections" log line
	draining  atomic.Bool   // Drain was called
	guard     *authguard.Guard

	notifyMu sync.Mutex // serialises registry changes with their callbacks
	mu       sync.Mutex
	agents   map[string]*agentReplicas
	// drained names the agents whose last session, now ended, had said
	// the agent drains: a failure seen late still reads as its shutdown.
	drained map[string]bool
	conns   map[io.Closer]struct{} // every connection still open, so Close can end it
	closing bool
}

// agentReplicas are the connected replicas of one agent name, by tag.
type agentReplicas struct {
	byTag map[string]*replica
	next  uint // round robin over the replicas for new work
}

// replica is one agent process (one credential) and its sessions to this
// relay: one, or several when the agent opens relay.connections tunnels
// through a load balancer and more than one lands here. The sessions are
// a pool: streams go to each in turn.
type replica struct {
	conns []*agentSession // in the order they connected
	next  uint
}

// live reports whether a session of the replica is up.
func (p *replica) live() bool {
	for _, a := range p.conns {
		if a.live() {
			return true
		}
	}
	return false
}

// draining reports whether the replica said it is shutting down: one
// process, so one session saying it is enough.
func (p *replica) draining() bool {
	for _, a := range p.conns {
		if a.draining.Load() {
			return true
		}
	}
	return false
}

// offers reports whether a live session of the replica offers server.
func (p *replica) offers(server string) bool {
	for _, a := range p.conns {
		if a.live() && a.offers(server) {
			return true
		}
	}
	return false
}

// pick returns the replica's next live session not in tried, in turn.
func (p *replica) pick(tried []*agentSession) *agentSession {
	n := uint(len(p.conns))
	for i := range n {
		a := p.conns[(p.next+i)%n]
		if a.live() && !slices.Contains(tried, a) {
			p.next++
			return a
		}
	}
	return nil
}

type agentSession struct {
	tag          string // ReplicaTag of the credential it authenticated with
	auth         string // the credential's kind
	instance     string // the agent process's id from the hello ("" from older agents)
	conn         int    // the tunnel's number within that process
	status       AgentStatus
	sess         Session
	ctl          Stream
	replaced     chan struct{}
	replacedOnce sync.Once
	draining     atomic.Bool // the agent sent "draining"
	ctlMu        sync.Mutex  // serialises the relay's frames after the welcome
	toldDraining sync.Once   // the relay's goaway "draining" went out

	// Streams opened by Dial and not yet closed, so that a replaced
	// session can finish its exchanges before it ends.
	mu        sync.Mutex
	open      int
	retiring  bool          // no more streams: Dial must look again
	streamEnd chan struct{} // a token each time a stream closes while draining
	closeHook func()        // streamClosed, bound once
}

func (a *agentSession) markReplaced() { a.replacedOnce.Do(func() { close(a.replaced) }) }

// startStream counts a stream about to be opened; false means the session
// is draining and takes no new streams.
func (a *agentSession) startStream() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.retiring {
		return false
	}
	a.open++
	return true
}

func (a *agentSession) streamClosed() {
	a.mu.Lock()
	a.open--
	draining := a.retiring
	a.mu.Unlock()
	if draining {
		select {
		case a.streamEnd <- struct{}{}:
		default: // a wake-up is already pending; the waiter re-reads open
		}
	}
}

// drain stops new streams and waits until the open ones are closed, the
// session ends or grace passes; it reports how many were still open.
func (a *agentSession) drain(ctx context.Context, grace time.Duration) int {
	a.mu.Lock()
	a.retiring = true
	a.mu.Unlock()
	t := time.NewTimer(grace)
	defer t.Stop()
	for {
		a.mu.Lock()
		open := a.open
		a.mu.Unlock()
		if open <= 0 {
			return 0
		}
		select {
		case <-a.streamEnd:
		case <-a.sess.Done():
			return 0
		case <-ctx.Done():
			return open
		case <-t.C:
			return open
		}
	}
}

// Listen binds the relay's UDP and TCP sockets and serves agents in
// goroutines owned by the Server until ctx ends or Close is called. Close
// must be called in either case to release the sockets and wait for the
// goroutines.
func Listen(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if cfg.Listen == "" {
		return nil, errors.New("tunnel: listen: no address")
	}
	if cfg.TLSConfig == nil || (len(cfg.TLSConfig.Certificates) == 0 && cfg.TLSConfig.GetCertificate == nil && cfg.TLSConfig.GetConfigForClient == nil) {
		return nil, errors.New("tunnel: listen: TLSConfig with a certificate is required")
	}
	if cfg.DisableQUIC && cfg.DisableTCP {
		return nil, errors.New("tunnel: listen: both QUIC and TCP are disabled")
	}
	creds, err := buildCreds(cfg.Agents)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen: %w", err)
	}
	// Agents with a certificate send it in the TLS handshake; the relay
	// asks every agent for one but requires none (tokens and keys are
	// checked in the hello), and checks it against its list, not a CA.
	tlsCfg := cfg.TLSConfig.Clone()
	if tlsCfg.ClientAuth == tls.NoClientCert {
		tlsCfg.ClientAuth = tls.RequestClientCert
	}
	s := &Server{
		log:       cfg.Logger,
		hsTimeout: cfg.HandshakeTimeout,
		onChange:  cfg.OnAgentChange,
		tcpTLS:    withALPN(tlsCfg, ALPN, alpnHTTP1), // http/1.1: see answerWrongPort
		tlsCfg:    tlsCfg,
		slots:     make(chan struct{}, maxPendingHandshakes),
		agents:    make(map[string]*agentReplicas),
		drained:   make(map[string]bool),
		conns:     make(map[io.Closer]struct{}),
		guard:     cfg.AuthGuard,
		fleet:     cfg.Fleet,
	}
	s.creds.Store(&creds)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.guard == nil {
		s.guard = authguard.New(authguard.Config{What: "agent handshake", Logger: s.log})
	}
	if s.hsTimeout <= 0 {
		s.hsTimeout = DefaultHandshakeTimeout
	}
	if _, err := rand.Read(s.dummy[:]); err != nil {
		return nil, fmt.Errorf("tunnel: listen: %w", err)
	}
	resetKey, stableKey, err := relayResetKey(cfg.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("tunnel: listen: %w", err)
	}
	if !stableKey && !cfg.DisableQUIC {
		s.log.Warn("tunnel: no TLS private key to derive the QUIC stateless reset key from; agents will notice a restarted relay only at their idle timeout")
	}
	var id [8]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("tunnel: listen: %w", err)
	}
	s.id = fmt.Sprintf("%x", id)

	tcpLn, udpConn, err := bind(cfg.Listen, !cfg.DisableTCP, !cfg.DisableQUIC)
	if err != nil {
		return nil, err
	}
	s.tcpLn, s.udpConn = tcpLn, udpConn
	if udpConn != nil {
		s.addr = udpConn.LocalAddr().String()
		// With the reset key derived from the TLS key, a restarted relay
		// answers packets for connections it no longer knows with a
		// stateless reset, and agents reconnect at once.
		s.qtr = &quic.Transport{Conn: udpConn, StatelessResetKey: resetKey}
		qc := quicConfig()
		// A throttled source is refused at its first packet, before the
		// handshake it would cost. (Only a completed handshake counts as
		// a failure, so a spoofed address cannot get a victim throttled.)
		// Not counted in the guard's Throttled: the client sends its
		// Initial again, and each comes here.
		qc.GetConfigForClient = func(info *quic.ClientInfo) (*quic.Config, error) {
			if _, ok := s.guard.Check(authguard.AddrOf(info.RemoteAddr)); !ok {
				return nil, errThrottled
			}
			return qc, nil
		}
		s.qln, err = s.qtr.Listen(withALPN(tlsCfg, ALPN, alpnQUICYamux), qc)
		if err != nil {
			s.qtr.Close()
			udpConn.Close()
			if tcpLn != nil {
				tcpLn.Close()
			}
			return nil, fmt.Errorf("tunnel: listen quic %s: %w", cfg.Listen, err)
		}
	}
	if tcpLn != nil {
		s.addr = tcpLn.Addr().String()
	}

	s.ctx, s.cancel = context.WithCancel(ctx)
	s.wg.Go(s.closeOnDone)
	if s.tcpLn != nil {
		s.wg.Go(s.acceptTCP)
	}
	if s.qln != nil {
		s.wg.Go(s.acceptQUIC)
	}
	s.log.Info("tunnel: relay listening", "addr", s.addr, "quic", s.qln != nil, "tcp", s.tcpLn != nil, "agents", len(creds))
	return s, nil
}

// buildCreds indexes the credentials by agent name, each with its replica
// tag, refusing entries that are invalid or repeat a credential.
func buildCreds(agents []AgentCredential) (map[string][]replicaCred, error) {
	creds := make(map[string][]replicaCred, len(agents))
	for i, a := range agents {
		if !ValidName(a.Name) {
			return nil, fmt.Errorf("agents[%d]: invalid agent name %q", i, a.Name)
		}
		kind, err := a.kind()
		if err != nil {
			return nil, fmt.Errorf("agents[%d] (%s): %w", i, a.Name, err)
		}
		rc := replicaCred{kind: kind}
		switch kind {
		case AuthToken:
			rc.sum, rc.id = a.TokenSHA256, a.TokenSHA256
		case AuthEd25519:
			rc.pub, rc.id = slices.Clone(a.PublicKey), keyCredID(a.PublicKey)
		case AuthCertificate:
			rc.sum, rc.id = a.CertSHA256, certCredID(a.CertSHA256)
		}
		// A token's tag is as it was before keys existed, so replicas
		// keep their tags (and clients their sessions) across an upgrade.
		rc.tag = ReplicaTag(rc.id)
		for _, c := range creds[a.Name] {
			if c.id == rc.id {
				return nil, fmt.Errorf("agents[%d]: agent %q listed twice with one %s (replicas need a credential each)", i, a.Name, kind)
			}
			if c.tag == rc.tag { // a 1 in 2^32 chance
				return nil, fmt.Errorf("agents[%d]: two credentials of agent %q share replica tag %s; make a new one", i, a.Name, rc.tag)
			}
		}
		creds[a.Name] = append(creds[a.Name], rc)
	}
	return creds, nil
}

// bind listens on TCP and UDP at addr. With port 0 it retries until one
// port is free for both, since the kernel picks ports per protocol.
func bind(addr string, tcp, udp bool) (net.Listener, net.PacketConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: listen %q: %w", addr, err)
	}
	tries := 1
	if port == "0" && tcp && udp {
		tries = 20
	}
	var lastErr error
	for range tries {
		var ln net.Listener
		udpAddr := addr
		if tcp {
			ln, err = net.Listen("tcp", addr)
			if err != nil {
				return nil, nil, fmt.Errorf("tunnel: listen tcp %s: %w", addr, err)
			}
			if !udp {
				return ln, nil, nil
			}
			_, p, _ := net.SplitHostPort(ln.Addr().String())
			udpAddr = net.JoinHostPort(host, p)
		}
		pc, err := net.ListenPacket("udp", udpAddr)
		if err != nil {
			if ln != nil {
				ln.Close()
			}
			lastErr = fmt.Errorf("tunnel: listen udp %s: %w", udpAddr, err)
			if tcp && errors.Is(err, syscall.EADDRINUSE) {
				continue
			}
			return nil, nil, lastErr
		}
		return ln, pc, nil
	}
	return nil, nil, lastErr
}

// ID is the relay process's random instance id (sent in every welcome).
func (s *Server) ID() string { return s.id }

// Addr is the address the relay listens on, with the actual port.
func (s *Server) Addr() string { return s.addr }

// Close stops the listeners, ends every session and waits for the Server's
// goroutines.
func (s *Server) Close() error {
	s.cancel()
	s.wg.Wait()
	var err error
	s.closeOnce.Do(func() {
		// Only now: closing the transport earlier would drop the
		// CONNECTION_CLOSE frames the sessions sent on their way out.
		if s.qtr != nil {
			err = s.qtr.Close()
		}
		if s.udpConn != nil {
			if cerr := s.udpConn.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
				err = cerr
			}
		}
	})
	return err
}

// closeOnDone stops accepting and closes every connection once the server's
// context ends.
func (s *Server) closeOnDone() {
	<-s.ctx.Done()
	s.mu.Lock()
	s.closing = true
	conns := make([]io.Closer, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	if s.qln != nil {
		s.qln.Close()
	}
	for _, c := range conns {
		c.Close()
	}
}

// track registers c for closing at shutdown; false means the server is
// already closing and c must be closed now.
func (s *Server) track(c io.Closer) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c io.Closer) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

var errThrottled = errors.New("tunnel: too many refused handshakes from this address")

// admitSource reports whether src may try a handshake now (see
// authguard), counting it if not.
func (s *Server) admitSource(src netip.Addr) bool {
	if _, ok := s.guard.Check(src); ok {
		return true
	}
	s.guard.Refused(src)
	return false
}

// takeSlot reserves a handshake slot; the returned release is idempotent.
func (s *Server) takeSlot(remote net.Addr) (release func(), ok bool) {
	select {
	case s.slots <- struct{}{}:
		return sync.OnceFunc(func() { <-s.slots }), true
	default:
	}
	// Under a flood this would log per connection; once a minute is enough.
	if s.drops.Allow(time.Minute) {
		s.log.Warn("tunnel: too many unauthenticated connections; dropping new ones", "limit", maxPendingHandshakes, "remote", remote)
	}
	return nil, false
}

func (s *Server) acceptTCP() {
	for {
		c, err := s.tcpLn.Accept()
		if err != nil {
			if s.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			// Probably out of file descriptors: pause instead of spinning.
			s.log.Warn("tunnel: accept tcp", "err", err)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		// A source refused too often is dropped before TLS: a guess
		// costs it a connection, not the relay a handshake.
		if src := authguard.AddrOf(c.RemoteAddr()); !s.admitSource(src) {
			c.Close()
			continue
		}
		release, ok := s.takeSlot(c.RemoteAddr())
		if !ok {
			c.Close()
			continue
		}
		s.wg.Go(func() { s.serveTCP(c, release) })
	}
}

func (s *Server) acceptQUIC() {
	for {
		conn, err := s.qln.Accept(s.ctx)
		if err != nil {
			if s.ctx.Err() == nil && !isClosedErr(err) {
				s.log.Error("tunnel: accept quic", "err", err)
			}
			return
		}
		if src := authguard.AddrOf(conn.RemoteAddr()); !s.admitSource(src) {
			conn.CloseWithError(quic.ApplicationErrorCode(quic.ConnectionRefused), "too many refused handshakes from this address; retry later")
			continue
		}
		release, ok := s.takeSlot(conn.RemoteAddr())
		if !ok {
			conn.CloseWithError(quic.ApplicationErrorCode(quic.ConnectionRefused), "relay busy")
			continue
		}
		s.wg.Go(func() { s.serveQUIC(conn, release) })
	}
}

func (s *Server) serveTCP(c net.Conn, release func()) {
	defer release()
	if !s.track(c) {
		c.Close()
		return
	}
	defer s.untrack(c)
	hctx, cancel := context.WithTimeout(s.ctx, s.hsTimeout)
	defer cancel()
	tc := tls.Server(c, s.tcpTLS)
	if err := tc.HandshakeContext(hctx); err != nil {
		var rh tls.RecordHeaderError
		if errors.As(err, &rh) && rh.Conn != nil && looksLikeHTTP(rh.RecordHeader[:]) {
			s.answerWrongPort(hctx, c, false)
			return
		}
		s.log.Debug("tunnel: tls handshake failed", "remote", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	if tc.ConnectionState().NegotiatedProtocol == alpnHTTP1 {
		s.answerWrongPort(hctx, tc, true)
		return
	}
	ys, err := newYamux(tc, false, TransportTCPYamux, s.log)
	if err != nil {
		s.log.Error("tunnel: yamux server", "err", err)
		c.Close()
		return
	}
	s.serveSession(hctx, ys, release)
}

func (s *Server) serveQUIC(conn *quic.Conn, release func()) {
	defer release()
	closer := &quicSession{conn: conn}
	if !s.track(closer) {
		closer.Close()
		return
	}
	defer s.untrack(closer)
	hctx, cancel := context.WithTimeout(s.ctx, s.hsTimeout)
	defer cancel()
	switch proto := conn.ConnectionState().TLS.NegotiatedProtocol; proto {
	case ALPN:
		s.serveSession(hctx, closer, release)
	case alpnQUICYamux:
		st, err := conn.AcceptStream(hctx)
		if err != nil {
			s.log.Debug("tunnel: no yamux stream", "remote", conn.RemoteAddr(), "err", err)
			closer.Close()
			return
		}
		ys, err := newYamux(newQUICStream(st, conn), false, TransportQUICYamux, s.log)
		if err != nil {
			s.log.Error("tunnel: yamux server", "err", err)
			closer.Close()
			return
		}
		ys.quic = conn
		s.serveSession(hctx, ys, release)
	default:
		// crypto/tls only negotiates what we offered; this is a bug guard.
		s.log.Error("tunnel: unexpected ALPN", "alpn", proto, "remote", conn.RemoteAddr())
		closer.Close()
	}
}

// serveSession runs the handshake on a new session and, once the agent is
// authenticated, keeps the session registered until it ends.
func (s *Server) serveSession(hctx context.Context, sess Session, release func()) {
	defer sess.Close()
	remote := sess.RemoteAddr().String()
	ctl, err := sess.AcceptStream(hctx)
	if err != nil {
		s.log.Debug("tunnel: handshake: no control stream", "remote", remote, "transport", sess.Transport(), "err", err)
		return
	}
	if dl, ok := hctx.Deadline(); ok {
		ctl.SetDeadline(dl)
	}
	h, tag, ref, reason, err := s.readHello(ctl, sess)
	if err != nil {
		// The peer went away or stayed silent: nobody to answer.
		s.log.Debug("tunnel: handshake failed", "remote", remote, "transport", sess.Transport(), "err", err)
		return
	}
	if ref != nil {
		// Per attempt at debug only: the guard's line (one per source per
		// interval, with a count) is the one that cannot flood the log.
		s.log.Debug("tunnel: refused agent", "agent", truncate(h.Agent, 64), "remote", remote,
			"transport", sess.Transport(), "code", ref.Code, "reason", reason)
		s.guard.Failed(authguard.AddrOf(sess.RemoteAddr()), "claimed", truncate(h.Agent, 64), "refusal", ref.Code)
		s.refuse(sess, ctl, ref)
		return
	}
	release()
	a := &agentSession{
		tag:      tag,
		auth:     h.authKind(),
		instance: h.Instance,
		conn:     h.Conn,
		status: AgentStatus{
			Name:        h.Agent,
			Servers:     h.Servers,
			Transport:   sess.Transport(),
			Remote:      remote,
			ConnectedAt: time.Now(),
			Software:    h.Software,
		},
		sess:      sess,
		ctl:       ctl,
		replaced:  make(chan struct{}),
		streamEnd: make(chan struct{}, 1),
	}
	a.closeHook = a.streamClosed
	// Register before the welcome: once the agent believes it is
	// connected, Dial must find it. The control stream is held from
	// before the agent can be found until the welcome is out, so a
	// Drain that finds it at once (tellDraining) writes its goaway after
	// the welcome, never in its place.
	a.ctlMu.Lock()
	s.register(a)
	clientURL, _ := s.clientURL.Load().(string)
	err = writeFrame(ctl, answer{Type: typeWelcome, Version: ProtocolVersion, Relay: s.id, ClientURL: clientURL, Fleet: s.fleet})
	a.ctlMu.Unlock()
	if err != nil {
		s.log.Debug("tunnel: handshake: send welcome", "agent", h.Agent, "remote", remote, "err", err)
		s.deregister(a)
		return
	}
	ctl.SetDeadline(time.Time{})
	s.wg.Go(func() { s.refuseStreams(a) })
	s.wg.Go(func() { s.watchControl(a) })
	if s.draining.Load() {
		// Welcomed while Drain looked at the registry: tell it here.
		s.tellDraining(a)
	}

	why := "session ended"
	select {
	case <-sess.Done():
	case <-s.ctx.Done():
		why = "relay closing"
	case <-a.replaced:
		why = "replaced"
		// New exchanges already go to the newer session; those in flight
		// here finish first (an agent moving back to QUIC replaces its own
		// TCP session this way).
		if left := a.drain(s.ctx, replaceGrace); left > 0 {
			s.log.Warn("tunnel: replaced session still had streams open; closing them", "agent", h.Agent,
				"remote", remote, "streams", left, "grace", replaceGrace)
		}
		s.goAway(a, answer{Type: typeGoAway, Code: codeReplaced, Message: "another session authenticated as " + h.Agent + " with this token"})
	}
	s.deregister(a)
	attrs := []any{"agent", h.Agent, "replica", tag, "remote", remote, "transport", sess.Transport(),
		"reason", why, "duration", time.Since(a.status.ConnectedAt).Round(time.Millisecond)}
	if err := endCause(sess); err != nil {
		attrs = append(attrs, "cause", err)
	}
	s.log.Info("tunnel: agent disconnected", attrs...)
}

// endCause says why a session the transport ended has ended (idle timeout,
// stateless reset, the peer's close), or nil while it is up or when this
// side closed it.
func endCause(sess Session) error {
	var err error
	switch sess := sess.(type) {
	case *quicSession:
		err = context.Cause(sess.conn.Context())
	case *yamuxSession:
		err = sess.endCause()
		if err == nil && sess.quic != nil {
			err = context.Cause(sess.quic.Context())
		}
	}
	// Not isClosedErr: quic-go's idle timeout and stateless reset errors
	// unwrap to net.ErrClosed, and those are the causes worth logging.
	var app *quic.ApplicationError
	switch {
	case err == nil, errors.Is(err, context.Canceled):
		return nil
	case errors.As(err, &app) && app.ErrorCode == 0 && !app.Remote:
		return nil // this side closed it
	}
	return err
}

// readHello reads and checks the hello, and names the replica whose
// credential it carries. A non-nil *RefusedError is to be sent back, and
// reason is then the precise cause for the relay's log. err means no
// usable frame arrived, so there is no one to answer.
func (s *Server) readHello(ctl Stream, sess Session) (h hello, tag string, ref *RefusedError, reason string, err error) {
	b, err := readFrame(ctl)
	if err != nil {
		if errors.Is(err, errBadFrame) {
			return hello{}, "", &RefusedError{Code: CodeBadHello, Message: err.Error()}, err.Error(), nil
		}
		return hello{}, "", nil, "", err
	}
	h, err = decodeHello(b)
	if err != nil {
		if !errors.As(err, &ref) {
			ref = &RefusedError{Code: CodeBadHello, Message: err.Error()}
		}
		return h, "", ref, ref.Message, nil
	}
	creds, known := (*s.creds.Load())[h.Agent]
	var msg string
	switch h.authKind() {
	case AuthEd25519:
		tag, msg, reason = s.checkKey(&h, creds, sess)
	case AuthCertificate:
		tag, msg, reason = s.checkCert(creds, sess)
	default:
		tag, msg, reason = s.checkToken(&h, creds, known)
	}
	if tag == "" {
		if !known {
			reason = "unknown agent"
		}
		return h, "", &RefusedError{Code: CodeBadCredential, Message: msg}, reason, nil
	}
	return h, tag, nil, "", nil
}

// checkToken finds the replica whose token the hello carries. It hashes
// and compares even for an unknown name, so timing does not tell known
// names from unknown ones, and compares with every token of the name, so
// it does not tell which replica matched either.
func (s *Server) checkToken(h *hello, creds []replicaCred, known bool) (tag, msg, reason string) {
	sum := sha256.Sum256([]byte(h.Token))
	if !known {
		creds = []replicaCred{{kind: AuthToken, sum: s.dummy}}
	}
	for _, c := range creds {
		if c.kind == AuthToken && subtle.ConstantTimeCompare(sum[:], c.sum[:]) == 1 {
			tag = c.tag
		}
	}
	return tag, "unknown agent or wrong token", "bad token"
}

// checkKey verifies the hello's signature of this session (see
// authTranscript) before it looks the key up, so the work does not depend
// on whether the name is known.
func (s *Server) checkKey(h *hello, creds []replicaCred, sess Session) (tag, msg, reason string) {
	st, ok := sessionTLS(sess)
	if !ok {
		return "", "relay cannot bind a signature to this session", "no TLS state"
	}
	ekm, err := sessionBinding(st)
	if err != nil {
		return "", "relay cannot bind a signature to this session", err.Error()
	}
	pub := ed25519.PublicKey(h.PublicKey)
	verified := false
	for _, pin := range relayPins(s.tlsCfg, st) {
		if ed25519.Verify(pub, authTranscript(ekm, h.Agent, pin, pub), h.Signature) {
			verified = true
			break
		}
	}
	if !verified {
		// A signature made on another TLS session (a recorded or relayed
		// hello) or for another relay certificate lands here.
		return "", "signature does not verify for this TLS session and relay certificate", "bad signature"
	}
	for _, c := range creds {
		if c.kind == AuthEd25519 && subtle.ConstantTimeCompare(pub, c.pub) == 1 {
			tag = c.tag
		}
	}
	return tag, "unknown agent or key not listed", "key not listed"
}

// checkCert matches the session's client certificate, whose key the TLS
// handshake has proved the agent holds, against the name's list.
func (s *Server) checkCert(creds []replicaCred, sess Session) (tag, msg, reason string) {
	st, ok := sessionTLS(sess)
	if !ok || len(st.PeerCertificates) == 0 {
		return "", "auth certificate without a TLS client certificate", "no client certificate"
	}
	leaf := st.PeerCertificates[0]
	if err := checkCertValidity(leaf, time.Now()); err != nil {
		return "", err.Error(), err.Error()
	}
	spki, whole := certSums(leaf)
	for _, c := range creds {
		if c.kind != AuthCertificate {
			continue
		}
		if subtle.ConstantTimeCompare(spki[:], c.sum[:])|subtle.ConstantTimeCompare(whole[:], c.sum[:]) == 1 {
			tag = c.tag
		}
	}
	return tag, "unknown agent or certificate not listed", "certificate not listed"
}

// refuse sends the refusal and gives the agent a moment to read it and hang
// up.
func (s *Server) refuse(sess Session, ctl Stream, ref *RefusedError) {
	if err := writeFrame(ctl, answer{Type: typeRefused, Code: ref.Code, Message: ref.Message}); err != nil {
		return
	}
	ctl.CloseWrite()
	s.linger(sess)
}

func (s *Server) goAway(a *agentSession, msg answer) {
	a.ctlMu.Lock()
	a.ctl.SetWriteDeadline(time.Now().Add(lingerTimeout))
	err := writeFrame(a.ctl, msg)
	a.ctlMu.Unlock()
	if err != nil {
		return
	}
	a.ctl.CloseWrite()
	s.linger(a.sess)
}

func (s *Server) linger(sess Session) {
	t := time.NewTimer(lingerTimeout)
	defer t.Stop()
	select {
	case <-sess.Done():
	case <-s.ctx.Done():
	case <-t.C:
	}
}

// watchControl ends the session when the control stream ends, notes an
// agent that says it drains and applies an agent's new offers. Other frames are ignored: the agent's
// heartbeat pings need no answer (they keep packets flowing, see
// heartbeatInterval), and unknown types leave room for later revisions.
func (s *Server) watchControl(a *agentSession) {
	for {
		b, err := readFrame(a.ctl)
		if err != nil {
			if !isClosedErr(err) && !errors.Is(err, io.EOF) {
				s.log.Debug("tunnel: control stream ended", "agent", a.status.Name, "err", err)
			}
			a.sess.Close()
			return
		}
		f, err := decodeAnswer(b)
		switch {
		case err != nil:
		case f.Type == typeDraining:
			if !a.draining.Swap(true) {
				s.log.Info("tunnel: agent draining: routing it no new exchanges", "agent", a.status.Name, "replica", a.tag, "remote", a.status.Remote)
			}
		case f.Type == typeOffers:
			s.updateOffers(a, b)
		}
	}
}

// Drain prepares the relay's shutdown: it stops accepting agent
// connections and tells every connected agent, with goaway "draining",
// that the relay opens it no new streams and will close the session. The
// sessions stay up, so the exchanges in flight on them can finish, until
// Close. An agent that would connect now has to wait for the relay's
// replacement; a session that completes its handshake meanwhile is told
// at once.
func (s *Server) Drain() {
	if s.draining.Swap(true) {
		return
	}
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	if s.qln != nil {
		// Established connections are unaffected; handshakes in
		// progress are refused.
		s.qln.Close()
	}
	s.mu.Lock()
	agents := make([]*agentSession, 0, len(s.agents))
	for _, r := range s.agents {
		for _, p := range r.byTag {
			agents = append(agents, p.conns...)
		}
	}
	s.mu.Unlock()
	for _, a := range agents {
		// In parallel: an agent that does not read its control stream
		// must not delay the others' notice.
		s.wg.Go(func() { s.tellDraining(a) })
	}
	s.log.Info("tunnel: draining: told agents, accepting no new ones", "agents", len(agents))
}

// tellDraining sends goaway "draining" once. The control stream stays open
// for the agent's own "draining" frame and the session's end.
func (s *Server) tellDraining(a *agentSession) {
	a.toldDraining.Do(func() {
		a.ctlMu.Lock()
		defer a.ctlMu.Unlock()
		a.ctl.SetWriteDeadline(time.Now().Add(lingerTimeout))
		defer a.ctl.SetWriteDeadline(time.Time{})
		if err := writeFrame(a.ctl, answer{Type: typeGoAway, Code: codeDraining,
			Message: "the relay is shutting down; connect again"}); err != nil {
			s.log.Debug("tunnel: cannot tell agent the relay drains", "agent", a.status.Name, "err", err)
		}
	})
}

// Draining reports whether Drain was called.
func (s *Server) Draining() bool { return s.draining.Load() }

// AgentDraining reports whether the named agent said it is shutting down:
// every replica it has connected did (they finish the exchanges they have
// and must get no new ones), or, with none now, the last one to go did.
func (s *Server) AgentDraining(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if r := s.agents[name]; r != nil {
		for _, p := range r.byTag {
			if !p.draining() {
				return false
			}
		}
		return true
	}
	return s.drained[name]
}

// refuseStreams resets streams the agent opens: the relay only ever opens
// streams itself, and unaccepted streams would pile up.
func (s *Server) refuseStreams(a *agentSession) {
	for {
		st, err := a.sess.AcceptStream(s.ctx)
		if err != nil {
			return
		}
		s.log.Debug("tunnel: refusing stream opened by agent", "agent", a.status.Name)
		st.Close()
	}
}

func (s *Server) register(a *agentSession) {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	name := a.status.Name
	s.mu.Lock()
	r := s.agents[name]
	if r == nil {
		r = &agentReplicas{byTag: make(map[string]*replica)}
		s.agents[name] = r
	}
	// Only a session with the same credential is replaced: another one
	// is another replica, and serves beside it. Of that credential's
	// sessions, the same agent process's other tunnels (same instance,
	// another conn) stay: they are its pool here.
	p := r.byTag[a.tag]
	if p == nil {
		p = &replica{}
		r.byTag[a.tag] = p
	}
	var olds []*agentSession
	keep := make([]*agentSession, 0, len(p.conns)+1)
	for _, o := range p.conns {
		if a.instance != "" && o.instance == a.instance && o.conn != a.conn {
			keep = append(keep, o)
		} else {
			olds = append(olds, o)
		}
	}
	p.conns = append(keep, a)
	replicas := len(r.byTag)
	delete(s.drained, name)
	s.mu.Unlock()
	for _, old := range olds {
		// From the same host this is the agent itself: a reconnect the
		// relay had not noticed yet, or a move back to QUIC. From another
		// host, two agent processes probably share a token.
		level := slog.LevelWarn
		if sameHost(old.status.Remote, a.status.Remote) {
			level = slog.LevelInfo
		}
		s.log.Log(s.ctx, level, "tunnel: agent session replaced by a newer one", "agent", name, "replica", a.tag,
			"old_remote", old.status.Remote, "old_transport", old.status.Transport,
			"new_remote", a.status.Remote, "new_transport", a.status.Transport)
		old.markReplaced()
	}
	servers := make([]string, len(a.status.Servers))
	for i, sv := range a.status.Servers {
		servers[i] = sv.Name
	}
	s.log.Info("tunnel: agent connected", "agent", name, "replica", a.tag, "replicas", replicas, "auth", a.auth, "remote", a.status.Remote,
		"transport", a.status.Transport, "servers", strings.Join(servers, ","))
	if s.onChange != nil {
		s.onChange(name, true)
	}
}

// deregister removes a, if it is still its replica's current session.
// OnAgentChange hears of it, up while other replicas remain.
func (s *Server) deregister(a *agentSession) {
	s.notifyMu.Lock()
	defer s.notifyMu.Unlock()
	name := a.status.Name
	s.mu.Lock()
	r := s.agents[name]
	current := false
	var p *replica
	if r != nil {
		p = r.byTag[a.tag]
	}
	if p != nil {
		if i := slices.Index(p.conns, a); i >= 0 {
			current = true
			p.conns = slices.Delete(p.conns, i, i+1)
		}
	}
	up := false
	if current {
		if len(p.conns) == 0 {
			delete(r.byTag, a.tag)
		}
		up = len(r.byTag) > 0
		if !up {
			delete(s.agents, name)
			if a.draining.Load() {
				s.drained[name] = true
			}
		}
	}
	s.mu.Unlock()
	if current && s.onChange != nil {
		s.onChange(name, up)
	}
}

// Route is where Server.Route sends an exchange.
type Route uint8

const (
	// RouteOK: to the replica named.
	RouteOK Route = iota
	// RouteOffline: the agent has no replica connected that offers the
	// server.
	RouteOffline
	// RouteDraining: every replica that would take new work drains.
	RouteDraining
	// RouteSessionGone: the request names a session of a replica that is
	// not connected (or a tag no replica has) while others are: the
	// session is lost, and the client should start a new one.
	RouteSessionGone
)

// Route picks the replica of agent for an exchange with server. With tag
// "" the exchange is new work (a new session, a stateless request): it
// goes to the replicas that offer server and do not drain, in turn. With
// a tag (from SplitSessionID) it goes to that replica, draining or not:
// its sessions are there.
func (s *Server) Route(agent, server, tag string) (string, Route) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.agents[agent]
	if r == nil {
		return "", RouteOffline
	}
	if tag != "" {
		if p := r.byTag[tag]; p != nil && p.live() {
			return tag, RouteOK
		}
		for _, p := range r.byTag {
			if p.live() {
				return "", RouteSessionGone
			}
		}
		return "", RouteOffline
	}
	// Round robin over the tags in a stable order: few replicas, and no
	// state to keep in step with the map.
	tags := make([]string, 0, len(r.byTag))
	for t, p := range r.byTag {
		if p.offers(server) {
			tags = append(tags, t)
		}
	}
	if len(tags) == 0 {
		return "", RouteOffline
	}
	slices.Sort(tags)
	for i := range len(tags) {
		if t := tags[(r.next+uint(i))%uint(len(tags))]; !r.byTag[t].draining() {
			r.next++
			return t, RouteOK
		}
	}
	return "", RouteDraining
}

// live reports whether the session is up (not yet noticed dead, replaced
// or retiring).
func (a *agentSession) live() bool {
	select {
	case <-a.sess.Done():
		return false
	case <-a.replaced:
		return false
	default:
		return true
	}
}

func (a *agentSession) offers(server string) bool {
	for _, srv := range a.status.Servers {
		if srv.Name == server {
			return true
		}
	}
	return false
}

// Dial opens a stream to the named agent: to one of its replicas that
// does not drain, in turn (see DialReplica). The error wraps
// ErrAgentOffline when the agent has no session or its session just ended.
func (s *Server) Dial(ctx context.Context, agent string) (Stream, error) {
	s.mu.Lock()
	var tag string
	if r := s.agents[agent]; r != nil {
		tags := make([]string, 0, len(r.byTag))
		for t := range r.byTag {
			tags = append(tags, t)
		}
		slices.Sort(tags)
		// A draining replica only if every one drains: as before
		// replicas, the relay's front decides what a draining agent gets.
		for i := range len(tags) {
			if t := tags[(r.next+uint(i))%uint(len(tags))]; !r.byTag[t].draining() {
				tag = t
				break
			}
		}
		if tag == "" && len(tags) > 0 {
			tag = tags[r.next%uint(len(tags))]
		}
		r.next++
	}
	s.mu.Unlock()
	return s.DialReplica(ctx, agent, tag)
}

// DialReplica opens a stream to the replica of agent whose tag is given
// (see Route). The error wraps ErrAgentOffline when that replica has no
// session or its session just ended.
func (s *Server) DialReplica(ctx context.Context, agent, tag string) (Stream, error) {
	var a *agentSession
	var tried []*agentSession
	for {
		s.mu.Lock()
		a = nil
		if r := s.agents[agent]; r != nil {
			if p := r.byTag[tag]; p != nil {
				a = p.pick(tried)
			}
		}
		s.mu.Unlock()
		if a == nil {
			return nil, fmt.Errorf("tunnel: dial agent %q: %w", agent, ErrAgentOffline)
		}
		if a.startStream() {
			break
		}
		// Replaced after we looked it up: the registry has the newer one.
		tried = append(tried, a)
	}
	st, err := a.sess.OpenStream(ctx)
	if err != nil {
		a.streamClosed()
		select {
		case <-a.sess.Done():
			return nil, fmt.Errorf("tunnel: dial agent %q: %w (%w)", agent, ErrAgentOffline, err)
		default:
		}
		return nil, fmt.Errorf("tunnel: dial agent %q: open stream: %w", agent, err)
	}
	setOnClose(st, a.closeHook)
	return st, nil
}

// sameHost reports whether two host:port strings name the same host.
func sameHost(a, b string) bool {
	ha, _, errA := net.SplitHostPort(a)
	hb, _, errB := net.SplitHostPort(b)
	return errA == nil && errB == nil && ha == hb
}

// Agent reports the named agent's connected replicas, if it has any.
func (s *Server) Agent(name string) (AgentStatus, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.agents[name]
	if !ok {
		return AgentStatus{}, false
	}
	return r.status(name), true
}

// status sums up the replicas (see AgentStatus); s.mu is held.
func (r *agentReplicas) status(name string) AgentStatus {
	st := AgentStatus{Name: name, Draining: true}
	for _, p := range r.byTag {
		if len(p.conns) == 0 {
			continue
		}
		rs := p.conns[0].replicaStatus()
		rs.Connections = len(p.conns)
		rs.Draining = p.draining()
		st.Replicas = append(st.Replicas, rs)
		st.Draining = st.Draining && rs.Draining
	}
	slices.SortFunc(st.Replicas, func(a, b ReplicaStatus) int {
		if c := a.ConnectedAt.Compare(b.ConnectedAt); c != 0 {
			return c
		}
		return strings.Compare(a.Tag, b.Tag)
	})
	if len(st.Replicas) > 0 {
		first := st.Replicas[0]
		st.Servers = slices.Clone(first.Servers)
		st.Transport, st.Remote, st.ConnectedAt, st.Software = first.Transport, first.Remote, first.ConnectedAt, first.Software
	}
	return st
}

// Offers reports whether agent is connected and whether it offers server,
// without copying its status (the relay asks on every request): online if
// a replica is, offered if a connected replica offers it.
func (s *Server) Offers(agent, server string) (online, offered bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.agents[agent]
	if !ok {
		return false, false
	}
	for _, p := range r.byTag {
		for _, a := range p.conns {
			select {
			case <-a.sess.Done():
				// Dead but not yet deregistered: the relay asks right
				// after an exchange failed, and must hear "offline", as
				// Dial would say.
				continue
			default:
			}
			online = true
			if a.offers(server) {
				return true, true
			}
		}
	}
	return online, false
}

// Transport reports the transport of an agent's tunnel (its oldest
// replica's; "" when it is not connected), without copying its status:
// the relay's access line asks on every exchange.
func (s *Server) Transport(agent string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.agents[agent]
	if !ok {
		return ""
	}
	var best *agentSession
	for _, p := range r.byTag {
		for _, a := range p.conns {
			if best == nil || a.status.ConnectedAt.Before(best.status.ConnectedAt) {
				best = a
			}
		}
	}
	if best == nil {
		return ""
	}
	return best.status.Transport
}

// Agents reports every connected agent, sorted by name.
func (s *Server) Agents() []AgentStatus {
	s.mu.Lock()
	out := make([]AgentStatus, 0, len(s.agents))
	for name, r := range s.agents {
		out = append(out, r.status(name))
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b AgentStatus) int { return strings.Compare(a.Name, b.Name) })
	return out
}
