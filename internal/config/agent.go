package config

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/mcptun/mcptun/internal/glob"
	"go.yaml.in/yaml/v3"

	"github.com/mcptun/mcptun/internal/agentkey"
)

// Agent is the agent's configuration (agent.yaml).
type Agent struct {
	Name    string        `mapstructure:"name"`
	Relay   AgentRelay    `mapstructure:"relay"`
	Servers []AgentServer `mapstructure:"servers"`
	// IdleTimeout ends a stdio MCP session (and its child) after this long
	// without a request. Default DefaultIdleTimeout.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// AllowedOrigins lists browser origins the agent's stdio bridge accepts
	// besides loopback ones (defence in depth behind the relay's check).
	AllowedOrigins []string `mapstructure:"allowed_origins"`
	// UpstreamNetworks, if set, lists the only networks (CIDR, or single
	// addresses) URL servers may be reached at, checked on the resolved
	// address at connect time. Parsed into UpstreamPrefixes.
	UpstreamNetworks []string       `mapstructure:"upstream_networks"`
	UpstreamPrefixes []netip.Prefix `mapstructure:"-"`
	Log              Log            `mapstructure:"log"`
	Debug            Debug          `mapstructure:"debug"`
	// Audit is the audit trail (off unless audit.file is set).
	Audit Audit `mapstructure:"audit"`
	Admin Admin `mapstructure:"admin"`
	// ShutdownGrace is how long an agent told to stop (SIGTERM, SIGINT)
	// lets the exchanges in flight finish before it cuts them, stops its
	// stdio servers and exits.
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace"`
	// PinFile keeps the pins of servers with pin: true (default
	// agent.pins.json next to the config file).
	PinFile string `mapstructure:"pin_file"`
	// Warnings are problems that do not stop the agent (a world-readable
	// token file); check prints them and the agent logs them at start.
	Warnings []*Error `mapstructure:"-"`
}

// AgentRelay says how to reach and trust the relays.
type AgentRelay struct {
	// Address lists the relays' tunnel host:port: one (a YAML string) or
	// several (a YAML list). A host whose DNS answer holds several
	// addresses counts as one relay per address, re-resolved every
	// ResolveInterval.
	Address []string `mapstructure:"address"`
	// ResolveInterval is how often the names in Address are looked up
	// again, so relays added to or removed from DNS are followed.
	ResolveInterval time.Duration `mapstructure:"resolve_interval"`
	// Connections is how many tunnels the agent opens when relay.address
	// comes to one address (one host:port that does not resolve to
	// several): a load balancer in front of a fleet of relays spreads
	// them, so one relay's loss leaves the agent connected. Default
	// DefaultRelayConnections; unused with several addresses.
	Connections int `mapstructure:"connections"`
	// Token is the agent's credential. It may come only from the
	// environment (MCPTUN_RELAY_TOKEN); in a file use token_file.
	Token     string `mapstructure:"token"`
	TokenFile string `mapstructure:"token_file"`
	// KeyFile, alone, is the agent's Ed25519 private key (PEM PKCS#8,
	// from mcptun key new), instead of a token: the agent signs each TLS
	// session with it and the relay lists the public key. With CertFile it
	// is that certificate's private key (any kind TLS takes).
	KeyFile string `mapstructure:"key_file"`
	// CertFile is a TLS client certificate (PEM) the agent presents
	// instead of a token; the relay lists its hash (cert_sha256).
	CertFile string `mapstructure:"cert_file"`
	// Key and Certificate are what KeyFile and CertFile hold, loaded.
	Key         ed25519.PrivateKey `mapstructure:"-"`
	Certificate *tls.Certificate   `mapstructure:"-"`
	// CAFile adds a CA to verify the relay; PinSHA256 instead pins the
	// hex SHA-256 of the relay certificate's public key. Neither: system roots.
	CAFile     string `mapstructure:"ca_file"`
	PinSHA256  string `mapstructure:"pin_sha256"`
	ServerName string `mapstructure:"server_name"` // TLS name to verify; default: the host of each address
	Transport  string `mapstructure:"transport"`   // auto (default), quic, tcp
	Mux        string `mapstructure:"mux"`         // native (default) or yamux
}

