package tunnel

import (
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/mcptun/mcptun/internal/agentkey"
)

// Choices for ClientConfig.Transport, besides TransportQUIC ("quic").
const (
	TransportAuto = "auto"
	TransportTCP  = "tcp"
)

// Mux choices for ClientConfig.Mux.
const (
	MuxNative = "native"
	MuxYamux  = "yamux"
)

// Client defaults.
const (
	DefaultQUICTimeout = 3 * time.Second
	DefaultMinBackoff  = 500 * time.Millisecond
	DefaultMaxBackoff  = 30 * time.Second
	// In auto mode on TCP, QUIC is tried again in the background after a
	// random wait in [DefaultQUICProbeMin, min(DefaultQUICProbeMax,
	// DefaultQUICProbeMin·2^(n+1))) after the n-th failed try: 5 s to 10 s
	// at first, then at least once every 10 minutes.
	DefaultQUICProbeMin = 5 * time.Second
	DefaultQUICProbeMax = 10 * time.Minute
)

// ClientConfig configures the agent end of the tunnel.
type ClientConfig struct {
	Name    string
	Address string // relay host:port
	// The agent's credential, exactly one of: Token, a secret the relay
	// knows the SHA-256 of (never logged); Key, an Ed25519 private key
	// whose signature binds each TLS session (the relay lists the public
	// key); Certificate, a TLS client certificate with its private key
	// (the relay lists its hash).
	Token       string
	Key         ed25519.PrivateKey
	Certificate *tls.Certificate
	// TLSConfig verifies the relay; build it with ClientTLS. An empty
	// ServerName defaults to the host of Address.
	TLSConfig *tls.Config
	// Transport is "auto" (default: QUIC, falling back to TCP; on TCP,
	// QUIC is probed in the background and the session moves back to it
	// once it connects), "quic" or "tcp".
	Transport string
	// Mux is "native" (default) or "yamux": yamux over one QUIC stream.
	// It only affects QUIC; over TCP streams are always yamux streams.
	Mux     string
	Servers []OfferedServer
	// Software names the agent's build in its hello ("mcptun v1.4.0"),
	// shown in the relay's status.
	Software string
	Logger   *slog.Logger
	// QUICTimeout is how long "auto" waits for QUIC before trying TCP
	// (default 3 s).
	QUICTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait between attempts (defaults
	// 500 ms and 30 s). After a refusal the wait is MaxBackoff.
	MinBackoff, MaxBackoff time.Duration
	// HandshakeTimeout bounds one attempt: dial, TLS, hello and answer
	// (default 10 s).
	HandshakeTimeout time.Duration
	// QUICProbeMin and QUICProbeMax bound the wait between background
	// QUIC attempts while an auto session runs over TCP (defaults 5 s and
	// 10 minutes), drawn like the reconnect backoff.
	QUICProbeMin, QUICProbeMax time.Duration
	// Clock drives the backoff and probe waits; default the real clock.
	Clock Clock
	// Instance and Conn are sent in the hello (see hello): an agent
	// process with several tunnels to one relay gives them one Instance
	// and a Conn each, so they serve side by side instead of replacing
	// each other. Multi sets them; "" keeps the older behaviour (any new
	// session with the credential replaces the old one).
	Instance string
	Conn     int

	// resetKey is the agent's QUIC stateless reset key, derived from its
	// credential's secret.
	resetKey *quic.StatelessResetKey
	// offers holds Servers as SetServers last changed them (nil until
	// then): what a hello sends. Shared by the copies of the config.
	offers *offerList
	// DialAddress, if set, is the ip:port dialed instead of Address (one
	// of the addresses Address's host resolves to, see Multi); Address
	// still gives the TLS server name and names the relay in logs.
	DialAddress string
}

// normalize validates cfg and fills in defaults.
func (cfg ClientConfig) normalize() (ClientConfig, error) {
	fail := func(format string, args ...any) (ClientConfig, error) {
		return ClientConfig{}, fmt.Errorf("tunnel: client config: "+format, args...)
	}
	if !ValidName(cfg.Name) {
		return fail("invalid agent name %q: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit", cfg.Name)
	}
	host, port, err := net.SplitHostPort(cfg.Address)
	if err != nil || host == "" || port == "" {
		return fail("relay address %q is not host:port", cfg.Address)
	}
	if _, _, err := net.SplitHostPort(cfg.DialAddress); cfg.DialAddress != "" && err != nil {
		return fail("dial address %q is not host:port", cfg.DialAddress)
	}
	if cfg.TLSConfig == nil {
		return fail("TLSConfig is required (see ClientTLS)")
	}
	secret, err := cfg.credentialSecret()
	if err != nil {
		return fail("%v", err)
	}
	h := cfg.hello()
	if h.Auth == AuthEd25519 {
		h.Signature = make([]byte, ed25519.SignatureSize) // made per session
	}
	if err := h.validate(); err != nil {
		return fail("%v", err)
	}
	switch cfg.Transport {
	case "":
		cfg.Transport = TransportAuto
	case TransportAuto, TransportQUIC, TransportTCP:
	default:
		return fail("transport %q: want auto, quic or tcp", cfg.Transport)
	}
	switch cfg.Mux {
	case "":
		cfg.Mux = MuxNative
	case MuxNative, MuxYamux:
	default:
		return fail("mux %q: want native or yamux", cfg.Mux)
	}
	if cfg.QUICTimeout <= 0 {
		cfg.QUICTimeout = DefaultQUICTimeout
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = DefaultMaxBackoff
	}
	if cfg.MinBackoff > cfg.MaxBackoff {
		return fail("MinBackoff %v exceeds MaxBackoff %v", cfg.MinBackoff, cfg.MaxBackoff)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.QUICProbeMin <= 0 {
		cfg.QUICProbeMin = DefaultQUICProbeMin
	}
	if cfg.QUICProbeMax <= 0 {
		cfg.QUICProbeMax = DefaultQUICProbeMax
	}
	if cfg.QUICProbeMin > cfg.QUICProbeMax {
		return fail("QUICProbeMin %v exceeds QUICProbeMax %v", cfg.QUICProbeMin, cfg.QUICProbeMax)
	}
	if cfg.resetKey, err = agentResetKey(secret); err != nil {
		return fail("%v", err)
	}
	if cfg.Clock == nil {
		cfg.Clock = realClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.TLSConfig = cfg.TLSConfig.Clone()
	if cfg.TLSConfig.ServerName == "" {
		cfg.TLSConfig.ServerName = host
	}
	if cfg.Certificate != nil {
		cfg.TLSConfig.Certificates = []tls.Certificate{*cfg.Certificate}
	}
	cfg.Servers = append([]OfferedServer(nil), cfg.Servers...)
	if cfg.offers == nil {
		cfg.offers = &offerList{}
	}
	return cfg, nil
}

// credentialSecret checks that exactly one credential is set and returns
// the secret the agent's QUIC stateless reset key is derived from: the
// token, the key's seed, or the certificate's private key. The relay has
// none of them.
func (cfg *ClientConfig) credentialSecret() ([]byte, error) {
	n := 0
	var secret []byte
	if cfg.Token != "" {
		n++
		secret = []byte(cfg.Token)
	}
	if cfg.Key != nil {
		n++
		if len(cfg.Key) != ed25519.PrivateKeySize {
			return nil, fmt.Errorf("ed25519 key of %d bytes, want %d", len(cfg.Key), ed25519.PrivateKeySize)
		}
		secret = cfg.Key.Seed()
	}
	if cfg.Certificate != nil {
		n++
		if len(cfg.Certificate.Certificate) == 0 || cfg.Certificate.PrivateKey == nil {
			return nil, errors.New("client certificate without a certificate or private key")
		}
		der, err := x509.MarshalPKCS8PrivateKey(cfg.Certificate.PrivateKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate key: %w", err)
		}
		secret = der
	}
	switch n {
	case 0:
		return nil, errors.New("no credential: set a token, an Ed25519 key or a client certificate")
	case 1:
		return secret, nil
	}
	return nil, errors.New("several credentials: set one of token, Ed25519 key, client certificate")
}

// hello is the agent's hello before any per-session signature.
func (cfg *ClientConfig) hello() hello {
	h := hello{Type: typeHello, Version: ProtocolVersion, Agent: cfg.Name, Token: cfg.Token, Servers: cfg.servers(), Software: cfg.Software,
		Instance: cfg.Instance, Conn: cfg.Conn}
	switch {
	case cfg.Key != nil:
		h.Auth = AuthEd25519
		h.PublicKey = cfg.Key.Public().(ed25519.PublicKey)
	case cfg.Certificate != nil:
		h.Auth = AuthCertificate
	}
	return h
}

// dialAddress is the host:port to dial.
func (cfg *ClientConfig) dialAddress() string {
	if cfg.DialAddress != "" {
		return cfg.DialAddress
	}
	return cfg.Address
}

// Client is the agent end of the tunnel: it keeps a session to the relay
// and hands the streams the relay opens to Listener.
type Client struct {
	cfg     ClientConfig
	log     *slog.Logger
	ln      *listener
	running atomic.Bool

	// draining: Drain was called; no session is made after the current.
	draining atomic.Bool
	// Sessions being left, still serving the exchanges in flight on them
	// while Run goes on: the goroutines, which Run waits for, and how many
	// of them are with a draining relay (Run then looks for its
	// replacement at the shortest pace; a TCP session left for QUIC does
	// not count).
	retiring      sync.WaitGroup
	drainingRelay atomic.Int32

	mu      sync.Mutex
	cur     *clientSession
	changed chan struct{} // closed and replaced whenever cur changes

	stats clientStats // see stats.go
}

// NewClient checks cfg and returns a Client; nothing is dialed until Run.
func NewClient(cfg ClientConfig) (*Client, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	return &Client{
		cfg:     cfg,
		log:     cfg.Logger.With("relay", cfg.Address, "agent", cfg.Name),
		ln:      newListener(cfg.Name),
		changed: make(chan struct{}),
	}, nil
}

// Listener returns the listener on which the streams the relay opens
// arrive, across reconnects. Closing it makes Accept return net.ErrClosed
// and resets streams that arrive later; the Client keeps running.
func (c *Client) Listener() net.Listener { return c.ln }

// Connected reports whether the client has an authenticated session.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur != nil
}

// Transport is the current session's transport, or "" when disconnected.
func (c *Client) Transport() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cur == nil {
		return ""
	}
	return c.cur.Transport()
}

// WaitConnected returns nil once the client has an authenticated session,
// or ctx's error.
func (c *Client) WaitConnected(ctx context.Context) error {
	for {
		c.mu.Lock()
		connected, ch := c.cur != nil, c.changed
		c.mu.Unlock()
		if connected {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Drain tells the relay that the agent is shutting down (a "draining"
// frame on the control stream), so that it routes the agent no new
// exchanges; the session stays up for those in flight until Run's context
// ends. After Drain the Client makes no new session. The error is that of
// sending the frame; without a session there is nobody to tell.
func (c *Client) Drain() error {
	if c.draining.Swap(true) {
		return nil
	}
	c.mu.Lock()
	cs := c.cur
	c.mu.Unlock()
	if cs == nil {
		return nil
	}
	return cs.sendDraining()
}

// Draining reports whether Drain was called.
func (c *Client) Draining() bool { return c.draining.Load() }

func (c *Client) setCurrent(cs *clientSession) {
	c.mu.Lock()
	c.cur = cs
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	if cs != nil {
		// SetServers may have run between this session's hello and now,
		// when it could not see the session yet.
		c.sendOffers(cs)
	}
}

// Run connects to the relay and serves the session, reconnecting with
// backoff whenever the session ends, until ctx is done; then it returns nil.
// Run may be called once.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("tunnel: Client.Run called twice")
	}
	cfg := &c.cfg
	// One UDP socket per address family for every QUIC attempt of this
	// Run, so that the agent's stateless reset key can answer a relay
	// still sending to a connection the agent has dropped.
	qd := &quicDialer{key: cfg.resetKey}
	defer qd.Close()
	defer c.retiring.Wait() // retired sessions end with ctx, before qd closes

	failures := 0
	// In auto mode, after QUIC failed and TCP worked, reconnects go to TCP
	// first: where UDP is blocked, every reconnect would otherwise wait
	// QUICTimeout for nothing. Background probes (see serve) find out when
	// QUIC works again; TCP failing also sends the next attempt to QUIC.
	quicFailed := false
	var next *clientSession // connected by a probe as its predecessor ended
	for {
		if c.draining.Load() {
			// The agent is stopping: a new session would only be
			// told to take no work.
			if next != nil {
				next.Close()
			}
			<-ctx.Done()
			return nil
		}
		var cs *clientSession
		var err error
		if next != nil {
			cs, next = next, nil
		} else {
			tcpFirst := cfg.Transport == TransportAuto && quicFailed
			cs, err = connect(ctx, cfg, c.log, qd, tcpFirst)
		}
		if err == nil && cfg.Transport == TransportAuto {
			quicFailed = cs.Transport() == TransportTCPYamux
		}
		if err == nil {
			c.noteSession(cs)
		}
		if ctx.Err() != nil {
			if cs != nil {
				cs.Close()
			}
			return nil
		}
		var delay time.Duration
		var ref *RefusedError
		switch {
		case errors.As(err, &ref):
			// Retrying sooner cannot help until someone fixes the config.
			delay = cfg.MaxBackoff
			attrs := []any{"code", ref.Code, "retry_in", delay}
			// What the relay's operator needs to list.
			switch {
			case ref.Code != CodeBadCredential:
			case cfg.Key != nil:
				attrs = append(attrs, "public_key", agentkey.FormatPublic(cfg.Key.Public().(ed25519.PublicKey)))
			case cfg.Certificate != nil && cfg.Certificate.Leaf != nil:
				attrs = append(attrs, "cert_sha256", PinSHA256(cfg.Certificate.Leaf))
			}
			if cfg.Token == "" && ref.Code == CodeBadHello {
				// A relay from before agent keys takes every hello for a
				// token's.
				attrs = append(attrs, "hint", "the relay may be older than agent keys and certificates: upgrade it, or use a token")
			}
			c.log.Error("relay refused: "+ref.describe(), attrs...)
		case err != nil && c.drainingRelay.Load() > 0:
			// The relay we left is draining and its replacement is not
			// up yet: keep trying at the shortest pace, to find the
			// replacement as soon as it is.
			delay = backoffDelay(0, cfg.MinBackoff, cfg.MaxBackoff, rand.Float64())
			c.log.Debug("tunnel: relay draining; its replacement does not answer yet", "err", err, "retry_in", delay)
		case err != nil:
			delay = backoffDelay(failures, cfg.MinBackoff, cfg.MaxBackoff, rand.Float64())
			failures++
			if hint := Hint(err); hint != "" {
				c.log.Warn("tunnel: cannot connect to relay", "err", err, "hint", hint, "retry_in", delay)
			} else {
				c.log.Warn("tunnel: cannot connect to relay", "err", err, "retry_in", delay)
			}
		default:
			start := cfg.Clock.Now()
			up, cause := c.serve(ctx, cs, qd)
			if ctx.Err() != nil {
				if up != nil {
					up.Close()
				}
				return nil
			}
			if up != nil {
				// QUIC works again: serve the new session now.
				next, quicFailed, failures = up, false, 0
				continue
			}
			lived := cfg.Clock.Now().Sub(start)
			if lived >= stableSession {
				failures = 0
			}
			switch {
			case errors.Is(cause, errRelayDraining):
				// Unlike "replaced", nothing is wrong: connect again
				// soon, to the relay's replacement.
				failures = 0
				delay = backoffDelay(0, cfg.MinBackoff, cfg.MaxBackoff, rand.Float64())
				c.log.Info("tunnel: relay is draining; connecting again", "retry_in", delay)
			case errors.Is(cause, ErrReplaced):
				delay = cfg.MaxBackoff
				c.log.Error("tunnel: relay replaced this session: another agent connected with the same name", "retry_in", delay)
			default:
				delay = backoffDelay(failures, cfg.MinBackoff, cfg.MaxBackoff, rand.Float64())
				failures++
				c.log.Warn("tunnel: disconnected from relay", "err", cause, "lived", lived.Round(time.Millisecond), "retry_in", delay)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-cfg.Clock.After(delay):
		}
	}
}

// errRelayDraining ends serve when the relay said it drains; the session
// itself lives on (see Client.retire).
var errRelayDraining = errors.New("tunnel: relay is draining")

// serve hands the relay's streams to the listener until the session or ctx
// ends, or the relay drains, and returns why. In auto mode over TCP it also
// probes QUIC in the background; when a probe connects, serve returns that
// session as up at once and retires cs (the relay sends new exchanges to the
// newer session and ends the old one when its streams are done). A session
// of a draining relay is retired too: its exchanges in flight finish while
// Run connects again.
func (c *Client) serve(ctx context.Context, cs *clientSession, qd *quicDialer) (up *clientSession, cause error) {
	c.setCurrent(cs)
	c.log.Info("tunnel: connected to relay", "transport", cs.Transport())
	if c.draining.Load() {
		// Drain ran before this session was current.
		if err := cs.sendDraining(); err != nil {
			c.log.Warn("tunnel: cannot tell the relay the agent drains", "err", err)
		}
	}
	var wg sync.WaitGroup // the stream acceptor
	wg.Go(func() {
		for {
			st, err := cs.AcceptStream(ctx)
			if err != nil {
				return
			}
			if !c.ln.deliver(st, cs.Done()) {
				st.Close()
			}
		}
	})

	var probed chan *clientSession // at most one session, then closed
	var probing sync.WaitGroup
	probeCtx, stopProbe := context.WithCancel(ctx)
	// endProbe ends the prober and closes a session it connected too
	// late to be used.
	endProbe := func() {
		stopProbe()
		probing.Wait()
		if probed != nil {
			if s := <-probed; s != nil {
				s.Close()
			}
		}
	}
	if c.cfg.Transport == TransportAuto && cs.Transport() == TransportTCPYamux {
		probed = make(chan *clientSession, 1)
		probing.Go(func() { c.probeQUIC(probeCtx, qd, probed) })
	}

	select {
	case <-cs.Done():
		// Let the control reader record why before Close muddles it.
		<-cs.readerDone
	case <-ctx.Done():
	case <-cs.relayDraining:
		c.setCurrent(nil)
		endProbe()
		c.drainingRelay.Add(1)
		c.retire(ctx, cs, &wg, 0, func() { c.drainingRelay.Add(-1) })
		return nil, errRelayDraining
	case up = <-probed:
		if up != nil {
			stopProbe()
			probing.Wait() // it returns once it has sent up
			c.setCurrent(up)
			c.log.Info("tunnel: QUIC works again; moving to it, the TCP session ends once its exchanges are done", "transport", up.Transport())
			c.retire(ctx, cs, &wg, replaceGrace+2*lingerTimeout, nil)
			return up, nil
		}
		// Closed empty: the prober stopped because ctx is done.
	}
	c.setCurrent(nil)
	stopProbe()
	cs.Close()
	wg.Wait()
	probing.Wait()
	if probed != nil {
		// The prober has returned. A session it connected as this one
		// ended is the next one.
		up = <-probed
	}
	return up, cs.Err()
}

// retire keeps serving a session that is being left (its relay drains, or
// the agent moved back to QUIC) in the background until the relay closes
// it (its exchanges in flight are done) or ctx ends. With bound > 0 the
// agent closes it itself after that long, should the relay not. ended, if
// set, runs once the session has ended.
func (c *Client) retire(ctx context.Context, cs *clientSession, accepting *sync.WaitGroup, bound time.Duration, ended func()) {
	c.retiring.Go(func() {
		if ended != nil {
			defer ended()
		}
		var timeout <-chan time.Time
		if bound > 0 {
			t := time.NewTimer(bound)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-cs.Done():
			<-cs.readerDone
		case <-ctx.Done():
		case <-timeout:
			c.log.Warn("tunnel: the relay kept the session it replaced open; closing it", "after", bound)
		}
		cs.Close()
		accepting.Wait()
		c.log.Info("tunnel: the previous session has ended", "transport", cs.Transport(), "cause", cs.Err())
	})
}

// probeQUIC tries QUIC, in the background of a TCP session, with waits
// drawn like the reconnect backoff between QUICProbeMin and QUICProbeMax.
// It sends the first session that connects on out and returns; out is
// closed when it returns.
func (c *Client) probeQUIC(ctx context.Context, qd *quicDialer, out chan<- *clientSession) {
	defer close(out)
	cfg := &c.cfg
	for n := 0; ; n++ {
		wait := backoffDelay(n, cfg.QUICProbeMin, cfg.QUICProbeMax, rand.Float64())
		select {
		case <-ctx.Done():
			return
		case <-cfg.Clock.After(wait):
		}
		cs, err := connectQUIC(ctx, cfg, c.log, qd)
		if err == nil {
			out <- cs
			return
		}
		if ctx.Err() != nil {
			return
		}
		c.log.Debug("tunnel: QUIC still does not connect; staying on TLS over TCP", "err", err)
	}
}

// Connect makes one attempt to open an authenticated session with the
// relay described by cfg: dial, TLS, hello, answer. A refusal is a
// *RefusedError. The caller owns the session and must Close it; the streams
// the relay opens are returned by its AcceptStream. Client.Run does this in
// a loop.
func Connect(ctx context.Context, cfg ClientConfig) (Session, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	cs, err := connect(ctx, &cfg, cfg.Logger.With("relay", cfg.Address, "agent", cfg.Name), nil, false)
	if err != nil {
		return nil, err
	}
	return cs, nil
}

// connect dials (see dial) and runs the handshake. qd nil gives a QUIC
// session a UDP socket of its own, released with it.
func connect(ctx context.Context, cfg *ClientConfig, log *slog.Logger, qd *quicDialer, tcpFirst bool) (*clientSession, error) {
	hctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	sess, err := dial(hctx, cfg, log, qd, tcpFirst)
	if err != nil {
		return nil, err
	}
	return finishConnect(hctx, sess, cfg, log)
}

// connectQUIC is connect over QUIC only, whatever cfg.Transport says.
func connectQUIC(ctx context.Context, cfg *ClientConfig, log *slog.Logger, qd *quicDialer) (*clientSession, error) {
	hctx, cancel := context.WithTimeout(ctx, cfg.HandshakeTimeout)
	defer cancel()
	sess, err := dialQUIC(hctx, cfg, log, qd)
	if err != nil {
		return nil, err
	}
	return finishConnect(hctx, sess, cfg, log)
}

func finishConnect(hctx context.Context, sess Session, cfg *ClientConfig, log *slog.Logger) (*clientSession, error) {
	cs, err := handshake(hctx, sess, cfg, log)
	if err != nil {
		sess.Close()
		return nil, err
	}
	return cs, nil
}

// dial opens the transport. In auto mode it tries QUIC for QUICTimeout,
// then TCP; with tcpFirst (QUIC failed last time) TCP first, then QUIC.
func dial(ctx context.Context, cfg *ClientConfig, log *slog.Logger, qd *quicDialer, tcpFirst bool) (Session, error) {
	switch cfg.Transport {
	case TransportQUIC:
		return dialQUIC(ctx, cfg, log, qd)
	case TransportTCP:
		return dialTCP(ctx, cfg, log)
	}
	if tcpFirst {
		sess, err := dialTCP(ctx, cfg, log)
		if err == nil || ctx.Err() != nil {
			return sess, err
		}
		log.Info("tunnel: TCP did not connect; trying QUIC again", "tcp_err", err)
		return dialQUIC(ctx, cfg, log, qd)
	}
	qctx, cancel := context.WithTimeout(ctx, cfg.QUICTimeout)
	sess, qerr := dialQUIC(qctx, cfg, log, qd)
	cancel()
	if qerr == nil {
		return sess, nil
	}
	if ctx.Err() != nil {
		return nil, qerr
	}
	log.Info("tunnel: QUIC did not connect; falling back to TLS over TCP", "quic_timeout", cfg.QUICTimeout, "quic_err", qerr)
	sess, err := dialTCP(ctx, cfg, log)
	if err != nil {
		return nil, fmt.Errorf("%w (after QUIC failed: %v)", err, qerr)
	}
	return sess, nil
}

func dialQUIC(ctx context.Context, cfg *ClientConfig, log *slog.Logger, qd *quicDialer) (Session, error) {
	alpn := ALPN
	if cfg.Mux == MuxYamux {
		alpn = alpnQUICYamux
	}
	fail := func(err error) (Session, error) {
		return nil, fmt.Errorf("tunnel: dial quic %s: %w", cfg.Address, err)
	}
	raddr, err := net.ResolveUDPAddr("udp", cfg.dialAddress())
	if err != nil {
		return fail(err)
	}
	var tr *agentTransport
	var own io.Closer // a socket for this session only, released with it
	if qd != nil {
		tr, err = qd.transport(raddr)
	} else {
		tr, err = newAgentTransport(raddr, cfg.resetKey)
		own = tr
	}
	if err != nil {
		return fail(err)
	}
	conn, err := tr.Dial(ctx, raddr, withALPN(cfg.TLSConfig, alpn), quicConfig())
	if err != nil {
		if own != nil {
			own.Close()
		}
		return fail(err)
	}
	if cfg.Mux != MuxYamux {
		return &quicSession{conn: conn, tr: own}, nil
	}
	closeAll := func() {
		conn.CloseWithError(0, "")
		if own != nil {
			own.Close()
		}
	}
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		closeAll()
		return fail(fmt.Errorf("open yamux stream: %w", err))
	}
	ys, err := newYamux(newQUICStream(st, conn), true, TransportQUICYamux, log)
	if err != nil {
		closeAll()
		return fail(fmt.Errorf("yamux: %w", err))
	}
	ys.quic, ys.tr = conn, own
	return ys, nil
}

func dialTCP(ctx context.Context, cfg *ClientConfig, log *slog.Logger) (Session, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", cfg.dialAddress())
	if err != nil {
		return nil, fmt.Errorf("tunnel: dial tcp %s: %w", cfg.Address, err)
	}
	tc := tls.Client(c, withALPN(cfg.TLSConfig, ALPN))
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel: dial tcp %s: tls: %w", cfg.Address, err)
	}
	// A server that completes TLS without the tunnel's ALPN is not a
	// relay's tunnel port (the relay's HTTPS front negotiates none): say
	// so now rather than fail later on garbled yamux frames.
	if p := tc.ConnectionState().NegotiatedProtocol; p != ALPN {
		c.Close()
		return nil, fmt.Errorf("tunnel: dial tcp %s: %w", cfg.Address, &NotTunnelPortError{Negotiated: p})
	}
	ys, err := newYamux(tc, true, TransportTCPYamux, log)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("tunnel: dial tcp %s: yamux: %w", cfg.Address, err)
	}
	return ys, nil
}

// agentTransport is a quic.Transport on a UDP socket of the agent's, with
// the agent's stateless reset key.
type agentTransport struct {
	*quic.Transport
	udp *net.UDPConn
}

func newAgentTransport(raddr *net.UDPAddr, key *quic.StatelessResetKey) (*agentTransport, error) {
	laddr := &net.UDPAddr{IP: net.IPv4zero}
	if raddr.IP.To4() == nil {
		laddr.IP = net.IPv6unspecified
	}
	udp, err := net.ListenUDP("udp", laddr)
	if err != nil {
		return nil, err
	}
	return &agentTransport{Transport: &quic.Transport{Conn: udp, StatelessResetKey: key}, udp: udp}, nil
}

// Close closes the transport's connections and its socket (quic-go leaves
// a socket it was given open).
func (t *agentTransport) Close() error {
	err := t.Transport.Close()
	if cerr := t.udp.Close(); err == nil {
		err = cerr
	}
	return err
}

// quicDialer keeps the agent's QUIC transports, one per address family,
// across the attempts of one Client.Run.
type quicDialer struct {
	key *quic.StatelessResetKey

	mu     sync.Mutex
	v4, v6 *agentTransport
	closed bool
}

func (d *quicDialer) transport(raddr *net.UDPAddr) (*agentTransport, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, net.ErrClosed
	}
	slot := &d.v4
	if raddr.IP.To4() == nil {
		slot = &d.v6
	}
	if *slot == nil {
		t, err := newAgentTransport(raddr, d.key)
		if err != nil {
			return nil, err
		}
		*slot = t
	}
	return *slot, nil
}

