package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"

	"github.com/nats-io/nats.go"

	"github.com/mcptun/mcptun/internal/cluster"
	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/relay"
	"github.com/mcptun/mcptun/tunnel"
)

// fleetNode is a relay's part in a fleet (relay.yaml cluster:): its
// registry in NATS, its links to peers, and the server of the exchanges
// peers forward to it. It is relay.Peers for the relay's front.
type fleetNode struct {
	reg    *cluster.Registry
	dialer *cluster.Dialer
	ln     *cluster.Listener
	srv    *http.Server
	log    *slog.Logger
	wg     sync.WaitGroup
}

// startFleet joins the fleet: the peer listener is bound and the registry
// announces what ts holds; serve starts answering peers once the front
// exists.
func startFleet(ctx context.Context, cc config.RelayCluster, ts *tunnel.Server, log *slog.Logger) (*fleetNode, error) {
	log = log.With("component", "cluster")
	link := cluster.LinkConfig{Relay: ts.ID(), Secret: cc.Secret, Logger: log}
	d, err := cluster.NewDialer(link)
	if err != nil {
		return nil, err
	}
	ln, err := cluster.Listen(link, cc.Listen)
	if err != nil {
		return nil, err
	}
	// Listening on port 0 (tests) with the advertised address left to
	// default: peers dial the port bound.
	if host, port, err := net.SplitHostPort(cc.Advertise); err == nil && port == "0" {
		_, bound, _ := net.SplitHostPort(ln.Addr().String())
		cc.Advertise = net.JoinHostPort(host, bound)
	}
	var opts []nats.Option
	if cc.NATSCredsFile != "" {
		opts = append(opts, nats.UserCredentials(cc.NATSCredsFile))
	}
	if cc.NATSCAFile != "" {
		opts = append(opts, nats.RootCAs(cc.NATSCAFile))
	}
	reg, err := cluster.NewRegistry(ctx, cluster.RegistryConfig{
		URL: cc.NATSURL, NATSOptions: opts, Relay: ts.ID(), Name: cc.Name, Advertise: cc.Advertise,
		Secret: cc.Secret, Logger: log,
		Holdings: func() cluster.Holdings {
			out := cluster.Holdings{}
			for _, a := range ts.Agents() {
				tags := make([]string, 0, len(a.Replicas))
				for _, r := range a.Replicas {
					tags = append(tags, r.Tag)
				}
				out[a.Name] = tags
			}
			return out
		},
	})
	if err != nil {
		_ = ln.Close()
		return nil, err
	}
	return &fleetNode{reg: reg, dialer: d, ln: ln, log: log}, nil
}

// serve answers the exchanges peers forward, with h.
func (f *fleetNode) serve(h *relay.Handler, hc config.RelayHTTP) {
	f.srv = &http.Server{
		Handler:           h.PeerHandler(),
		ReadHeaderTimeout: hc.HeaderTimeout,
		IdleTimeout:       hc.IdleTimeout,
		ErrorLog:          slog.NewLogLogger(f.log.Handler(), slog.LevelDebug),
	}
	f.wg.Go(func() {
		if err := f.srv.Serve(f.ln); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			f.log.Error("cluster: peer server", "err", err)
		}
	})
}

// Lookup implements relay.Peers.
func (f *fleetNode) Lookup(agent, tag string) []string {
	peers := f.reg.Lookup(agent, tag)
	out := make([]string, len(peers))
	for i, p := range peers {
		out[i] = p.Addr
	}
	return out
}

// Dial implements relay.Peers.
func (f *fleetNode) Dial(ctx context.Context, addr string) (net.Conn, error) {
	return f.dialer.Dial(ctx, addr)
}

// changed announces an agent's coming or going at once.
func (f *fleetNode) changed() { f.reg.Changed() }

// leave tells the fleet this relay drains: peers forward it nothing new.
func (f *fleetNode) leave() { f.reg.Leave() }

// Close leaves the fleet and stops serving peers (their exchanges in
// flight are cut: the relay is closing).
func (f *fleetNode) Close(ctx context.Context) error {
	if f == nil {
		return nil
	}
	err := f.reg.Close()
	if f.srv != nil {
		if serr := f.srv.Shutdown(ctx); serr != nil {
			_ = f.srv.Close()
		}
	}
	if cerr := f.ln.Close(); cerr != nil && !errors.Is(cerr, net.ErrClosed) && err == nil {
		err = fmt.Errorf("cluster: close listener: %w", cerr)
	}
	f.wg.Wait()
	return err
}
