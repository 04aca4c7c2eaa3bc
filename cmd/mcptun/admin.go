package main

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/mcptun/mcptun/internal/admin"
	"github.com/mcptun/mcptun/internal/authguard"
	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/logging"
	"github.com/mcptun/mcptun/internal/metrics"
	"github.com/mcptun/mcptun/mcpproxy"
	"github.com/mcptun/mcptun/tunnel"
)

// newRegistry is a role's own metrics registry (never the global one),
// with the process and Go runtime collectors.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), collectors.NewGoCollector())
	return reg
}

// rates turns request counts into requests per second between two status
// calls (at least a second apart, so a page refreshing fast shows a rate).
type rates struct {
	mu   sync.Mutex
	prev map[string]rateMark
}

type rateMark struct {
	n  uint64
	at time.Time
	r  float64
}

func (r *rates) rate(key string, n uint64, now time.Time) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.prev == nil {
		r.prev = map[string]rateMark{}
	}
	p, ok := r.prev[key]
	if !ok {
		r.prev[key] = rateMark{n: n, at: now}
		return 0
	}
	if el := now.Sub(p.at); el >= time.Second {
		since := n - p.n
		if n < p.n {
			// A server a reload replaced counts from 0 again.
			since = n
		}
		p.r = float64(since) / el.Seconds()
		p.n, p.at = n, now
		r.prev[key] = p
	}
	return p.r
}

// relayAdmin is the relay's admin.Source.
type relayAdmin struct {
	rr      *runningRelay
	m       *metrics.Relay
	started time.Time
	rates   rates
}

func (a *relayAdmin) Ready() (bool, string) {
	switch {
	case a.rr.Handler.Draining() || a.rr.Tunnel.Draining():
		return false, "draining"
	case a.rr.HTTPURL == "":
		return false, "not listening yet"
	}
	return true, ""
}

func (a *relayAdmin) Status() *admin.Status {
	now := time.Now()
	ok, why := a.Ready()
	st := &admin.Status{Role: "relay", Version: version, Started: a.started, Ready: ok, NotReady: why,
		Servers: []admin.ServerStatus{}, Errors: []admin.Event{}}
	rtts := map[string]time.Duration{}
	for _, r := range a.rr.Tunnel.Stats() {
		if _, seen := rtts[r.Agent]; !seen || r.RTT > 0 {
			rtts[r.Agent] = r.RTT
		}
	}
	for _, ag := range a.rr.Tunnel.Agents() {
		as := admin.AgentStatus{Name: ag.Name, Replicas: len(ag.Replicas), Transport: ag.Transport, Remote: ag.Remote,
			ConnectedAt: ag.ConnectedAt, Draining: ag.Draining, RTTSeconds: rtts[ag.Name].Seconds(), Protocol: tunnel.ProtocolVersion,
			Version: ag.Software, Servers: []string{}}
		for _, s := range ag.Servers {
			as.Servers = append(as.Servers, s.Name)
		}
		st.Agents = append(st.Agents, as)
	}
	for _, f := range a.m.Servers() {
		n := f.Requests.Load()
		st.Servers = append(st.Servers, admin.ServerStatus{Agent: f.Agent, Name: f.Server, Requests: n, Errors: f.Errors.Load(),
			Streams: int(f.Streams.Load()), RatePerSecond: a.rates.rate(f.Agent+"/"+f.Server, n, now)})
	}
	slices.SortFunc(st.Servers, func(x, y admin.ServerStatus) int {
		return strings.Compare(x.Agent+"/"+x.Name, y.Agent+"/"+y.Name)
	})
	for _, e := range a.m.Errors() {
		st.Errors = append(st.Errors, admin.Event{At: e.At, Agent: e.Agent, Server: e.Server, Status: e.Status, Reason: e.Reason})
	}
	return st
}