func (d *quicDialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.closed = true
	for _, t := range []*agentTransport{d.v4, d.v6} {
		if t != nil {
			t.Close()
		}
	}
	return nil
}

// handshake opens the control stream, sends the hello and reads the answer.
func handshake(hctx context.Context, sess Session, cfg *ClientConfig, log *slog.Logger) (*clientSession, error) {
	// Deadlines bound the exchange; closing the session on cancellation
	// also unblocks it when the caller gives up early.
	stop := context.AfterFunc(hctx, func() { sess.Close() })
	ctl, a, sent, err := exchangeHello(hctx, sess, cfg)
	if !stop() {
		if ctl != nil {
			ctl.Close()
		}
		return nil, fmt.Errorf("tunnel: handshake with %s over %s: %w", cfg.Address, sess.Transport(), context.Cause(hctx))
	}
	if err != nil {
		if ctl != nil {
			ctl.Close()
		}
		return nil, fmt.Errorf("tunnel: handshake with %s over %s: %w", cfg.Address, sess.Transport(), err)
	}
	switch a.Type {
	case typeWelcome:
	case typeRefused:
		ctl.Close()
		return nil, &RefusedError{Code: a.Code, Message: a.Message}
	default:
		ctl.Close()
		return nil, fmt.Errorf("tunnel: handshake with %s: relay answered %q, want welcome or refused", cfg.Address, truncate(a.Type, 32))
	}
	ctl.SetDeadline(time.Time{})
	cs := &clientSession{Session: sess, ctl: ctl, log: log, readerDone: make(chan struct{}), beatDone: make(chan struct{}), relayDraining: make(chan struct{}), relayID: a.Relay,
		offered: sent, clientURL: a.ClientURL, fleet: a.Fleet}
	go cs.readControl() // owned by cs: Close waits for it
	go cs.heartbeat()   // likewise
	return cs, nil
}

