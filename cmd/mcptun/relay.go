package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/admin"
	"github.com/mcptun/mcptun/internal/agentkey"
	"github.com/mcptun/mcptun/internal/authguard"
	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/logging"
	"github.com/mcptun/mcptun/internal/metrics"
	"github.com/mcptun/mcptun/relay"
	"github.com/mcptun/mcptun/tunnel"
)

func newRelayCmd() *cobra.Command {
	var path string
	var watch bool
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run the relay: accept agent tunnels and MCP clients",
		Long:  "Run the relay: accept agent tunnels and MCP clients.\n\n" + configHelp("relay.yaml", config.RelayKeys()),
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			// Before anything else: SIGHUP reloads, it never ends the relay.
			hup := notifyHUP()
			defer signal.Ignore(syscall.SIGHUP)
			cfg, err := config.LoadRelay(path)
			if err != nil {
				return err
			}
			log, level, err := newLeveledLogger(cmd, cfg.Log)
			if err != nil {
				return err
			}
			// SIGUSR1: debug, SIGUSR2: the configured level, while the
			// role runs (its drain included).
			defer logging.WatchSignals(context.Background(), level, log)()
			logWarnings(log, cfg.Warnings)
			ctx := cmd.Context()
			tlsCert, httpCert, err := loadRelayCerts(path, cfg)
			if err != nil {
				return err
			}
			// The first signal ends ctx and starts the drain; the relay
			// itself runs on until the drain is over.
			rr, err := startRelay(context.WithoutCancel(ctx), cfg, tlsCert, httpCert, level, log)
			if err != nil {
				return err
			}
			rl := newReloader(path, cfg, config.LoadRelay, func(c *config.Relay) []*config.Error { return c.Warnings }, log,
				rr.reloadParts(cmd, level, path, log)...)
			var reloads sync.WaitGroup
			reloads.Go(func() { runReloads(ctx, hup, path, watch, log, rl.reload) })
			<-ctx.Done()
			reloads.Wait()
			grace, stop := drainContext(cfg.ShutdownGrace, log)
			defer stop()
			return rr.Shutdown(grace, log)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "relay.yaml", "relay configuration file")
	cmd.Flags().BoolVar(&watch, "watch-config", true, "reload the configuration when its file changes (SIGHUP always reloads)")
	return cmd
}

// runningRelay is a started relay: tunnel listener, HTTP front, debug server.
type runningRelay struct {
	Tunnel  *tunnel.Server
	Handler *relay.Handler
	HTTPURL string // base URL of the HTTP front, e.g. http://127.0.0.1:8080

	ln    net.Listener // the HTTP front's
	fleet *fleetNode   // nil without cluster:
	fast  *httpfwd.ConnServer
	http  *http.Server
	debug *debugServer
	admin *admin.Server
	wg    sync.WaitGroup

	tunnelCert, httpCert atomic.Pointer[tls.Certificate] // served now; see startRelay
}

func (rr *runningRelay) getTunnelCert(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return rr.tunnelCert.Load(), nil
}

func (rr *runningRelay) getHTTPCert(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return rr.httpCert.Load(), nil
}

// tunnelAgents adapts the tunnel server to what the relay front needs.
type tunnelAgents struct{ srv *tunnel.Server }

func (a tunnelAgents) Offers(agent, server string) (bool, bool) {
	return a.srv.Offers(agent, server)
}

func (a tunnelAgents) Dial(ctx context.Context, agent string) (net.Conn, error) {
	return a.srv.Dial(ctx, agent)
}

func (a tunnelAgents) AgentDraining(agent string) bool { return a.srv.AgentDraining(agent) }

// AgentTransport is for the relay's access line.
func (a tunnelAgents) AgentTransport(agent string) string { return a.srv.Transport(agent) }