// AgentServer is one internal MCP server the agent offers.
type AgentServer struct {
	Name    string            `mapstructure:"name"`
	Command []string          `mapstructure:"command"`
	Env     map[string]string `mapstructure:"env"`
	Dir     string            `mapstructure:"dir"`
	URL     string            `mapstructure:"url"`
	Headers map[string]string `mapstructure:"headers"`
	// RateLimit bounds the exchanges the server receives from all
	// clients together.
	RateLimit RateLimit `mapstructure:"rate_limit"`
	// Limits bound a command server's sessions and requests in flight, in
	// all and per client (zero: the default, see mcpproxy.Limits).
	Limits ServerLimits `mapstructure:"limits"`
	// Tools, Prompts and Resources are the server's policy: globs of the
	// names (resource URIs) clients may use (see mcpproxy.Policy).
	Tools     PolicyRules `mapstructure:"tools"`
	Prompts   PolicyRules `mapstructure:"prompts"`
	Resources PolicyRules `mapstructure:"resources"`
	// ToolRateLimits bound the calls of the tools each entry's glob
	// matches (a list, not a map: viper would lower-case tool names).
	ToolRateLimits []ToolRateLimit `mapstructure:"tool_rate_limits"`
	// Pin records each tool's definition on first sight and withholds a
	// tool whose definition changes until approved (mcptun tools approve).
	Pin bool `mapstructure:"pin"`
}

// PolicyRules is servers[].tools, .prompts or .resources: deny wins, no
// allow allows every name deny does not match.
type PolicyRules struct {
	Allow []string `mapstructure:"allow"`
	Deny  []string `mapstructure:"deny"`
}

// ToolRateLimit is one entry of servers[].tool_rate_limits.
type ToolRateLimit struct {
	Tool              string  `mapstructure:"tool"`
	RequestsPerSecond float64 `mapstructure:"requests_per_second"`
	Burst             int     `mapstructure:"burst"`
}

func (r *PolicyRules) validate(p *problems, key string) {
	for i, g := range r.Allow {
		if err := glob.Check(g); err != nil {
			p.add(fmt.Sprintf("%s.allow[%d]", key, i), "%q: %v", g, err)
		}
	}
	for i, g := range r.Deny {
		if err := glob.Check(g); err != nil {
			p.add(fmt.Sprintf("%s.deny[%d]", key, i), "%q: %v", g, err)
		}
	}
}

func (t *ToolRateLimit) validate(p *problems, key string) {
	if err := glob.Check(t.Tool); err != nil {
		p.add(key+".tool", "%q: %v", t.Tool, err)
	}
	rl := RateLimit{RequestsPerSecond: t.RequestsPerSecond, Burst: t.Burst}
	if rl.RequestsPerSecond == 0 {
		p.add(key+".requests_per_second", "required: a number of calls per second > 0")
		return
	}
	rl.validate(p, key)
	t.Burst = rl.Burst
}

// ServerLimits is servers[].limits. Zero fields take mcpproxy's defaults
// (sessions 256, sessions_per_client 32, concurrent_requests 1024,
// concurrent_requests_per_client 128).
type ServerLimits struct {
	Sessions                    int `mapstructure:"sessions"`
	SessionsPerClient           int `mapstructure:"sessions_per_client"`
	ConcurrentRequests          int `mapstructure:"concurrent_requests"`
	ConcurrentRequestsPerClient int `mapstructure:"concurrent_requests_per_client"`
}

func (l *ServerLimits) validate(p *problems, key string, command bool) {
	if *l != (ServerLimits{}) && !command {
		p.add(key, "limits apply to command servers only")
		return
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"sessions", l.Sessions}, {"sessions_per_client", l.SessionsPerClient},
		{"concurrent_requests", l.ConcurrentRequests}, {"concurrent_requests_per_client", l.ConcurrentRequestsPerClient}} {
		if f.v < 0 {
			p.add(key+"."+f.name, "must not be negative, not %d (0 or unset: the default)", f.v)
		}
	}
	if l.Sessions > 0 && l.SessionsPerClient > l.Sessions {
		p.add(key+".sessions_per_client", "%d is more than the server's sessions (%d)", l.SessionsPerClient, l.Sessions)
	}
	if l.ConcurrentRequests > 0 && l.ConcurrentRequestsPerClient > l.ConcurrentRequests {
		p.add(key+".concurrent_requests_per_client", "%d is more than the server's concurrent_requests (%d)", l.ConcurrentRequestsPerClient, l.ConcurrentRequests)
	}
}