// exchangeHello sends the hello and reads the answer; sent is the offer
// list the hello carried.
func exchangeHello(hctx context.Context, sess Session, cfg *ClientConfig) (ctl Stream, a answer, sent []OfferedServer, err error) {
	ctl, err = sess.OpenStream(hctx)
	if err != nil {
		return nil, answer{}, nil, fmt.Errorf("open control stream: %w", err)
	}
	if dl, ok := hctx.Deadline(); ok {
		ctl.SetDeadline(dl)
	}
	h := cfg.hello()
	sent = h.Servers
	if h.Auth == AuthEd25519 {
		if err := signHello(&h, cfg.Key, sess); err != nil {
			return ctl, answer{}, nil, err
		}
	}
	if err := writeFrame(ctl, h); err != nil {
		return ctl, answer{}, nil, err
	}
	b, err := readFrame(ctl)
	if err != nil {
		return ctl, answer{}, nil, err
	}
	a, err = decodeAnswer(b)
	return ctl, a, sent, err
}

// clientSession is an authenticated session on the agent side. It watches
// the control stream: when the stream ends or the relay sends goaway, it
// closes the session and records why.
type clientSession struct {
	Session
	ctl        Stream
	log        *slog.Logger
	readerDone chan struct{}
	beatDone   chan struct{}
	// relayDraining is closed when the relay says it drains.
	relayDraining chan struct{}
	// relayID is the relay's instance id from the welcome ("" from older
	// relays).
	relayID string
	// clientURL is the welcome's ClientURL, as the relay sent it.
	clientURL string
	// fleet: the welcome said the relay is one of a fleet.
	fleet bool

	mu    sync.Mutex
	cause error

	// wmu serialises the agent's frames after the hello (heartbeat pings
	// and "draining"): each sets its own write deadline, and one must not
	// clear or shorten the other's mid-write.
	wmu       sync.Mutex
	offered   []OfferedServer // the offers the relay has (hello, offers frames); under wmu
	drainOnce sync.Once
	drainErr  error
}