func (a tunnelAgents) PickReplica(agent, server, tag string) (string, relay.ReplicaRoute) {
	tag, route := a.srv.Route(agent, server, tag)
	switch route {
	case tunnel.RouteOK:
		return tag, relay.ReplicaOK
	case tunnel.RouteDraining:
		return "", relay.ReplicaDraining
	case tunnel.RouteSessionGone:
		return "", relay.ReplicaSessionGone
	}
	return "", relay.ReplicaOffline
}

func (a tunnelAgents) DialReplica(ctx context.Context, agent, replica string) (net.Conn, error) {
	return a.srv.DialReplica(ctx, agent, replica)
}

func startRelay(ctx context.Context, cfg *config.Relay, tunnelCert tls.Certificate, httpCert *tls.Certificate, level *logging.Level, log *slog.Logger) (*runningRelay, error) {
	cfg.HTTP.SetLimitDefaults() // a config made in code (demo) was not validated
	creds, known, clients, err := relayAuth(cfg)
	if err != nil {
		return nil, err
	}

	rr := &runningRelay{}
	// Served through GetCertificate so that a reload can replace them
	// (see reloadParts); new handshakes get the new one.
	rr.tunnelCert.Store(&tunnelCert)
	rr.httpCert.Store(httpCert)
	reg := newRegistry()
	relayMetrics := metrics.NewRelay(reg)
	agentGuard := authguard.New(authguard.Config{What: "agent handshake", Logger: log.With("component", "tunnel")})
	// The tunnel reports agents going away before the front exists; the
	// front is set right after, and an agent cannot have connected yet.
	var front struct {
		sync.Mutex
		h     *relay.Handler
		fleet *fleetNode
	}
	ts, err := tunnel.Listen(ctx, tunnel.ServerConfig{
		Listen:      cfg.Tunnel.Listen,
		TLSConfig:   &tls.Config{GetCertificate: rr.getTunnelCert},
		Agents:      creds,
		DisableQUIC: cfg.Tunnel.DisableQUIC,
		Fleet:       cfg.Cluster.Enabled(),
		Logger:      log.With("component", "tunnel"),
		AuthGuard:   agentGuard,
		OnAgentChange: func(name string, up bool) {
			front.Lock()
			h, fleet := front.h, front.fleet
			front.Unlock()
			if fleet != nil {
				fleet.changed()
			}
			// Down: the pooled streams are dead. Up: a newer session may
			// have replaced one (an agent moving back to QUIC), and pooled
			// streams of the old one would keep new exchanges on it and
			// keep it from draining; exchanges in flight finish there.
			if h != nil {
				h.AgentDown(name)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("relay: tunnel listen: %w", err)
	}
	rr.Tunnel = ts
	var peers relay.Peers
	if cfg.Cluster.Enabled() {
		rr.fleet, err = startFleet(ctx, cfg.Cluster, ts, log)
		if err != nil {
			_ = ts.Close()
			return nil, fmt.Errorf("relay: cluster: %w", err)
		}
		peers = rr.fleet
		front.Lock()
		front.fleet = rr.fleet
		front.Unlock()
	}
	h, err := relay.NewHandler(relay.Config{
		Peers:          peers,
		Name:           cfg.Cluster.Name,
		Agents:         tunnelAgents{ts},
		KnownAgents:    known,
		Clients:        clients,
		AllowedOrigins: cfg.HTTP.AllowedOrigins,
		Logger:         log.With("component", "http"),
		Limits: relay.Limits{
			HeaderTimeout: cfg.HTTP.HeaderTimeout,
			IdleTimeout:   cfg.HTTP.IdleTimeout,
			BodyTimeout:   cfg.HTTP.BodyTimeout,
			WriteTimeout:  cfg.HTTP.WriteTimeout,
		},
		OAuth:    relayOAuth(&cfg.OAuth),
		Observer: relayMetrics,
	})
	if err != nil {
		_ = rr.fleet.Close(ctx)
		_ = ts.Close()
		return nil, err
	}
	front.Lock()
	front.h = h
	front.Unlock()
	rr.Handler = h
	if rr.fleet != nil {
		rr.fleet.serve(h, cfg.HTTP)
	}

	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		_ = rr.fleet.Close(ctx)
		_ = ts.Close()
		return nil, fmt.Errorf("relay: http listen: %w", err)
	}
	scheme := "http"
	if httpCert != nil {
		scheme = "https"
		ln = tls.NewListener(ln, &tls.Config{GetCertificate: rr.getHTTPCert, MinVersion: tls.VersionTLS12})
	}
	rr.HTTPURL = scheme + "://" + ln.Addr().String()
	if cfg.HTTP.PublicURL != "" {
		ts.SetClientURL(strings.TrimRight(cfg.HTTP.PublicURL, "/"))
	} else {
		ts.SetClientURL(rr.HTTPURL) // an unspecified host: agents put in the one they dialed
	}
	rr.ln = ln
	// Admitted MCP exchanges are forwarded on the client connection
	// itself; the http.Server serves the rest (see relay.Handler.ServeConn).
	rr.fast = httpfwd.NewConnServer(h.ServeConn, ln.Addr())
	rr.fast.MaxConns = cfg.HTTP.MaxConnections
	rr.fast.Busy = relay.TooManyConnections(cfg.HTTP.MaxConnections)
	rr.fast.Logger = log.With("component", "http")
	rr.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: cfg.HTTP.HeaderTimeout,
		IdleTimeout:       cfg.HTTP.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	serveFront(&rr.wg, log.With("component", "http"), rr.fast, rr.http, ln)
	if cfg.Debug.PprofListen != "" {
		rr.debug, err = startDebug(cfg.Debug.PprofListen, log)
		if err != nil {
			_ = rr.Close()
			return nil, err
		}
	}
	registerRelayGauges(reg, rr, agentGuard)
	rr.admin, err = startAdmin(cfg.Admin, reg, &relayAdmin{rr: rr, m: relayMetrics, started: time.Now()}, level, log)
	if err != nil {
		_ = rr.Close()
		return nil, err
	}
	attrs := []any{"tunnel", ts.Addr(), "http", rr.HTTPURL, "agents", len(creds), "clients", len(clients)}
	if rr.fleet != nil {
		attrs = append(attrs, "relay", ts.ID(), "name", cfg.Cluster.Name, "cluster", rr.fleet.ln.Addr().String())
	}
	log.Info("relay started", attrs...)
	return rr, nil
}

// loadRelayCerts loads the tunnel's certificate and the HTTP front's, if
// it has one (at start and on every reload).
func loadRelayCerts(path string, cfg *config.Relay) (tls.Certificate, *tls.Certificate, error) {
	tlsCert, err := tls.LoadX509KeyPair(cfg.Tunnel.CertFile, cfg.Tunnel.KeyFile)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("config %s: tunnel.cert_file: %w", path, err)
	}
	var httpCert *tls.Certificate
	if cfg.HTTP.CertFile != "" {
		c, err := tls.LoadX509KeyPair(cfg.HTTP.CertFile, cfg.HTTP.KeyFile)
		if err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("config %s: http.cert_file: %w", path, err)
		}
		httpCert = &c
	}
	return tlsCert, httpCert, nil
}

