package main

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/mcpproxy"
	"github.com/mcptun/mcptun/tunnel"
)

func newCheckCmd() *cobra.Command {
	var (
		relayPath, agentPath string
		probe                bool
		timeout              time.Duration
	)
	cmd := &cobra.Command{
		Use:   "check [--relay relay.yaml] [--agent agent.yaml] [--probe]",
		Short: "Check configuration files, their certificates, keys, commands and each other; with --probe, start the servers and dial the relay",
		Long: `check loads each file and reports every problem (file, key, reason):
  relay: the certificates and keys load and belong together, and are valid now;
  agent: the CA file parses, each stdio command is found (on PATH or next to the file);
  both:  the agent's name is listed in relay.yaml, its token matches a token_sha256,
         and its ca_file or pin_sha256 trusts the relay's tunnel certificate.
With --probe it also starts each stdio server and lists its tools (MCP initialize
and tools/list), asks each url server for its tools, and dials the relay over
QUIC (UDP) and TLS/TCP to say which transport the agent would use. The probe
sends no hello, so a running agent with the same credential is not disturbed.
The exit status is 1 when a problem was found; warnings do not count.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if relayPath == "" && agentPath == "" {
				return fmt.Errorf("check: give --relay FILE and/or --agent FILE")
			}
			c := &checker{out: cmd.OutOrStdout()}
			var rc *config.Relay
			var ac *config.Agent
			var relayLeaf *x509.Certificate
			var relayChain []*x509.Certificate
			if relayPath != "" {
				rc = c.loadRelay(relayPath)
				if rc != nil {
					relayLeaf, relayChain = c.checkRelay(relayPath, rc)
				}
			}
			if agentPath != "" {
				ac = c.loadAgent(agentPath)
				if ac != nil {
					c.checkAgent(agentPath, ac)
				}
			}
			if rc != nil && ac != nil {
				c.crossCheck(relayPath, rc, relayLeaf, relayChain, agentPath, ac)
			}
			if probe {
				ctx := cmd.Context()
				if ac != nil {
					c.probeServers(ctx, agentPath, ac, timeout)
					c.probeRelay(ctx, agentPath, ac, timeout)
				} else if rc != nil && relayLeaf != nil {
					c.probeOwnTunnel(ctx, relayPath, rc, relayLeaf, timeout)
				}
			}
			if c.problems > 0 {
				return fmt.Errorf("check: %d problem(s) found (see above)", c.problems)
			}
			for _, p := range []string{relayPath, agentPath} {
				if p != "" {
					fmt.Fprintf(c.out, "%s: ok\n", p)
				}
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&relayPath, "relay", "", "relay configuration file")
	cmd.Flags().StringVar(&agentPath, "agent", "", "agent configuration file")
	cmd.Flags().BoolVar(&probe, "probe", false, "start each server and list its tools, and dial the relay (QUIC and TCP)")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "with --probe: how long each server (npx may download first) and each dial may take")
	return cmd
}

// checker prints what check finds and counts the problems.
type checker struct {
	out      io.Writer
	problems int
}

func (c *checker) ok(format string, args ...any) {
	fmt.Fprintf(c.out, "ok:      "+format+"\n", args...)
}
func (c *checker) warn(format string, args ...any) {
	fmt.Fprintf(c.out, "warning: "+format+"\n", args...)
}

func (c *checker) problem(format string, args ...any) {
	c.problems++
	fmt.Fprintf(c.out, "problem: "+format+"\n", args...)
}

// keyProblem reports a problem in file at key, as config errors read.
func (c *checker) keyProblem(file, key, format string, args ...any) {
	c.problem("%v", &config.Error{File: file, Key: key, Reason: fmt.Sprintf(format, args...)})
}

func (c *checker) keyWarn(file, key, format string, args ...any) {
	c.warn("%v", &config.Error{File: file, Key: key, Reason: fmt.Sprintf(format, args...)})
}

// configErrors prints each error a Load returned, one a line.
func (c *checker) configErrors(err error) {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			c.problem("%v", e)
		}
		return
	}
	c.problem("%v", err)
}

func (c *checker) loadRelay(path string) *config.Relay {
	rc, err := config.LoadRelay(path)
	if err != nil {
		c.configErrors(err)
		return nil
	}
	for _, w := range rc.Warnings {
		c.warn("%v", w)
	}
	return rc
}

func (c *checker) loadAgent(path string) *config.Agent {
	ac, err := config.LoadAgent(path)
	if err != nil {
		c.configErrors(err)
		return nil
	}
	for _, w := range ac.Warnings {
		c.warn("%v", w)
	}
	return ac
}

// checkRelay loads the relay's certificates and keys; it returns the
// tunnel certificate and the rest of its chain.
func (c *checker) checkRelay(path string, rc *config.Relay) (*x509.Certificate, []*x509.Certificate) {
	leaf, chain := c.checkPair(path, "tunnel", rc.Tunnel.CertFile, rc.Tunnel.KeyFile)
	if rc.HTTP.CertFile != "" {
		c.checkPair(path, "http", rc.HTTP.CertFile, rc.HTTP.KeyFile)
	}
	return leaf, chain
}

// checkPair loads a certificate and its key (section.cert_file and
// section.key_file), says when they do not belong together, and checks the
// certificate's dates.
func (c *checker) checkPair(path, section, certFile, keyFile string) (*x509.Certificate, []*x509.Certificate) {
	certs, err := readCerts(certFile)
	if err != nil {
		c.keyProblem(path, section+".cert_file", "%v", err)
		return nil, nil
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		switch {
		case strings.Contains(err.Error(), "does not match"):
			c.keyProblem(path, section+".key_file", "%s is not the key of the certificate in %s (%s.cert_file): they do not match; give the key made with that certificate, or make a new pair with: mcptun cert --force", keyFile, certFile, section)
		default:
			c.keyProblem(path, section+".key_file", "cannot load %s with %s: %v", keyFile, certFile, err)
		}
		return certs[0], certs[1:]
	}
	leaf := certs[0]
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		c.keyProblem(path, section+".cert_file", "the certificate in %s expired on %s; renew it: mcptun cert --force", certFile, leaf.NotAfter.UTC().Format(time.DateOnly))
	case now.Before(leaf.NotBefore):
		c.keyProblem(path, section+".cert_file", "the certificate in %s is not valid before %s (is this host's clock right?)", certFile, leaf.NotBefore.UTC().Format(time.RFC3339))
	case leaf.NotAfter.Sub(now) < 30*24*time.Hour:
		c.keyWarn(path, section+".cert_file", "the certificate in %s expires on %s; renew it soon: mcptun cert --force", certFile, leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	c.ok("%s certificate %s and key %s belong together; for %s; valid until %s; pin_sha256 %s", section, certFile, keyFile,
		strings.Join(certNames(leaf), ", "), leaf.NotAfter.UTC().Format(time.DateOnly), tunnel.PinSHA256(leaf))
	return leaf, certs[1:]
}

func certNames(c *x509.Certificate) []string {
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 {
		names = []string{"(no names)"}
	}
	return names
}

// readCerts reads the PEM certificates of a file.
func readCerts(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return certs, nil
}

func (c *checker) checkAgent(path string, ac *config.Agent) {
	if ac.Relay.CAFile != "" {
		if certs, err := readCerts(ac.Relay.CAFile); err != nil {
			c.keyProblem(path, "relay.ca_file", "%v", err)
		} else {
			c.ok("relay.ca_file %s: %d certificate(s)", ac.Relay.CAFile, len(certs))
		}
	}
	for i, s := range ac.Servers {
		if len(s.Command) == 0 {
			continue
		}
		key := fmt.Sprintf("servers[%d].command[0]", i)
		if p, err := findCommand(s.Command[0], s.Dir); err != nil {
			c.keyProblem(path, key, "%v", err)
		} else {
			c.ok("servers[%d] %s: command %s", i, s.Name, p)
		}
	}
}

// findCommand finds a stdio server's program as the agent will run it.
func findCommand(name, dir string) (string, error) {
	if !strings.ContainsRune(name, filepath.Separator) && !strings.ContainsRune(name, '/') {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("%q not found on PATH: install it, or give its full path (or ./%s for a program next to the config file)", name, name)
		}
		return p, nil
	}
	p := name
	if !filepath.IsAbs(p) && dir != "" {
		p = filepath.Join(dir, p)
	}
	fi, err := os.Stat(p)
	switch {
	case err != nil:
		return "", fmt.Errorf("%s: %w", p, err)
	case fi.IsDir():
		return "", fmt.Errorf("%s is a directory, not a program", p)
	case fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("%s is not executable (chmod +x %s)", p, p)
	}
	return p, nil
}

// crossCheck checks the agent file against the relay file: the name, the
// credential, the trust, the port.
func (c *checker) crossCheck(relayPath string, rc *config.Relay, leaf *x509.Certificate, chain []*x509.Certificate, agentPath string, ac *config.Agent) {
	idx := slices.IndexFunc(rc.Agents, func(a config.RelayAgent) bool { return a.Name == ac.Name })
	if idx < 0 {
		names := make([]string, len(rc.Agents))
		for i, a := range rc.Agents {
			names[i] = a.Name
		}
		c.keyProblem(agentPath, "name", "agent %q is not in %s's agents (%s): the relay will refuse it (unknown agent); add it there with its token_sha256", ac.Name, relayPath, strings.Join(names, ", "))
	} else {
		sum := sha256.Sum256([]byte(ac.Relay.Token))
		matched := false
		for _, h := range rc.Agents[idx].TokenSHA256 {
			want, _ := config.DecodeSHA256Hex(h)
			if subtle.ConstantTimeCompare(sum[:], want[:]) == 1 {
				matched = true
			}
		}
		from := "the token in " + ac.Relay.TokenFile
		if ac.Relay.TokenFile == "" {
			from = "the token from " + "MCPTUN_RELAY_TOKEN"
		}
		if matched {
			c.ok("agent %q is agents[%d] of %s and %s matches its token_sha256", ac.Name, idx, relayPath, from)
		} else {
			c.problem("%v", &config.Error{File: relayPath, Key: fmt.Sprintf("agents[%d].token_sha256", idx),
				Reason: fmt.Sprintf("does not match %s (relay.token_file of %s), whose SHA-256 is %x: the relay will refuse the agent (bad credential); put that hash here or give the agent the right token", from, agentPath, sum)})
		}
	}
	if leaf != nil {
		c.checkTrust(agentPath, ac, leaf, chain)
	}
	_, tport, _ := net.SplitHostPort(rc.Tunnel.Listen)
	_, hport, _ := net.SplitHostPort(rc.HTTP.Listen)
	for i, a := range ac.Relay.Address {
		key := "relay.address"
		if len(ac.Relay.Address) > 1 {
			key = fmt.Sprintf("relay.address[%d]", i)
		}
		_, port, _ := net.SplitHostPort(a)
		switch {
		case port == tport:
		case port == hport:
			c.keyProblem(agentPath, key, "%s is the relay's HTTP port (http.listen %s in %s), where MCP clients connect; agents dial the tunnel port (tunnel.listen %s)", a, rc.HTTP.Listen, relayPath, rc.Tunnel.Listen)
		default:
			c.keyWarn(agentPath, key, "port %s is not tunnel.listen's (%s in %s): fine behind a load balancer or NAT that maps it, otherwise the agent dials the wrong port", port, rc.Tunnel.Listen, relayPath)
		}
	}
	if ac.Relay.Transport == "quic" && rc.Tunnel.DisableQUIC {
		c.keyProblem(agentPath, "relay.transport", "quic, but %s has tunnel.disable_quic: the agent cannot connect; use auto or tcp", relayPath)
	}
}

// checkTrust checks that the agent's ca_file or pin_sha256 (or the system
// roots) accept the relay's tunnel certificate for the names it dials.
func (c *checker) checkTrust(agentPath string, ac *config.Agent, leaf *x509.Certificate, chain []*x509.Certificate) {
	pin := tunnel.PinSHA256(leaf)
	if ac.Relay.PinSHA256 != "" {
		if ac.Relay.PinSHA256 == pin {
			c.ok("relay.pin_sha256 matches the relay's tunnel certificate")
		} else {
			c.keyProblem(agentPath, "relay.pin_sha256", "is not the pin of the relay's tunnel certificate (%s): the agent will refuse the relay; set relay.pin_sha256: %q", ac.Relay.PinSHA256, pin)
		}
		return
	}
	roots, err := x509.SystemCertPool()
	if err != nil || roots == nil {
		roots = x509.NewCertPool()
	}
	what := "the system's root CAs"
	if ac.Relay.CAFile != "" {
		certs, err := readCerts(ac.Relay.CAFile)
		if err != nil {
			return // reported by checkAgent
		}
		for _, ca := range certs {
			roots.AddCert(ca)
		}
		what = "relay.ca_file " + ac.Relay.CAFile
	}
	inter := x509.NewCertPool()
	for _, ca := range chain {
		inter.AddCert(ca)
	}
	key := "relay.ca_file"
	if ac.Relay.CAFile == "" {
		key = "relay"
	}
	for _, a := range ac.Relay.Address {
		name := ac.Relay.ServerName
		if name == "" {
			name, _, _ = net.SplitHostPort(a)
		}
		_, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: name})
		var hostErr x509.HostnameError
		switch {
		case err == nil:
			c.ok("%s trusts the relay's tunnel certificate for %s", what, name)
		case errors.As(err, &hostErr):
			c.keyProblem(agentPath, "relay.address", "the relay's tunnel certificate is not valid for %q (it is for %s): make one with that name (mcptun cert --name %s), set relay.server_name, or pin it: relay.pin_sha256: %q",
				name, strings.Join(certNames(leaf), ", "), name, pin)
		default:
			c.keyProblem(agentPath, key, "%s does not trust the relay's tunnel certificate (%v): set relay.ca_file to the CA that signed it (ca.crt from mcptun cert), or relay.pin_sha256: %q", what, err, pin)
		}
	}
}

// probeServers starts each stdio server and asks each url server for its
// tools, as a real MCP client.
func (c *checker) probeServers(ctx context.Context, path string, ac *config.Agent, timeout time.Duration) {
	for i, s := range ac.Servers {
		key := fmt.Sprintf("servers[%d]", i)
		tools, err := listTools(ctx, s, timeout)
		if err != nil {
			c.keyProblem(path, key, "%s: %v", s.Name, err)
			continue
		}
		kind := "stdio"
		if s.URL != "" {
			kind = "url"
		}
		c.ok("%s %s (%s) answers: %d tool(s): %s", key, s.Name, kind, len(tools), strings.Join(tools, ", "))
	}
}

// listTools runs initialize and tools/list against one server.
func listTools(ctx context.Context, s config.AgentServer, timeout time.Duration) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var cl *client.Client
	var stderr *tailBuffer
	if len(s.Command) > 0 {
		// As the agent starts it: its own credentials stay out.
		env := mcpproxy.ChildEnv(s.Env)
		stderr = &tailBuffer{max: 2048}
		tr := transport.NewStdioWithOptions(s.Command[0], nil, s.Command[1:],
			transport.WithCommandFunc(func(ctx context.Context, command string, _ []string, args []string) (*exec.Cmd, error) {
				cmd := exec.CommandContext(ctx, command, args...)
				cmd.Env, cmd.Dir = env, s.Dir
				return cmd, nil
			}),
			transport.WithCommandStderrWriter(stderr))
		if err := tr.Start(ctx); err != nil {
			return nil, fmt.Errorf("cannot start %s: %w", s.Command[0], err)
		}
		cl = client.NewClient(tr)
	} else {
		var err error
		opts := []transport.StreamableHTTPCOption{transport.WithHTTPTimeout(timeout)}
		if len(s.Headers) > 0 {
			opts = append(opts, transport.WithHTTPHeaders(s.Headers))
		}
		cl, err = client.NewStreamableHttpClient(s.URL, opts...)
		if err != nil {
			return nil, err
		}
		if err := cl.Start(ctx); err != nil {
			return nil, fmt.Errorf("%s: %w", s.URL, err)
		}
	}
	defer cl.Close()
	withStderr := func(err error) error {
		if stderr != nil && stderr.String() != "" {
			return fmt.Errorf("%w; its stderr ends: %s", err, strings.TrimSpace(stderr.String()))
		}
		return err
	}
	init := mcp.InitializeRequest{}
	init.Params.ProtocolVersion = mcp.LATEST_PROTOCOL_VERSION
	init.Params.ClientInfo = mcp.Implementation{Name: "mcptun-check", Version: version}
	if _, err := cl.Initialize(ctx, init); err != nil {
		return nil, withStderr(fmt.Errorf("initialize: %w", err))
	}
	res, err := cl.ListTools(ctx, mcp.ListToolsRequest{})
	if err != nil {
		return nil, withStderr(fmt.Errorf("tools/list: %w", err))
	}
	names := make([]string, len(res.Tools))
	for i, t := range res.Tools {
		names[i] = t.Name
	}
	return names, nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	mu  sync.Mutex
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = t.b[len(t.b)-t.max:]
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.b)
}

// probeRelay dials each relay address over QUIC and TCP with the agent's
// trust settings and says which transport the agent would use.
func (c *checker) probeRelay(ctx context.Context, path string, ac *config.Agent, timeout time.Duration) {
	conf, err := tunnel.ClientTLS(ac.Relay.ServerName, ac.Relay.CAFile, ac.Relay.PinSHA256)
	if err != nil {
		c.keyProblem(path, "relay", "%v", err)
		return
	}
	dialTimeout := min(timeout, 5*time.Second)
	for _, addr := range ac.Relay.Address {
		r, err := tunnel.Probe(ctx, addr, conf, dialTimeout)
		if err != nil {
			c.keyProblem(path, "relay.address", "%v", err)
			continue
		}
		c.reportProbe(path, addr, ac.Relay.Transport, r)
	}
}

func (c *checker) reportProbe(path, addr, mode string, r tunnel.ProbeResult) {
	desc := func(err error, d time.Duration) string {
		if err == nil {
			return fmt.Sprintf("ok in %s", d.Round(time.Millisecond))
		}
		if h := tunnel.Hint(err); h != "" {
			return fmt.Sprintf("%v (%s)", err, h)
		}
		return err.Error()
	}
	use := r.Use(mode)
	switch {
	case use != "":
		c.ok("relay %s: QUIC (UDP): %s; TLS/TCP: %s; the agent (transport %s) would use %s", addr, desc(r.QUIC, r.QUICTime), desc(r.TCP, r.TCPTime), mode, use)
		if use == tunnel.TransportTCP && mode == tunnel.TransportAuto {
			c.warn("relay %s: QUIC does not connect, so the agent runs over TLS/TCP (slower under loss); let UDP through to the tunnel port for QUIC", addr)
		}
	case errors.Is(r.TCP, syscall.ECONNREFUSED) && (r.QUIC == nil || mode == tunnel.TransportTCP || tunnel.Hint(r.QUIC) == "" || strings.Contains(tunnel.Hint(r.QUIC), "UDP")):
		// Not running yet is not a fault of the files (check runs before
		// the relay starts, too).
		c.warn("relay %s: nothing listens there (QUIC: %v; TCP: %v): is the relay running?", addr, r.QUIC, r.TCP)
	default:
		c.keyProblem(path, "relay.address", "%s: the agent (transport %s) would not connect: QUIC (UDP): %s; TLS/TCP: %s", addr, mode, desc(r.QUIC, r.QUICTime), desc(r.TCP, r.TCPTime))
	}
}

// probeOwnTunnel dials a relay's own tunnel listener (given only the relay
// file), trusting its certificate by pin: is it up, over which transports.
func (c *checker) probeOwnTunnel(ctx context.Context, path string, rc *config.Relay, leaf *x509.Certificate, timeout time.Duration) {
	host, port, _ := net.SplitHostPort(rc.Tunnel.Listen)
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	conf, err := tunnel.ClientTLS(host, "", tunnel.PinSHA256(leaf))
	if err != nil {
		c.problem("%v", err)
		return
	}
	addr := net.JoinHostPort(host, port)
	r, err := tunnel.Probe(ctx, addr, conf, min(timeout, 5*time.Second))
	if err != nil {
		c.keyProblem(path, "tunnel.listen", "%v", err)
		return
	}
	mode := tunnel.TransportAuto
	if rc.Tunnel.DisableQUIC {
		mode = tunnel.TransportTCP
	}
	c.reportProbe(path, addr, mode, r)
}