// DefaultIdleTimeout is idle_timeout's default: short, because clients
// that never send DELETE (most command-line clients) would otherwise keep
// a child — often a Node.js process of 100 MB or more — for that long
// after they exit. Clients that keep their GET stream open (the usual
// interactive ones) are never idle; others start a new session on 404.
const DefaultIdleTimeout = 2 * time.Minute

// LoadAgent reads and validates an agent configuration file, including
// reading the token from token_file.
func LoadAgent(path string) (*Agent, error) {
	var c Agent
	if err := load(path, &c, "relay.token", "admin.token"); err != nil {
		return nil, err
	}
	if err := restoreEnvCase(path, &c); err != nil {
		return nil, err
	}
	p := &problems{file: path}
	checkConfigMode(p, path)
	c.validate(p, path)
	if err := p.err(); err != nil {
		return nil, err
	}
	c.Warnings = p.warnings
	return &c, nil
}

// ValidateAgent validates an agent configuration made in code (the quick
// expose flags of mcptun agent) as LoadAgent does a file's, reading the
// token from relay.token_file and filling in defaults. Errors name what
// as their file (e.g. "(command line)").
func ValidateAgent(c *Agent, what string) error {
	p := &problems{file: what}
	c.validate(p, "")
	if err := p.err(); err != nil {
		return err
	}
	c.Warnings = p.warnings
	return nil
}

func (c *Agent) validate(p *problems, path string) {
	checkName(p, "name", c.Name)
	checkRelayAddresses(p, c.Relay.Address)
	switch {
	case c.Relay.Connections == 0:
		c.Relay.Connections = DefaultRelayConnections
	case c.Relay.Connections < 1 || c.Relay.Connections > MaxRelayConnections:
		p.add("relay.connections", "must be between 1 and %d, not %d (0 or unset: %d)", MaxRelayConnections, c.Relay.Connections, DefaultRelayConnections)
	}
	switch {
	case c.Relay.ResolveInterval == 0:
		c.Relay.ResolveInterval = DefaultResolveInterval
	case c.Relay.ResolveInterval < time.Second:
		p.add("relay.resolve_interval", "must be at least 1s, not %s (0 or unset: %s)", c.Relay.ResolveInterval, DefaultResolveInterval)
	}
	c.Relay.validateCredential(p, path)
	c.Relay.CAFile = resolve(path, c.Relay.CAFile)
	if c.Relay.CAFile != "" {
		if _, err := os.Stat(c.Relay.CAFile); err != nil {
			p.add("relay.ca_file", "%v", err)
		}
	}
	if c.Relay.PinSHA256 != "" {
		c.Relay.PinSHA256 = strings.ToLower(strings.ReplaceAll(c.Relay.PinSHA256, ":", ""))
		if _, ok := DecodeSHA256Hex(c.Relay.PinSHA256); !ok {
			p.add("relay.pin_sha256", "must be the 64 hex characters of the relay certificate's pin (mcptun cert prints it; so does mcptun check --relay relay.yaml)")
		}
	}
	if c.Relay.Transport == "" {
		c.Relay.Transport = "auto"
	}
	oneOf(p, "relay.transport", c.Relay.Transport, "auto", "quic", "tcp")
	if c.Relay.Mux == "" {
		c.Relay.Mux = "native"
	}
	oneOf(p, "relay.mux", c.Relay.Mux, "native", "yamux")
	if c.Relay.Mux == "yamux" && c.Relay.Transport == "tcp" {
		// TCP always uses yamux; nothing to complain about.
		c.Relay.Mux = "native"
	}

	if len(c.Servers) == 0 {
		p.add("servers", "at least one server is required")
	}
	seen := map[string]bool{}
	for i := range c.Servers {
		s := &c.Servers[i]
		key := fmt.Sprintf("servers[%d]", i)
		checkNamed(p, key+".name", "server", s.Name, seen)
		s.RateLimit.validate(p, key+".rate_limit")
		s.Limits.validate(p, key+".limits", len(s.Command) > 0)
		s.Tools.validate(p, key+".tools")
		s.Prompts.validate(p, key+".prompts")
		s.Resources.validate(p, key+".resources")
		for j := range s.ToolRateLimits {
			s.ToolRateLimits[j].validate(p, fmt.Sprintf("%s.tool_rate_limits[%d]", key, j))
		}
		if s.Pin && c.PinFile == "" {
			c.PinFile = "agent.pins.json"
		}
		switch {
		case len(s.Command) > 0 && s.URL != "":
			p.add(key, "set command (stdio server) or url (HTTP server), not both")
		case len(s.Command) > 0:
			if s.Command[0] == "" {
				p.add(key+".command[0]", "empty program name")
			}
			// "./server" means next to the config file, like every other path.
			if strings.HasPrefix(s.Command[0], "./") || strings.HasPrefix(s.Command[0], "../") {
				s.Command[0] = resolve(path, s.Command[0])
			}
			s.Dir = resolve(path, s.Dir)
			if len(s.Headers) > 0 {
				p.add(key+".headers", "headers apply to url servers only")
			}
		case s.URL != "":
			checkURL(p, key+".url", s.URL)
			if len(s.Env) > 0 || s.Dir != "" {
				p.add(key, "env and dir apply to command servers only")
			}
		default:
			p.add(key, "set command (stdio server) or url (HTTP server)")
		}
	}
	c.PinFile = resolve(path, c.PinFile)
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.IdleTimeout < time.Second {
		p.add("idle_timeout", "must be at least 1s, not %s", c.IdleTimeout)
	}
	checkOrigins(p, "allowed_origins", c.AllowedOrigins)
	c.UpstreamPrefixes = nil
	for i, n := range c.UpstreamNetworks {
		pf, err := netip.ParsePrefix(n)
		if err != nil {
			ip, ierr := netip.ParseAddr(n)
			if ierr != nil {
				p.add(fmt.Sprintf("upstream_networks[%d]", i), "%q is not a network (10.0.0.0/8) or an address (10.1.2.3)", n)
				continue
			}
			pf = netip.PrefixFrom(ip, ip.BitLen())
		}
		c.UpstreamPrefixes = append(c.UpstreamPrefixes, pf.Masked())
	}
	if len(c.UpstreamPrefixes) > 0 {
		for i, s := range c.Servers {
			u, err := url.Parse(s.URL)
			if s.URL == "" || err != nil {
				continue
			}
			if ip, err := netip.ParseAddr(u.Hostname()); err == nil && !containsAddr(c.UpstreamPrefixes, ip.Unmap()) {
				p.add(fmt.Sprintf("servers[%d].url", i), "address %s is outside upstream_networks", ip)
			}
		}
	}
	c.Log.validate(p)
	c.Audit.validate(p, path)
	if c.Debug.PprofListen != "" {
		checkHostPort(p, "debug.pprof_listen", c.Debug.PprofListen)
	}
	checkShutdownGrace(p, &c.ShutdownGrace)
	c.Admin.validate(p, path)
}