// relayAuth is who may use the relay, from its configuration (at start
// and on every reload): agent credentials, agent names, clients.
func relayAuth(cfg *config.Relay) (creds []tunnel.AgentCredential, known []string, clients []relay.Client, err error) {
	known = make([]string, len(cfg.Agents))
	for i, a := range cfg.Agents {
		// Each credential is one replica's; all validated by config.
		for _, h := range a.TokenSHA256 {
			sum, _ := config.DecodeSHA256Hex(h)
			creds = append(creds, tunnel.AgentCredential{Name: a.Name, TokenSHA256: sum})
		}
		for _, k := range a.PublicKeys {
			pub, err := agentkey.ParsePublic(k)
			if err != nil {
				return nil, nil, nil, fmt.Errorf("relay: agents %s: public_keys: %w", a.Name, err)
			}
			creds = append(creds, tunnel.AgentCredential{Name: a.Name, PublicKey: pub})
		}
		for _, h := range a.CertSHA256 {
			sum, _ := config.DecodeSHA256Hex(h)
			creds = append(creds, tunnel.AgentCredential{Name: a.Name, CertSHA256: sum})
		}
		known[i] = a.Name
	}
	clients = make([]relay.Client, len(cfg.Clients))
	for i, c := range cfg.Clients {
		sum, _ := config.DecodeSHA256Hex(c.TokenSHA256)
		clients[i] = relay.Client{Name: c.Name, TokenSHA256: sum, Allow: c.Allow,
			Rate: c.RateLimit.RequestsPerSecond, Burst: c.RateLimit.Burst}
	}
	return creds, known, clients, nil
}

