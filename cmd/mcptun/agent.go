package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/admin"
	"github.com/mcptun/mcptun/internal/audit"
	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/logging"
	"github.com/mcptun/mcptun/mcpproxy"
	"github.com/mcptun/mcptun/tunnel"
)

func newAgentCmd() *cobra.Command {
	var path string
	var watch bool
	var quick exposeFlags
	cmd := &cobra.Command{
		Use:   "agent [--config agent.yaml | --relay HOST:PORT --name NAME --token-file F --pin SHA [--url NAME=URL]... [-- COMMAND ARGS...]]",
		Short: "Run the agent: dial out to the relay and serve the configured MCP servers",
		Long: `Run the agent: dial out to the relay and serve the configured MCP servers.

Quick expose, without a configuration file: give the relay, the agent's
name, its token and the relay's pin (or CA file), then the servers: a
command after -- (named by --server, or after the command), and/or
--url NAME=URL. The agent prints the URL clients use:

  mcptun agent --relay relay.example.com:7443 --name dc1 --token-file dc1.token \
    --pin 3f1c... -- npx -y @modelcontextprotocol/server-memory

` + configHelp("agent.yaml", config.AgentKeys()),
		Args: cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			// Before anything else: SIGHUP reloads, it never ends the agent.
			hup := notifyHUP()
			defer signal.Ignore(syscall.SIGHUP)
			var cfg *config.Agent
			var err error
			quickMode := quick.used(cmd, args)
			switch {
			case quickMode && cmd.Flags().Changed("config"):
				return fmt.Errorf("agent: give --config FILE or the quick expose flags (--relay, --name, ..., -- COMMAND), not both")
			case quickMode:
				cfg, err = quick.config(args)
			default:
				cfg, err = config.LoadAgent(path)
			}
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
			// The first signal ends ctx and starts the drain; the agent
			// itself runs on until the drain is over.
			ctx := cmd.Context()
			ra, err := startAgent(context.WithoutCancel(ctx), cfg, level, log)
			if err != nil {
				return err
			}
			var reloads sync.WaitGroup
			if quickMode {
				// No file to reload from; SIGHUP still never ends it.
				reloads.Go(func() {
					runReloads(ctx, hup, "", false, log, func(string) error {
						log.Info("SIGHUP: nothing to reload: quick expose runs without a configuration file")
						return nil
					})
				})
				done := make(chan struct{})
				go func() {
					defer close(done)
					printClientURLs(ctx, cmd.OutOrStdout(), ra, cfg)
				}()
				defer func() { <-done }()
			} else {
				rl := newReloader(path, cfg, config.LoadAgent, func(c *config.Agent) []*config.Error { return c.Warnings }, log,
					ra.reloadParts(cmd, level, log)...)
				reloads.Go(func() { runReloads(ctx, hup, path, watch, log, rl.reload) })
			}
			<-ctx.Done()
			reloads.Wait()
			grace, stop := drainContext(cfg.ShutdownGrace, log)
			defer stop()
			return ra.Shutdown(grace, log)
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "agent.yaml", "agent configuration file")
	cmd.Flags().BoolVar(&watch, "watch-config", true, "reload the configuration when its file changes (SIGHUP always reloads)")
	quick.register(cmd)
	return cmd
}