// sendDraining tells the relay, once, that the agent drains.
func (cs *clientSession) sendDraining() error {
	cs.drainOnce.Do(func() {
		cs.drainErr = cs.writeControl(answer{Type: typeDraining}, lingerTimeout)
	})
	return cs.drainErr
}

// writeControl writes one frame on the control stream, given timeout to
// go out.
func (cs *clientSession) writeControl(f answer, timeout time.Duration) error {
	cs.wmu.Lock()
	defer cs.wmu.Unlock()
	cs.ctl.SetWriteDeadline(time.Now().Add(timeout))
	defer cs.ctl.SetWriteDeadline(time.Time{})
	return writeFrame(cs.ctl, f)
}

func (cs *clientSession) readControl() {
	defer close(cs.readerDone)
	for {
		b, err := readFrame(cs.ctl)
		if err != nil {
			if ec, ok := cs.Session.(interface{ endCause() error }); ok && ec.endCause() != nil {
				err = ec.endCause()
			}
			cs.setCause(fmt.Errorf("tunnel: control stream: %w", err))
			cs.Session.Close()
			return
		}
		a, err := decodeAnswer(b)
		if err != nil {
			cs.log.Debug("tunnel: ignoring control frame", "err", err)
			continue
		}
		if a.Type == typeGoAway && a.Code == codeDraining {
			// The session lives on for the exchanges in flight; the
			// relay ends it when they are done.
			select {
			case <-cs.relayDraining:
			default:
				cs.log.Info("tunnel: relay is draining", "message", truncate(a.Message, 200))
				close(cs.relayDraining)
			}
			continue
		}
		if a.Type == typeGoAway {
			if a.Code == codeReplaced {
				cs.setCause(ErrReplaced)
			} else {
				cs.setCause(fmt.Errorf("tunnel: relay ended the session (%s): %s", truncate(a.Code, 32), truncate(a.Message, 200)))
			}
			cs.Session.Close()
			return
		}
		// Frame types from newer relays are skipped.
	}
}