// registerRelayGauges adds the relay's scrape-time metrics to reg.
// Per-agent series follow the agents configured now (a reload adds and
// removes them).
func registerRelayGauges(reg *prometheus.Registry, rr *runningRelay, agentGuard *authguard.Guard) {
	ts, h := rr.Tunnel, rr.Handler
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	perReplica := func(v func(tunnel.ReplicaStats) float64) func() []metrics.Sample {
		return func() []metrics.Sample {
			var out []metrics.Sample
			for _, r := range ts.Stats() {
				out = append(out, metrics.Sample{Value: v(r), Labels: []string{r.Agent, r.Tag, r.Transport}})
			}
			return out
		}
	}
	guardStats := func(v func(*authguard.Stats) uint64) func() []metrics.Sample {
		return func() []metrics.Sample {
			return []metrics.Sample{
				{Value: float64(v(h.AuthGuard().Stats())), Labels: []string{"client"}},
				{Value: float64(v(agentGuard.Stats())), Labels: []string{"agent"}},
			}
		}
	}
	reg.MustRegister(
		metrics.NewFunc("mcptun_relay_agents_connected", "Configured agents with at least one replica connected.", gauge, nil,
			metrics.One(func() float64 { return float64(len(ts.Agents())) })),
		metrics.NewFunc("mcptun_relay_agent_replicas", "Replicas (agent processes) connected, by agent.", gauge, []string{"agent"},
			func() []metrics.Sample {
				n := map[string]int{}
				for _, a := range ts.Agents() {
					n[a.Name] = len(a.Replicas)
				}
				var out []metrics.Sample
				for _, a := range h.KnownAgents() {
					out = append(out, metrics.Sample{Value: float64(n[a]), Labels: []string{a}})
				}
				return out
			}),
		metrics.NewFunc("mcptun_relay_tunnels", "Agent tunnel sessions up, by transport (quic, tcp+yamux, quic+yamux).", gauge, []string{"transport"},
			func() []metrics.Sample {
				n := map[string]int{tunnel.TransportQUIC: 0, tunnel.TransportTCPYamux: 0}
				for _, r := range ts.Stats() {
					n[r.Transport]++
				}
				out := []metrics.Sample{}
				for t, c := range n {
					out = append(out, metrics.Sample{Value: float64(c), Labels: []string{t}})
				}
				return out
			}),
		metrics.NewFunc("mcptun_relay_tunnel_rtt_seconds", "Round-trip time of an agent replica's tunnel (QUIC's smoothed RTT; the last keepalive ping over TCP).", gauge,
			[]string{"agent", "replica", "transport"}, perReplica(func(r tunnel.ReplicaStats) float64 { return r.RTT.Seconds() })),
		metrics.NewFunc("mcptun_relay_tunnel_sent_bytes_total", "Bytes sent to an agent replica on its tunnel session (QUIC's, or yamux's over TCP); 0 again after a reconnect.", counter,
			[]string{"agent", "replica", "transport"}, perReplica(func(r tunnel.ReplicaStats) float64 { return float64(r.BytesSent) })),
		metrics.NewFunc("mcptun_relay_tunnel_received_bytes_total", "Bytes received from an agent replica on its tunnel session (QUIC's, or yamux's over TCP); 0 again after a reconnect.", counter,
			[]string{"agent", "replica", "transport"}, perReplica(func(r tunnel.ReplicaStats) float64 { return float64(r.BytesReceived) })),
		metrics.NewFunc("mcptun_relay_requests_in_flight", "Forwarded exchanges in progress (GET streams aside).", gauge, nil,
			metrics.One(func() float64 { return float64(h.InFlight()) })),
		metrics.NewFunc("mcptun_relay_auth_failures_total", "Failed authentications: wrong bearer tokens (kind=client), refused agent handshakes (kind=agent).", counter,
			[]string{"kind"}, guardStats(func(s *authguard.Stats) uint64 { return s.Failures.Load() })),
		metrics.NewFunc("mcptun_relay_auth_throttled_total", "Attempts refused because their source address failed too often.", counter,
			[]string{"kind"}, guardStats(func(s *authguard.Stats) uint64 { return s.Throttled.Load() })),
		metrics.NewFunc("mcptun_relay_client_connections_open", "Client connections open.", gauge, nil,
			metrics.One(func() float64 { return float64(rr.fast.Open()) })),
		metrics.NewFunc("mcptun_relay_client_connections_refused_total", "Client connections refused at http.max_connections.", counter, nil,
			metrics.One(func() float64 { return float64(rr.fast.Stats().Refused.Load()) })),
		metrics.NewFunc("mcptun_relay_stalled_clients", "Clients of an agent that read nothing of their answer now.", gauge, []string{"agent"},
			func() []metrics.Sample {
				var out []metrics.Sample
				for _, a := range h.KnownAgents() {
					n, _ := h.StalledClients(a)
					out = append(out, metrics.Sample{Value: float64(n), Labels: []string{a}})
				}
				return out
			}),
		metrics.NewFunc("mcptun_relay_stalled_clients_cut_total", "Clients cut because their agent's budget of stalled clients was spent.", counter, []string{"agent"},
			func() []metrics.Sample {
				var out []metrics.Sample
				for _, a := range h.KnownAgents() {
					_, n := h.StalledClients(a)
					out = append(out, metrics.Sample{Value: float64(n), Labels: []string{a}})
				}
				return out
			}),
	)
}