// runningAgent is a started agent: a tunnel to each relay and the one MCP
// endpoint served on the streams all the relays open.
type runningAgent struct {
	Relays  *tunnel.Multi
	handler *mcpproxy.Handler
	serve   *httpfwd.ConnServer
	http    *http.Server
	debug   *debugServer
	audit   *audit.Log // nil: off
	log     *slog.Logger
	admin   *admin.Server
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

func startAgent(ctx context.Context, cfg *config.Agent, level *logging.Level, log *slog.Logger) (*runningAgent, error) {
	// An empty server name: each relay is verified by the host of its
	// own relay.address entry (see tunnel.MultiConfig).
	tlsConf, err := tunnel.ClientTLS(cfg.Relay.ServerName, cfg.Relay.CAFile, cfg.Relay.PinSHA256)
	if err != nil {
		return nil, err
	}
	servers, offered := agentServers(cfg)
	trail, err := openAudit(cfg, log)
	if err != nil {
		return nil, err
	}
	handler, err := mcpproxy.NewHandler(servers, mcpproxy.Options{
		Audit:       trail,
		Logger:      log.With("component", "mcp"),
		IdleTimeout: cfg.IdleTimeout,
		// The relay sends every exchange with Host: <agent name>.
		AllowedHosts:     []string{cfg.Name},
		AllowedOrigins:   cfg.AllowedOrigins,
		UpstreamNetworks: cfg.UpstreamPrefixes,
		PinFile:          cfg.PinFile,
	})
	if err != nil {
		closeAudit(trail, log)
		return nil, err
	}
	relays, err := tunnel.NewMulti(tunnel.MultiConfig{
		Client: tunnel.ClientConfig{
			Name:        cfg.Name,
			Token:       cfg.Relay.Token,
			Key:         cfg.Relay.Key,
			Certificate: cfg.Relay.Certificate,
			TLSConfig:   tlsConf,
			Transport:   cfg.Relay.Transport,
			Mux:         cfg.Relay.Mux,
			Servers:     offered,
			Software:    "mcptun " + version,
			Logger:      log.With("component", "tunnel"),
		},
		Addresses:       cfg.Relay.Address,
		ResolveInterval: cfg.Relay.ResolveInterval,
		RemoveGrace:     cfg.ShutdownGrace,
		Connections:     cfg.Relay.Connections,
	})
	if err != nil {
		_ = handler.Close()
		closeAudit(trail, log)
		return nil, err
	}
	ra := &runningAgent{Relays: relays, handler: handler, audit: trail, log: log}
	runCtx, cancel := context.WithCancel(ctx)
	ra.cancel = cancel
	// Exchanges for url: servers are answered on the streams themselves;
	// the http.Server serves the rest (see mcpproxy.Handler.ServeConn).
	ra.serve = httpfwd.NewConnServer(handler.ServeConn, relays.Listener().Addr())
	ra.http = &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 30 * time.Second,
		// Longer than the relay keeps a stream in its pool (60 s), so the
		// relay never picks a stream the agent is closing.
		IdleTimeout: 5 * time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	ra.wg.Add(1)
	go func() {
		defer ra.wg.Done()
		if err := relays.Run(runCtx); err != nil {
			log.Error("tunnels stopped", "err", err)
		}
	}()
	serveFront(&ra.wg, log.With("component", "streams"), ra.serve, ra.http, relays.Listener())
	if cfg.Debug.PprofListen != "" {
		ra.debug, err = startDebug(cfg.Debug.PprofListen, log)
		if err != nil {
			_ = ra.Close()
			return nil, err
		}
	}
	reg := newRegistry()
	registerAgentGauges(reg, ra)
	ra.admin, err = startAdmin(cfg.Admin, reg, &agentAdmin{name: cfg.Name, ra: ra, started: time.Now()}, level, log)
	if err != nil {
		_ = ra.Close()
		return nil, err
	}
	log.Info("agent started", "name", cfg.Name, "relays", cfg.Relay.Address, "servers", len(servers))
	return ra, nil
}

// agentServers is what the agent serves and offers, from its
// configuration (at start and on every reload).
func agentServers(cfg *config.Agent) ([]mcpproxy.ServerConfig, []tunnel.OfferedServer) {
	servers := make([]mcpproxy.ServerConfig, len(cfg.Servers))
	offered := make([]tunnel.OfferedServer, len(cfg.Servers))
	for i, s := range cfg.Servers {
		servers[i] = mcpproxy.ServerConfig{Name: s.Name, Command: s.Command, Env: s.Env, Dir: s.Dir, URL: s.URL, Headers: s.Headers,
			Rate: s.RateLimit.RequestsPerSecond, Burst: s.RateLimit.Burst,
			Limits: mcpproxy.Limits{Sessions: s.Limits.Sessions, SessionsPerClient: s.Limits.SessionsPerClient,
				ConcurrentRequests: s.Limits.ConcurrentRequests, ConcurrentRequestsPerClient: s.Limits.ConcurrentRequestsPerClient},
			Policy: serverPolicy(s)}
		kind := "http"
		if len(s.Command) > 0 {
			kind = "stdio"
		}
		offered[i] = tunnel.OfferedServer{Name: s.Name, Kind: kind}
	}
	return servers, offered
}

// Shutdown drains the agent, then closes it: the relay is told to route it
// no new exchanges (those that still come get 503 agent_draining), and the
// exchanges in progress — stdio calls, calls to url servers — finish until
// grace ends. Open GET streams are not waited for: they end with the agent.
func (ra *runningAgent) Shutdown(grace context.Context, log *slog.Logger) error {
	start := time.Now()
	ra.handler.Drain()
	if err := ra.Relays.Drain(); err != nil {
		log.Warn("cannot tell every relay the agent drains", "err", err)
	}
	log.Info("agent draining", "in_flight", ra.handler.InFlight(), "grace", graceLeft(grace))
	flush := time.Duration(0)
	if err := ra.handler.Wait(grace); err != nil {
		log.Warn("agent shutdown grace over: cutting the exchanges still in progress",
			"in_flight", ra.handler.InFlight(), "waited", time.Since(start).Round(time.Millisecond))
		flush = cutFlush
	} else {
		log.Info("agent drained", "took", time.Since(start).Round(time.Millisecond))
	}
	return ra.close(flush)
}

// cutFlush is how long an agent whose grace ran out gives the error
// answers of the stdio calls it cut to go out (they are written at once;
// this is a bound) before it closes the streams, which also cuts the calls
// to url servers still running.
const cutFlush = 500 * time.Millisecond

// Close ends all MCP sessions (killing their children; their calls in
// progress are answered with an error), disconnects from the relay and
// waits.
func (ra *runningAgent) Close() error { return ra.close(closeTimeout) }

// close is Close giving the answers being written up to flush to go out
// before the streams and the tunnel close.
func (ra *runningAgent) close(flush time.Duration) error {
	err := ra.handler.Close()
	ctx, cancel := context.WithTimeout(context.Background(), flush)
	defer cancel()
	_ = ra.serve.Shutdown(ctx)
	if ra.http.Shutdown(ctx) != nil {
		_ = ra.http.Close()
	}
	ra.cancel()
	_ = ra.Relays.Listener().Close()
	ra.debug.Close()
	ra.admin.Close()
	ra.wg.Wait()
	// Last: the exchanges cut above wrote their lines.
	closeAudit(ra.audit, ra.log)
	return err
}
