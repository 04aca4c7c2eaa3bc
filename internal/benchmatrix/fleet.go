package benchmatrix

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	natsserver "github.com/nats-io/nats-server/v2/server"

	"github.com/mcptun/mcptun/internal/procs"
)

// PathForwarded: a client's relay holds no tunnel to the agent and
// forwards the exchange to the relay that does (relay.yaml cluster:),
// over the authenticated relay-to-relay link: client → relay B → relay A
// → native QUIC streams → agent → HTTP fixture. Its relay CPU is both
// relays'; compare with PathQUIC, the direct relay hit.
const PathForwarded = "forwarded"

// ExtraPaths are paths the matrix knows but does not run by default.
var ExtraPaths = []string{PathForwarded}

// fleetDeployment is two relays sharing a registry in a NATS server run
// in this process, and an agent connected to the first only.
type fleetDeployment struct {
	nats   *natsserver.Server
	procs  []*process
	target target
}

func (f *fleetDeployment) stop(stop func(*process)) {
	for i := len(f.procs) - 1; i >= 0; i-- {
		stop(f.procs[i])
	}
	if f.nats != nil {
		f.nats.Shutdown()
		f.nats.WaitForShutdown()
	}
}

// startFleet deploys PathForwarded in front of the fixture at httpURL
// (whose processes are server).
// On error what was started is in the returned deployment, to stop.
func (w *workspace) startFleet(ctx context.Context, httpURL string, server role) (*fleetDeployment, error) {
	f := &fleetDeployment{}
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: natsserver.RANDOM_PORT, NoLog: true, NoSigs: true})
	if err != nil {
		return f, fmt.Errorf("nats: %w", err)
	}
	go ns.Start() // returns at once; Shutdown stops what it started
	f.nats = ns
	if !ns.ReadyForConnections(startTimeout) {
		return f, fmt.Errorf("nats: not ready within %s", startTimeout)
	}
	secret := filepath.Join(w.dir, "cluster.secret")
	if err := os.WriteFile(secret, []byte(randomToken()+randomToken()+"\n"), 0o600); err != nil {
		return f, fmt.Errorf("cluster secret: %w", err)
	}
	spec := agentSpec{Name: PathForwarded, Transport: "quic", Mux: "native", token: randomToken()}
	var relays []*relayProc
	for _, name := range []string{"fleet-a", "fleet-b"} {
		extra := fmt.Sprintf("cluster: {name: %s, nats_url: %q, listen: \"127.0.0.1:0\", secret_file: %q}\n", name, ns.ClientURL(), secret)
		r, err := w.startRelayNamed(ctx, name, "127.0.0.1:0", []agentSpec{spec}, extra)
		if err != nil {
			return f, err
		}
		f.procs = append(f.procs, r.process)
		relays = append(relays, r)
	}
	ag, err := w.startAgent(ctx, relays[0], relays[0].TunnelAddr, spec, httpURL, "")
	if err != nil {
		return f, err
	}
	f.procs = append(f.procs, ag.process)
	// Relay B routes once the registry told it where the agent is.
	url := relays[1].HTTPURL + "/" + spec.Name + "/" + serverHTTP + "/mcp"
	if err := w.waitRouted(ctx, url); err != nil {
		return f, fmt.Errorf("forwarded: %w", err)
	}
	f.target = target{Path: PathForwarded, URL: url, Token: w.clientToken,
		roles: []role{{roleRelay, pidsOf(relays[0].Pid(), relays[1].Pid())}, {roleAgent, pidsOf(ag.Pid())}, server}}
	return f, nil
}

// startRelayNamed is startRelay with a config and log of their own and
// extra top-level YAML.
func (w *workspace) startRelayNamed(ctx context.Context, name, tunnelListen string, agents []agentSpec, extra string) (*relayProc, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "tunnel: {listen: %q, cert_file: relay.crt, key_file: relay.key}\n", tunnelListen)
	b.WriteString("http: {listen: \"127.0.0.1:0\"}\nagents:\n")
	for _, a := range agents {
		fmt.Fprintf(&b, "  - {name: %q, token_sha256: %q}\n", a.Name, sha256Hex(a.token))
	}
	fmt.Fprintf(&b, "clients:\n  - {name: bench, token_sha256: %q, allow: [\"*/*\"]}\n", sha256Hex(w.clientToken))
	b.WriteString("log: {level: info}\n")
	b.WriteString(extra)
	cfg := filepath.Join(w.dir, name+".yaml")
	if err := os.WriteFile(cfg, []byte(b.String()), 0o600); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	p, err := startProcessEnv(name, w.logPath(name), w.tunnelEnv, w.mcptun, "relay", "--config", cfg)
	if err != nil {
		return nil, err
	}
	m, err := p.WaitLine(ctx, procs.RelayStarted, startTimeout)
	if err != nil {
		_ = p.Stop()
		return nil, err
	}
	return &relayProc{process: p, TunnelAddr: m[1], HTTPURL: m[2]}, nil
}