// Shutdown drains the relay, then closes it: new exchanges get 503
// relay_draining, no new client connection or agent is accepted, agents
// are told (so they connect again elsewhere, or to the relay's
// replacement), and the exchanges in flight finish until grace ends. Open
// GET streams are not waited for: they end with the relay, and clients
// resume them with Last-Event-ID.
func (rr *runningRelay) Shutdown(grace context.Context, log *slog.Logger) error {
	start := time.Now()
	rr.Handler.Drain()
	rr.Tunnel.Drain()
	if rr.fleet != nil {
		rr.fleet.leave()
	}
	// Stop accepting; connections already open are answered 503 (and
	// closed) if they send another request.
	_ = rr.ln.Close()
	log.Info("relay draining", "in_flight", rr.Handler.InFlight(), "grace", graceLeft(grace))
	if err := rr.Handler.Wait(grace); err != nil {
		log.Warn("relay shutdown grace over: cutting the exchanges still in flight",
			"in_flight", rr.Handler.InFlight(), "waited", time.Since(start).Round(time.Millisecond))
	} else {
		log.Info("relay drained", "took", time.Since(start).Round(time.Millisecond))
	}
	return rr.Close()
}

// Close ends agent sessions, which cuts the exchanges in flight (answered
// 503 relay_shutdown where no answer began), closes client connections
// and waits for the servers.
func (rr *runningRelay) Close() error {
	rr.Handler.Close()
	err := rr.Tunnel.Close()
	// What is left are answers being written: give them a moment.
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if ferr := rr.fleet.Close(ctx); ferr != nil && err == nil {
		err = ferr
	}
	_ = rr.fast.Shutdown(ctx)
	if err := rr.http.Shutdown(ctx); err != nil {
		_ = rr.http.Close()
	}
	rr.debug.Close()
	rr.admin.Close()
	rr.wg.Wait()
	return err
}

// relayOAuth is the relay's OAuth settings from relay.yaml (nil: off).
func relayOAuth(o *config.RelayOAuth) *relay.OAuth {
	if !o.Enabled() {
		return nil
	}
	rules := make([]relay.OAuthRule, len(o.ClaimRules))
	for i, r := range o.ClaimRules {
		rules[i] = relay.OAuthRule{Claim: r.Claim, Value: r.Value, Allow: r.Allow}
	}
	return &relay.OAuth{
		Issuer:               o.Issuer,
		JWKSURL:              o.JWKSURL,
		JWKS:                 o.JWKS,
		PublicURL:            o.PublicURL,
		Audiences:            o.Audience,
		RequiredScopes:       o.RequiredScopes,
		ScopesSupported:      o.ScopesSupported,
		IdentityClaim:        o.IdentityClaim,
		Algorithms:           o.Algorithms,
		Allow:                o.Allow,
		Rules:                rules,
		AuthorizationServers: o.AuthorizationServers,
		Leeway:               o.Leeway,
		Rate:                 o.RateLimit.RequestsPerSecond,
		Burst:                o.RateLimit.Burst,
	}
}
