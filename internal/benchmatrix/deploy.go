package benchmatrix

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcptun/mcptun/internal/devcert"
	"github.com/mcptun/mcptun/internal/procs"
)

// Server names every benchmark agent offers.
const (
	serverHTTP  = "http"  // reverse proxy to the HTTP fixture
	serverStdio = "stdio" // the stdio bridge in front of the fixture
)

// startTimeout bounds how long a process may take to print its address
// and an agent to come online.
const startTimeout = 30 * time.Second

// workspace is the benchmark's directory of configs, certificates, tokens
// and logs, and the binaries it runs.
type workspace struct {
	dir     string
	mcptun  string
	fixture string

	clientToken string
	certHosts   []string
	// tunnelEnv is added to the environment of relays and agents, ours
	// and the plain tunnel's (Options.GOMAXPROCS).
	tunnelEnv []string
	seq       int // numbers log files so restarts do not overwrite them
	// control turns on the customer's control point in the configs this
	// workspace writes (Options.Control): a tool policy on every server
	// and the audit trail at the agent, the admin listener on both roles.
	control bool
}

// Control-mode settings (Options.Control). The policy allows every tool
// the fixture has but still names a deny glob, so each call is matched
// against both lists as a real deployment's would be.
const (
	controlToolPolicy = `{allow: ["*"], deny: ["admin_*"]}`
	controlAdmin      = `{listen: "127.0.0.1:0"}`
)

func newWorkspace(dir, mcptun, fixture string, certHosts ...string) (*workspace, error) {
	var err error
	if dir, err = filepath.Abs(dir); err != nil {
		return nil, err
	}
	if mcptun, err = filepath.Abs(mcptun); err != nil {
		return nil, err
	}
	if fixture, err = filepath.Abs(fixture); err != nil {
		return nil, err
	}
	for _, b := range []string{mcptun, fixture} {
		if st, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("binary %s: %w", b, err)
		} else if st.IsDir() || st.Mode()&0o111 == 0 {
			return nil, fmt.Errorf("binary %s: not an executable file", b)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "logs"), 0o755); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	w := &workspace{dir: dir, mcptun: mcptun, fixture: fixture, clientToken: randomToken(), certHosts: certHosts}
	if len(w.certHosts) == 0 {
		w.certHosts = []string{"127.0.0.1", "localhost"}
	}
	certPEM, keyPEM, err := devcert.Generate(w.certHosts...)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "relay.crt"), certPEM, 0o600); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "relay.key"), keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("workspace: %w", err)
	}
	return w, nil
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

func (w *workspace) logPath(name string) string {
	w.seq++
	return filepath.Join(w.dir, "logs", fmt.Sprintf("%02d-%s.log", w.seq, name))
}

// wrap prefixes a command with `ip netns exec NS` when ns is set.
func wrap(ns, bin string, args ...string) (string, []string) {
	if ns == "" {
		return bin, args
	}
	return "ip", append([]string{"netns", "exec", ns, bin}, args...)
}

// fixtureProc is the HTTP MCP fixture server.
type fixtureProc struct {
	*process
	URL string // http://127.0.0.1:PORT/mcp
}

func (w *workspace) startFixture(ctx context.Context, netns string) (*fixtureProc, error) {
	bin, args := wrap(netns, w.fixture, "--http", "127.0.0.1:0")
	p, err := startProcess("fixture", w.logPath("fixture"), bin, args...)
	if err != nil {
		return nil, err
	}
	m, err := p.WaitLine(ctx, procs.FixtureListening, startTimeout)
	if err != nil {
		_ = p.Stop()
		return nil, err
	}
	return &fixtureProc{process: p, URL: m[1]}, nil
}

// agentSpec is one agent the relay accepts.
type agentSpec struct {
	Name      string // also the path label: quic, tcp, quic-yamux
	Transport string // quic or tcp
	Mux       string // native or yamux
	token     string
}

// wantTransport is what the tunnel reports once connected with this spec.
func (a agentSpec) wantTransport() string {
	switch {
	case a.Transport == "tcp":
		return "tcp+yamux"
	case a.Mux == "yamux":
		return "quic+yamux"
	default:
		return "quic"
	}
}

// relayConfig is relay.yaml for agents, tunnel on tunnelListen.
func (w *workspace) relayConfig(tunnelListen string, agents []agentSpec) string {
	var b strings.Builder
	fmt.Fprintf(&b, "tunnel: {listen: %q, cert_file: relay.crt, key_file: relay.key}\n", tunnelListen)
	b.WriteString("http: {listen: \"127.0.0.1:0\"}\nagents:\n")
	for _, a := range agents {
		fmt.Fprintf(&b, "  - {name: %q, token_sha256: %q}\n", a.Name, sha256Hex(a.token))
	}
	fmt.Fprintf(&b, "clients:\n  - {name: bench, token_sha256: %q, allow: [\"*/*\"]}\n", sha256Hex(w.clientToken))
	b.WriteString("log: {level: info}\ndebug: {pprof_listen: \"127.0.0.1:0\"}\n")
	if w.control {
		b.WriteString("admin: " + controlAdmin + "\n")
	}
	return b.String()
}