// validateCredential checks that the agent has exactly one credential — a
// token, an Ed25519 key, or a client certificate with its key — and loads
// it.
func (r *AgentRelay) validateCredential(p *problems, path string) {
	hasToken := r.Token != "" || r.TokenFile != ""
	switch {
	case r.CertFile != "" && r.KeyFile == "":
		p.add("relay.cert_file", "needs relay.key_file: the certificate's private key")
		return
	case hasToken && (r.KeyFile != "" || r.CertFile != ""):
		key := "relay.key_file"
		if r.CertFile != "" {
			key = "relay.cert_file"
		}
		p.add(key, "set one credential: token_file (or %s), key_file (an Ed25519 key), or cert_file with key_file (a client certificate); not several", envName("relay.token"))
		return
	case r.CertFile != "":
		r.loadCertificate(p, path)
		return
	case r.KeyFile != "":
		r.loadKey(p, path)
		return
	}
	switch {
	case r.Token != "" && r.TokenFile != "":
		p.add("relay.token_file", "set either token_file or %s, not both", envName("relay.token"))
	case r.TokenFile != "":
		r.TokenFile = resolve(path, r.TokenFile)
		checkSecretMode(p, "relay.token_file", r.TokenFile)
		r.Token = readSecret(p, "relay.token_file", r.TokenFile)
	case r.Token == "":
		p.add("relay.token_file", "required: the agent's credential (or set %s; or key_file for an Ed25519 key, or cert_file and key_file for a client certificate)", envName("relay.token"))
	}
}