// startAdmin starts a role's admin listener if admin.listen is set.
// level (nil: none, e.g. the demo) is what /api/loglevel changes.
func startAdmin(cfg config.Admin, reg *prometheus.Registry, src admin.Source, level *logging.Level, log *slog.Logger) (*admin.Server, error) {
	if cfg.Listen == "" {
		return nil, nil
	}
	ac := admin.Config{Listen: cfg.Listen, Token: cfg.Token, Registry: reg, Source: src, Logger: log.With("component", "admin")}
	if level != nil {
		ac.Level = level
	}
	return admin.Start(ac)
}

// agentAdmin is the agent's admin.Source.
type agentAdmin struct {
	name    string
	ra      *runningAgent
	started time.Time
	rates   rates
}

func (a *agentAdmin) Ready() (bool, string) {
	if a.ra.handler.Draining() {
		return false, "draining"
	}
	if a.ra.Relays.Connected() == 0 {
		return false, "no tunnel to a relay is up"
	}
	return true, ""
}

func (a *agentAdmin) Status() *admin.Status {
	now := time.Now()
	ok, why := a.Ready()
	st := &admin.Status{Role: "agent", Name: a.name, Version: version, Started: a.started, Ready: ok, NotReady: why,
		Servers: []admin.ServerStatus{}, Errors: []admin.Event{}}
	for _, t := range a.ra.Relays.Stats() {
		state := "down"
		switch {
		case t.DuplicateOf != "":
			state = "duplicate"
		case t.Removing:
			state = "removing"
		case t.Connected:
			state = "up"
		}
		st.Tunnels = append(st.Tunnels, admin.TunnelStatus{Relay: t.Address, Dial: t.Dial, State: state, Transport: t.Transport,
			RTTSeconds: t.RTT.Seconds(), Since: t.Since, Reconnects: t.Reconnects, Fallbacks: t.Fallbacks})
	}
	a.serverStatus(st, now)
	slices.SortFunc(st.Errors, func(x, y admin.Event) int { return y.At.Compare(x.At) })
	return st
}

// serverStatus adds the agent's servers, as served now (a reload may
// have changed them, their URLs among them), to st.
func (a *agentAdmin) serverStatus(st *admin.Status, now time.Time) {
	for _, s := range a.ra.handler.Stats() {
		ss := admin.ServerStatus{Name: s.Name, Kind: s.Kind, Requests: s.Requests, Errors: s.UpstreamErrors,
			Sessions: s.Sessions, Children: s.Children, Calls: s.Calls, LastError: s.LastError, Refusals: s.Refusals,
			RatePerSecond: a.rates.rate(s.Name, s.Requests, now)}
		if s.URL != "" {
			ss.Upstream = a.probeUpstream(s.Name)
		}
		st.Servers = append(st.Servers, ss)
		if s.LastError != "" {
			st.Errors = append(st.Errors, admin.Event{At: s.LastErrorAt, Server: s.Name, Message: s.LastError})
		}
	}
}

// probeUpstream says whether a url server can be reached, within a
// second (mcpproxy.Handler.ProbeUpstream: a connection, no request).
func (a *agentAdmin) probeUpstream(name string) string {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := a.ra.handler.ProbeUpstream(ctx, name); err != nil {
		return "unreachable: " + err.Error()
	}
	return "reachable"
}