// heartbeat sends a ping frame every heartbeatInterval until the session
// ends. The relay needs no answer: the point is a packet at least every
// interval that is big enough to draw a stateless reset from a relay that
// restarted (QUIC's keep-alive PINGs are too small for one, RFC 9000
// §10.3), and, over yamux, a sign of life the relay's watchdog counts.
func (cs *clientSession) heartbeat() {
	defer close(cs.beatDone)
	t := time.NewTicker(heartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-cs.Session.Done():
			return
		case <-cs.readerDone:
			return
		case <-t.C:
		}
		// A write that cannot finish within the idle timeout means the
		// session is dead; its transport says so too, moments later.
		if err := cs.writeControl(answer{Type: typePing}, idleTimeout); err != nil {
			return
		}
	}
}

func (cs *clientSession) setCause(err error) {
	cs.mu.Lock()
	if cs.cause == nil {
		cs.cause = err
	}
	cs.mu.Unlock()
}

// Err says why the session ended, once it has.
func (cs *clientSession) Err() error {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.cause
}

func (cs *clientSession) Close() error {
	cs.ctl.Close()
	err := cs.Session.Close()
	<-cs.readerDone
	<-cs.beatDone
	return err
}

// listener is the Client's net.Listener.
type listener struct {
	addr   tunnelAddr
	ch     chan Stream
	closed chan struct{}
	once   sync.Once
}

func newListener(agent string) *listener {
	return &listener{addr: tunnelAddr(agent), ch: make(chan Stream), closed: make(chan struct{})}
}

func (l *listener) Accept() (net.Conn, error) {
	select {
	case <-l.closed:
		return nil, net.ErrClosed
	default:
	}
	select {
	case st := <-l.ch:
		return st, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *listener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *listener) Addr() net.Addr { return l.addr }

// deliver hands st to an Accept call; false means nobody will take it.
func (l *listener) deliver(st Stream, done <-chan struct{}) bool {
	select {
	case l.ch <- st:
		return true
	case <-l.closed:
		return false
	case <-done:
		return false
	}
}

// tunnelAddr names the agent's end of the tunnel.
type tunnelAddr string

func (a tunnelAddr) Network() string { return "mcptun" }
func (a tunnelAddr) String() string  { return "mcptun-agent:" + string(a) }
