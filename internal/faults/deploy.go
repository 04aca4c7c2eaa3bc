package faults

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mcptun/mcptun/internal/devcert"
	"github.com/mcptun/mcptun/internal/procs"
)

// Server names every agent offers.
const (
	serverStdio = "stdio" // the stdio bridge, a fixture child per session
	serverHTTP  = "http"  // reverse proxy to the HTTP fixture (the upstream)
)

// agentNames are the agents of the deployment, one per tunnel transport;
// each name is also the transport its config forces.
var agentNames = []string{"quic", "tcp"}

// startTimeout bounds how long a process may take to print its address.
const startTimeout = 30 * time.Second

// node is one relay or agent process, restartable with the same config:
// the relay on the same ports, so that agents and clients find it again.
type node struct {
	role   string // "relay" or "agent NAME"
	config string
	p      *procs.Process
	pprof  string // base URL of its pprof server, http://ADDR
}

// cluster is the deployment: one relay, two agents (QUIC, TCP) each
// offering the stdio fixture and the HTTP fixture, and that HTTP fixture.
type cluster struct {
	o           Options
	dir         string
	seq         int // numbers log files so restarts do not overwrite them
	clientToken string

	relayHTTP    string // http://127.0.0.1:PORT
	tunnelAddr   string
	upstreamAddr string
	nonceLog     string

	relay    *node
	agents   map[string]*node
	upstream *procs.Process
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// freePort returns a loopback port free for TCP and UDP alike (the
// tunnel listens on both) at the time of the call.
func freePort() (int, error) {
	for range 20 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		pc, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err == nil {
			pc.Close()
			return port, nil
		}
	}
	return 0, errors.New("no loopback port free for both TCP and UDP")
}

func (c *cluster) logPath(name string) string {
	c.seq++
	return filepath.Join(c.dir, "logs", fmt.Sprintf("%03d-%s.log", c.seq, strings.ReplaceAll(name, " ", "-")))
}

// deploy writes the configs and starts everything, agents routed.
func deploy(ctx context.Context, o Options) (*cluster, error) {
	c := &cluster{o: o, dir: o.Dir, clientToken: randomToken(), agents: make(map[string]*node)}
	if err := os.MkdirAll(filepath.Join(c.dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	c.nonceLog = filepath.Join(c.dir, "nonces.log")
	certPEM, keyPEM, err := devcert.Generate("127.0.0.1", "localhost")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(c.dir, "relay.crt"), certPEM, 0o600); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.dir, "relay.key"), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	var ports [3]int
	for i := range ports {
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
	}
	c.tunnelAddr = fmt.Sprintf("127.0.0.1:%d", ports[0])
	httpListen := fmt.Sprintf("127.0.0.1:%d", ports[1])
	c.relayHTTP = "http://" + httpListen
	c.upstreamAddr = fmt.Sprintf("127.0.0.1:%d", ports[2])

	agentTokens := make(map[string]string)
	var rc strings.Builder
	fmt.Fprintf(&rc, "tunnel: {listen: %q, cert_file: relay.crt, key_file: relay.key}\n", c.tunnelAddr)
	fmt.Fprintf(&rc, "http: {listen: %q}\nagents:\n", httpListen)
	for _, a := range agentNames {
		agentTokens[a] = randomToken()
		fmt.Fprintf(&rc, "  - {name: %q, token_sha256: %q}\n", a, sha256Hex(agentTokens[a]))
	}
	fmt.Fprintf(&rc, "clients:\n  - {name: faults, token_sha256: %q, allow: [\"*/*\"]}\n", sha256Hex(c.clientToken))
	rc.WriteString("log: {level: info}\ndebug: {pprof_listen: \"127.0.0.1:0\"}\n")
	c.relay = &node{role: "relay", config: filepath.Join(c.dir, "relay.yaml")}
	if err := os.WriteFile(c.relay.config, []byte(rc.String()), 0o600); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	for _, a := range agentNames {
		tok := filepath.Join(c.dir, "agent-"+a+".token")
		if err := os.WriteFile(tok, []byte(agentTokens[a]+"\n"), 0o600); err != nil {
			return nil, fmt.Errorf("agent token: %w", err)
		}
		cfg := fmt.Sprintf(`name: %q
relay: {address: %q, token_file: %q, ca_file: relay.crt, transport: %s, mux: native}
servers:
  - {name: %s, command: [%q, "--stdio", "--nonce-log", %q]}
  - {name: %s, url: "http://%s/mcp"}
log: {level: info}
debug: {pprof_listen: "127.0.0.1:0"}
`, a, c.tunnelAddr, tok, a, serverStdio, o.Fixture, c.nonceLog, serverHTTP, c.upstreamAddr)
		n := &node{role: "agent " + a, config: filepath.Join(c.dir, "agent-"+a+".yaml")}
		if err := os.WriteFile(n.config, []byte(cfg), 0o600); err != nil {
			return nil, fmt.Errorf("agent config: %w", err)
		}
		c.agents[a] = n
	}

	if err := c.startUpstream(ctx); err != nil {
		return nil, err
	}
	if err := c.startRelay(ctx); err != nil {
		c.close()
		return nil, err
	}
	for _, a := range agentNames {
		if err := c.startAgent(ctx, a); err != nil {
			c.close()
			return nil, err
		}
	}
	return c, nil
}