type relayProc struct {
	*process
	HTTPURL    string
	TunnelAddr string
	Pprof      string // base URL of its pprof server
}

// startRelay writes relay.yaml for agents and starts the relay with its
// tunnel on tunnelListen and its HTTP front on a loopback port.
func (w *workspace) startRelay(ctx context.Context, tunnelListen string, agents []agentSpec) (*relayProc, error) {
	cfg := filepath.Join(w.dir, "relay.yaml")
	if err := os.WriteFile(cfg, []byte(w.relayConfig(tunnelListen, agents)), 0o600); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	p, err := startProcessEnv("relay", w.logPath("relay"), w.tunnelEnv, w.mcptun, "relay", "--config", cfg)
	if err != nil {
		return nil, err
	}
	m, err := p.WaitLine(ctx, procs.RelayStarted, startTimeout)
	if err != nil {
		_ = p.Stop()
		return nil, err
	}
	r := &relayProc{process: p, TunnelAddr: m[1], HTTPURL: m[2]}
	// The pprof line comes before "relay started".
	if m, err := p.WaitLine(ctx, procs.PprofListening, time.Second); err == nil {
		r.Pprof = m[1]
	}
	return r, nil
}

type agentProc struct {
	*process
	Spec  agentSpec
	Pprof string
}

// startAgent starts an agent offering the HTTP fixture at httpURL and a
// stdio fixture, waits until the relay routes to it, and checks that the
// tunnel uses the transport asked for (auto fallback would hide a fault).
func (w *workspace) startAgent(ctx context.Context, r *relayProc, relayAddr string, spec agentSpec, httpURL, netns string) (*agentProc, error) {
	tokFile := filepath.Join(w.dir, "agent-"+spec.Name+".token")
	if err := os.WriteFile(tokFile, []byte(spec.token+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("agent token: %w", err)
	}
	cfgPath := filepath.Join(w.dir, "agent-"+spec.Name+".yaml")
	if err := os.WriteFile(cfgPath, []byte(w.agentConfig(spec, relayAddr, tokFile, httpURL)), 0o600); err != nil {
		return nil, fmt.Errorf("agent config: %w", err)
	}
	bin, args := wrap(netns, w.mcptun, "agent", "--config", cfgPath)
	p, err := startProcessEnv("agent "+spec.Name, w.logPath("agent-"+spec.Name), w.tunnelEnv, bin, args...)
	if err != nil {
		return nil, err
	}
	a := &agentProc{process: p, Spec: spec}
	fail := func(err error) (*agentProc, error) {
		_ = p.Stop()
		return nil, fmt.Errorf("agent %s: %w", spec.Name, err)
	}
	m, err := p.WaitLine(ctx, procs.AgentConnected, startTimeout)
	if err != nil {
		return fail(err)
	}
	if got := strings.Trim(m[1], `"`); got != spec.wantTransport() {
		return fail(fmt.Errorf("connected over %s, want %s", got, spec.wantTransport()))
	}
	if m, err := p.WaitLine(ctx, procs.PprofListening, time.Second); err == nil {
		a.Pprof = m[1]
	}
	if err := w.waitRouted(ctx, r.HTTPURL+"/"+spec.Name+"/"+serverHTTP+"/mcp"); err != nil {
		return fail(err)
	}
	return a, nil
}

// agentConfig is agent.yaml for spec: the HTTP fixture at httpURL and a
// stdio fixture, the relay at relayAddr.
func (w *workspace) agentConfig(spec agentSpec, relayAddr, tokFile, httpURL string) string {
	policy := ""
	if w.control {
		policy = ", tools: " + controlToolPolicy
	}
	cfg := fmt.Sprintf(`name: %q
relay: {address: %q, token_file: %q, ca_file: relay.crt, transport: %s, mux: %s}
servers:
  - {name: %s, url: %q%s}
  - {name: %s, command: [%q, "--stdio"]%s}
log: {level: info}
debug: {pprof_listen: "127.0.0.1:0"}
`, spec.Name, relayAddr, tokFile, spec.Transport, spec.Mux, serverHTTP, httpURL, policy, serverStdio, w.fixture, policy)
	if w.control {
		cfg += fmt.Sprintf("audit: {file: %q}\nadmin: %s\n", filepath.Join(w.dir, "audit-"+spec.Name+".log"), controlAdmin)
	}
	return cfg
}

// waitRouted polls url until the relay stops answering 503 (agent offline).
func (w *workspace) waitRouted(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	last := "no answer"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+w.clientToken)
		req.Header.Set("Accept", "text/event-stream")
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusServiceUnavailable {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("relay still not routing %s after %s (last: %s)", url, startTimeout, last)
		case <-tick.C:
		}
	}
}