func (r *AgentRelay) loadKey(p *problems, path string) {
	r.KeyFile = resolve(path, r.KeyFile)
	checkSecretMode(p, "relay.key_file", r.KeyFile)
	b, err := os.ReadFile(r.KeyFile)
	if err != nil {
		p.add("relay.key_file", "cannot read key file: %v", err)
		return
	}
	k, err := agentkey.ParsePrivate(b)
	if err != nil {
		hint := " (make one with: mcptun key new)"
		if errors.Is(err, agentkey.ErrNotEd25519) {
			hint = "; alone, key_file must be an Ed25519 key (mcptun key new); a certificate's key goes with relay.cert_file"
		}
		p.add("relay.key_file", "%s: %v%s", r.KeyFile, err, hint)
		return
	}
	r.Key = k
}

func (r *AgentRelay) loadCertificate(p *problems, path string) {
	r.CertFile, r.KeyFile = resolve(path, r.CertFile), resolve(path, r.KeyFile)
	checkSecretMode(p, "relay.key_file", r.KeyFile)
	cert, err := tls.LoadX509KeyPair(r.CertFile, r.KeyFile)
	if err != nil {
		p.add("relay.cert_file", "cannot load the client certificate %s with key %s: %v", r.CertFile, r.KeyFile, err)
		return
	}
	// The relay refuses a certificate outside its validity period: say so
	// here, not in a refusal at every connection attempt.
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			p.add("relay.cert_file", "%s: %v", r.CertFile, err)
			return
		}
	}
	now := time.Now()
	switch {
	case now.After(leaf.NotAfter):
		p.add("relay.cert_file", "certificate %s expired at %s", r.CertFile, leaf.NotAfter.UTC().Format(time.RFC3339))
		return
	case now.Before(leaf.NotBefore):
		p.add("relay.cert_file", "certificate %s is not valid before %s", r.CertFile, leaf.NotBefore.UTC().Format(time.RFC3339))
		return
	}
	r.Certificate = &cert
}

// DefaultRelayConnections is relay.connections' default, and
// MaxRelayConnections its largest value.
const (
	DefaultRelayConnections = 2
	MaxRelayConnections     = 16
)

// DefaultResolveInterval is relay.resolve_interval's default.
const DefaultResolveInterval = 30 * time.Second

// checkRelayAddresses checks relay.address: at least one host:port, each
// with a host and a port a relay can listen on, none listed twice (two
// tunnels to one relay would replace each other). One address is named
// relay.address, entries of a longer list relay.address[i].
func checkRelayAddresses(p *problems, addrs []string) {
	if len(addrs) == 0 {
		p.add("relay.address", "required (host:port, or a list of them)")
		return
	}
	seen := map[string]int{}
	for i, a := range addrs {
		key := "relay.address"
		if len(addrs) > 1 {
			key = fmt.Sprintf("relay.address[%d]", i)
		}
		host, port, err := net.SplitHostPort(a)
		switch {
		case a == "":
			p.add(key, "empty: want host:port")
			continue
		case err != nil:
			p.add(key, "invalid address %q: want host:port (%v)", a, err)
			continue
		case host == "":
			p.add(key, "%q has no host", a)
			continue
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			p.add(key, "invalid port %q in %q: want 1-65535", port, a)
			continue
		}
		norm := net.JoinHostPort(strings.ToLower(host), port)
		if j, dup := seen[norm]; dup {
			p.add(key, "%q is listed twice (also relay.address[%d])", a, j)
			continue
		}
		seen[norm] = i
	}
}

// restoreEnvCase puts back the case of environment variable names in
// servers[].env: viper lower-cases every map key, which is harmless for
// HTTP headers but wrong for environment variables.
func restoreEnvCase(path string, c *Agent) error {
	if path == "" || os.Getenv(envName("servers")) != "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return &Error{File: path, Reason: err.Error()}
	}
	var raw struct {
		Servers []struct {
			Env map[string]string `yaml:"env"`
		} `yaml:"servers"`
	}
	if err := yaml.Unmarshal(b, &raw); err != nil {
		return &Error{File: path, Key: "servers", Reason: "invalid YAML: " + err.Error()}
	}
	for i := range c.Servers {
		if i < len(raw.Servers) && raw.Servers[i].Env != nil {
			c.Servers[i].Env = raw.Servers[i].Env
		}
	}
	return nil
}

func containsAddr(nets []netip.Prefix, ip netip.Addr) bool {
	for _, n := range nets {
		if n.Contains(ip) {
			return true
		}
	}
	return false
}