func (c *cluster) startUpstream(ctx context.Context) error {
	p, err := procs.Start("upstream", c.logPath("upstream"), nil, c.o.Fixture, "--http", c.upstreamAddr, "--nonce-log", c.nonceLog)
	if err != nil {
		return err
	}
	if _, err := p.WaitLine(ctx, procs.FixtureListening, startTimeout); err != nil {
		p.Kill()
		return err
	}
	c.upstream = p
	return nil
}

func (c *cluster) startRelay(ctx context.Context) error {
	n := c.relay
	p, err := procs.Start("relay", c.logPath("relay"), nil, c.o.Mcptun, "relay", "--config", n.config)
	if err != nil {
		return err
	}
	if _, err := p.WaitLine(ctx, procs.RelayStarted, startTimeout); err != nil {
		p.Kill()
		return err
	}
	n.p, n.pprof = p, ""
	// The pprof line comes before "relay started".
	if m, err := p.WaitLine(ctx, procs.PprofListening, time.Second); err == nil {
		n.pprof = m[1]
	}
	return nil
}

// startAgent starts agent a and waits until it is connected over its
// transport; whether the relay routes to it is waitRouted's.
func (c *cluster) startAgent(ctx context.Context, a string) error {
	n := c.agents[a]
	p, err := procs.Start(n.role, c.logPath(n.role), nil, c.o.Mcptun, "agent", "--config", n.config)
	if err != nil {
		return err
	}
	m, err := p.WaitLine(ctx, procs.PprofListening, startTimeout)
	if err != nil {
		p.Kill()
		return err
	}
	n.p, n.pprof = p, m[1]
	m, err = p.WaitLine(ctx, procs.AgentConnected, startTimeout)
	if err != nil {
		return err
	}
	want := map[string]string{"quic": "quic", "tcp": "tcp+yamux"}[a]
	if got := strings.Trim(m[1], `"`); got != want {
		return fmt.Errorf("agent %s connected over %s", a, got)
	}
	return c.waitRouted(ctx, a, startTimeout)
}

// waitRouted polls the relay until it routes to agent a (stops answering
// 503 agent_offline), for at most timeout.
func (c *cluster) waitRouted(ctx context.Context, a string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	url := c.relayHTTP + "/" + a + "/" + serverHTTP + "/mcp"
	last := "no answer"
	for {
		actx, acancel := context.WithTimeout(ctx, 2*time.Second)
		req, err := http.NewRequestWithContext(actx, http.MethodGet, url, nil)
		if err != nil {
			acancel()
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.clientToken)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			last = resp.Status
		} else {
			last = err.Error()
		}
		acancel()
		if err == nil && resp.StatusCode != http.StatusServiceUnavailable {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("relay still not routing to agent %s after %s (last: %s)", a, timeout, last)
		case <-tick.C:
		}
	}
}

// nodes lists relay and agents in report order.
func (c *cluster) nodes() []*node {
	out := []*node{c.relay}
	for _, a := range agentNames {
		out = append(out, c.agents[a])
	}
	return out
}

// close kills everything still running, children included.
func (c *cluster) close() {
	for _, n := range c.nodes() {
		if n != nil && n.p != nil {
			n.p.Kill()
		}
	}
	if c.upstream != nil {
		c.upstream.Kill()
	}
}

// terminate sends SIGTERM to n and waits for it to exit, at most grace;
// after that it is killed and the error says so.
func terminate(n *node, grace time.Duration) error {
	if err := n.p.Signal(syscall.SIGTERM); err != nil {
		return err
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-n.p.Done():
		if _, err := n.p.Exited(); err != nil {
			return fmt.Errorf("%s: exit after SIGTERM: %w", n.role, err)
		}
		return nil
	case <-t.C:
		n.p.Kill()
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", n.role, grace)
	}
}
