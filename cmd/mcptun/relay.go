package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/relay"
	"github.com/mcptun/mcptun/tunnel"
)

func newRelayCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run the relay: accept agent tunnels and MCP clients",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadRelay(path)
			if err != nil {
				return err
			}
			log, err := newLogger(cmd, cfg.Log)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			tlsCert, err := tls.LoadX509KeyPair(cfg.Tunnel.CertFile, cfg.Tunnel.KeyFile)
			if err != nil {
				return fmt.Errorf("config %s: tunnel.cert_file: %w", path, err)
			}
			var httpCert *tls.Certificate
			if cfg.HTTP.CertFile != "" {
				c, err := tls.LoadX509KeyPair(cfg.HTTP.CertFile, cfg.HTTP.KeyFile)
				if err != nil {
					return fmt.Errorf("config %s: http.cert_file: %w", path, err)
				}
				httpCert = &c
			}
			rr, err := startRelay(ctx, cfg, tlsCert, httpCert, log)
			if err != nil {
				return err
			}
			<-ctx.Done()
			log.Info("relay stopping")
			return rr.Close()
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "relay.yaml", "relay configuration file")
	return cmd
}

// runningRelay is a started relay: tunnel listener, HTTP front, debug server.
type runningRelay struct {
	Tunnel  *tunnel.Server
	Handler *relay.Handler
	HTTPURL string // base URL of the HTTP front, e.g. http://127.0.0.1:8080

	fast  *httpfwd.ConnServer
	http  *http.Server
	debug *debugServer
	wg    sync.WaitGroup
}

// tunnelAgents adapts the tunnel server to what the relay front needs.
type tunnelAgents struct{ srv *tunnel.Server }

func (a tunnelAgents) Offers(agent, server string) (bool, bool) {
	return a.srv.Offers(agent, server)
}

func (a tunnelAgents) Dial(ctx context.Context, agent string) (net.Conn, error) {
	return a.srv.Dial(ctx, agent)
}

func startRelay(ctx context.Context, cfg *config.Relay, tunnelCert tls.Certificate, httpCert *tls.Certificate, log *slog.Logger) (*runningRelay, error) {
	creds := make([]tunnel.AgentCredential, len(cfg.Agents))
	known := make([]string, len(cfg.Agents))
	for i, a := range cfg.Agents {
		sum, _ := config.DecodeSHA256Hex(a.TokenSHA256) // validated by config
		creds[i] = tunnel.AgentCredential{Name: a.Name, TokenSHA256: sum}
		known[i] = a.Name
	}
	clients := make([]relay.Client, len(cfg.Clients))
	for i, c := range cfg.Clients {
		sum, _ := config.DecodeSHA256Hex(c.TokenSHA256)
		clients[i] = relay.Client{Name: c.Name, TokenSHA256: sum, Allow: c.Allow,
			Rate: c.RateLimit.RequestsPerSecond, Burst: c.RateLimit.Burst}
	}

	rr := &runningRelay{}
	// The tunnel reports agents going away before the front exists; the
	// front is set right after, and an agent cannot have connected yet.
	var front struct {
		sync.Mutex
		h *relay.Handler
	}
	ts, err := tunnel.Listen(ctx, tunnel.ServerConfig{
		Listen:      cfg.Tunnel.Listen,
		TLSConfig:   &tls.Config{Certificates: []tls.Certificate{tunnelCert}},
		Agents:      creds,
		DisableQUIC: cfg.Tunnel.DisableQUIC,
		Logger:      log.With("component", "tunnel"),
		OnAgentChange: func(name string, up bool) {
			front.Lock()
			h := front.h
			front.Unlock()
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
	h, err := relay.NewHandler(relay.Config{
		Agents:         tunnelAgents{ts},
		KnownAgents:    known,
		Clients:        clients,
		AllowedOrigins: cfg.HTTP.AllowedOrigins,
		Logger:         log.With("component", "http"),
	})
	if err != nil {
		_ = ts.Close()
		return nil, err
	}
	front.Lock()
	front.h = h
	front.Unlock()
	rr.Handler = h

	ln, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		_ = ts.Close()
		return nil, fmt.Errorf("relay: http listen: %w", err)
	}
	scheme := "http"
	if httpCert != nil {
		scheme = "https"
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{*httpCert}, MinVersion: tls.VersionTLS12})
	}
	rr.HTTPURL = scheme + "://" + ln.Addr().String()
	// Admitted MCP exchanges are forwarded on the client connection
	// itself; the http.Server serves the rest (see relay.Handler.ServeConn).
	rr.fast = httpfwd.NewConnServer(h.ServeConn, ln.Addr())
	rr.http = &http.Server{
		Handler:           h,
		ReadHeaderTimeout: relay.ClientHeaderTimeout,
		IdleTimeout:       relay.ClientIdleTimeout,
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
	log.Info("relay started", "tunnel", ts.Addr(), "http", rr.HTTPURL, "agents", len(creds), "clients", len(clients))
	return rr, nil
}

// Close stops accepting, ends agent sessions and waits for the servers.
func (rr *runningRelay) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// Long SSE streams never go idle: after a grace period, cut them.
	_ = rr.fast.Shutdown(ctx)
	if err := rr.http.Shutdown(ctx); err != nil {
		_ = rr.http.Close()
	}
	err := rr.Tunnel.Close()
	rr.Handler.Close()
	rr.debug.Close()
	rr.wg.Wait()
	return err
}