// registerAgentGauges adds the agent's scrape-time metrics to reg.
func registerAgentGauges(reg *prometheus.Registry, ra *runningAgent) {
	gauge, counter := prometheus.GaugeValue, prometheus.CounterValue
	perServer := func(v func(mcpproxy.ServerStats) float64) func() []metrics.Sample {
		return func() []metrics.Sample {
			var out []metrics.Sample
			for _, s := range ra.handler.Stats() {
				out = append(out, metrics.Sample{Value: v(s), Labels: []string{s.Name, s.Kind}})
			}
			return out
		}
	}
	perTunnel := func(v func(tunnel.TunnelStats) float64) func() []metrics.Sample {
		return func() []metrics.Sample {
			var out []metrics.Sample
			for _, t := range ra.Relays.Stats() {
				out = append(out, metrics.Sample{Value: v(t), Labels: []string{t.Address, t.Dial}})
			}
			return out
		}
	}
	b := func(ok bool) float64 {
		if ok {
			return 1
		}
		return 0
	}
	sk, tk := []string{"server", "kind"}, []string{"relay", "dial"}
	reg.MustRegister(
		metrics.NewFunc("mcptun_agent_tunnels_up", "Tunnels to relays with an authenticated session.", gauge, nil,
			metrics.One(func() float64 { return float64(ra.Relays.Connected()) })),
		metrics.NewFunc("mcptun_agent_tunnel_up", "1 if the tunnel to this relay address is up.", gauge, tk,
			perTunnel(func(t tunnel.TunnelStats) float64 { return b(t.Connected) })),
		metrics.NewFunc("mcptun_agent_tunnel_rtt_seconds", "Round-trip time of the tunnel to a relay (QUIC's smoothed RTT; the last keepalive ping over TCP).", gauge, tk,
			perTunnel(func(t tunnel.TunnelStats) float64 { return t.RTT.Seconds() })),
		metrics.NewFunc("mcptun_agent_tunnel_reconnects_total", "Sessions made to a relay after the first.", counter, tk,
			perTunnel(func(t tunnel.TunnelStats) float64 { return float64(t.Reconnects) })),
		metrics.NewFunc("mcptun_agent_tunnel_fallbacks_total", "Sessions made over TLS/TCP because QUIC failed (transport auto).", counter, tk,
			perTunnel(func(t tunnel.TunnelStats) float64 { return float64(t.Fallbacks) })),
		metrics.NewFunc("mcptun_agent_tunnel_sent_bytes_total", "Bytes sent to a relay on the current tunnel session (QUIC's, or yamux's over TCP).", counter, tk,
			perTunnel(func(t tunnel.TunnelStats) float64 { return float64(t.BytesSent) })),
		metrics.NewFunc("mcptun_agent_tunnel_received_bytes_total", "Bytes received from a relay on the current tunnel session (QUIC's, or yamux's over TCP).", counter, tk,
			perTunnel(func(t tunnel.TunnelStats) float64 { return float64(t.BytesReceived) })),
		metrics.NewFunc("mcptun_agent_requests_total", "HTTP exchanges routed to a server.", counter, sk,
			perServer(func(s mcpproxy.ServerStats) float64 { return float64(s.Requests) })),
		metrics.NewFunc("mcptun_agent_refusals_total", "Exchanges the agent refused for one of a server's limits, by reason (rate_limited, session_limit, client_session_limit, concurrency_limit, client_concurrency_limit).", counter,
			[]string{"server", "kind", "reason"}, func() []metrics.Sample {
				var out []metrics.Sample
				for _, s := range ra.handler.Stats() {
					for _, r := range mcpproxy.LimitReasons {
						out = append(out, metrics.Sample{Value: float64(s.Refusals[r]), Labels: []string{s.Name, s.Kind, r}})
					}
				}
				return out
			}),
		metrics.NewFunc("mcptun_agent_upstream_errors_total", "Exchanges a url server failed (unreachable, or broke off).", counter, sk,
			perServer(func(s mcpproxy.ServerStats) float64 { return float64(s.UpstreamErrors) })),
		metrics.NewFunc("mcptun_agent_sessions", "MCP sessions open, by server.", gauge, sk,
			perServer(func(s mcpproxy.ServerStats) float64 { return float64(s.Sessions) })),
		metrics.NewFunc("mcptun_agent_stdio_children", "Child processes running, by stdio server.", gauge, sk,
			perServer(func(s mcpproxy.ServerStats) float64 { return float64(s.Children) })),
		metrics.NewFunc("mcptun_agent_calls_in_flight", "JSON-RPC requests in flight to a stdio server's children.", gauge, sk,
			perServer(func(s mcpproxy.ServerStats) float64 { return float64(s.Calls) })),
		metrics.NewFunc("mcptun_agent_requests_in_flight", "Exchanges in progress (GET streams aside).", gauge, nil,
			metrics.One(func() float64 { return float64(ra.handler.InFlight()) })),
	)
}
