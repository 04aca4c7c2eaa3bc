package config

import (
	"fmt"
	"math"
	"net"
	"os"
	"strings"
	"time"

	"github.com/mcptun/mcptun/internal/agentkey"
	"github.com/mcptun/mcptun/internal/glob"
)

// Relay is the relay's configuration (relay.yaml).
type Relay struct {
	Tunnel  RelayTunnel   `mapstructure:"tunnel"`
	HTTP    RelayHTTP     `mapstructure:"http"`
	Agents  []RelayAgent  `mapstructure:"agents"`
	Clients []RelayClient `mapstructure:"clients"`
	OAuth   RelayOAuth    `mapstructure:"oauth"` // JWT access tokens too (see RelayOAuth)
	Log     Log           `mapstructure:"log"`
	Debug   Debug         `mapstructure:"debug"`
	Admin   Admin         `mapstructure:"admin"`
	// Cluster joins the relay to a fleet behind one load balancer; unset,
	// nothing of it runs and no NATS is needed.
	Cluster RelayCluster `mapstructure:"cluster"`
	// ShutdownGrace is how long a relay told to stop (SIGTERM, SIGINT)
	// lets the exchanges in flight finish before it cuts them and exits.
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace"`
	// Warnings are problems that do not stop the relay (a world-readable
	// key file); check prints them and the relay logs them at start.
	Warnings []*Error `mapstructure:"-"`
}

// DefaultShutdownGrace is shutdown_grace when the file does not set it.
const DefaultShutdownGrace = 30 * time.Second

// RelayTunnel is where agents connect: QUIC on UDP and TLS on TCP, same port.
type RelayTunnel struct {
	Listen   string `mapstructure:"listen"`
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	// DisableQUIC serves only TLS over TCP, for edges without UDP.
	DisableQUIC bool `mapstructure:"disable_quic"`
}

// RelayHTTP is where MCP clients connect.
type RelayHTTP struct {
	Listen   string `mapstructure:"listen"`
	CertFile string `mapstructure:"cert_file"`
	KeyFile  string `mapstructure:"key_file"`
	// AllowedOrigins lists browser origins allowed besides loopback ones
	// (on a loopback Host); a request with any other Origin is refused (403).
	AllowedOrigins []string `mapstructure:"allowed_origins"`
	// Limits on client connections; zero values take the defaults below.
	//
	// MaxConnections caps concurrent client connections; one over it is
	// answered 503 (too_many_connections) and closed.
	MaxConnections int `mapstructure:"max_connections"`
	// HeaderTimeout bounds the wait for a request head: on a new
	// connection from accept, on a kept-alive one from its first byte.
	HeaderTimeout time.Duration `mapstructure:"header_timeout"`
	// IdleTimeout closes a connection idle between exchanges.
	IdleTimeout time.Duration `mapstructure:"idle_timeout"`
	// BodyTimeout cuts a request whose body makes no progress this long.
	BodyTimeout time.Duration `mapstructure:"body_timeout"`
	// WriteTimeout cuts a client that accepts no bytes of its answer this
	// long (a GET stream nobody reads).
	WriteTimeout time.Duration `mapstructure:"write_timeout"`
	// PublicURL is the base URL MCP clients reach the relay at, when it
	// is not http.listen (a proxy or load balancer in front); agents are
	// told it and quick expose prints client URLs from it.
	PublicURL string `mapstructure:"public_url"`
}

// Defaults of the relay's client connection limits (http.*).
const (
	DefaultMaxConnections  = 10000
	DefaultHeaderTimeout   = 10 * time.Second
	DefaultHTTPIdleTimeout = 120 * time.Second
	DefaultBodyTimeout     = 30 * time.Second
	DefaultWriteTimeout    = 30 * time.Second
)

// RelayCluster is relay.yaml's cluster section: the relays of a fleet
// share, through NATS, which of them holds a tunnel to which agent, and
// forward to each other the exchanges for agents they hold no tunnel to.
type RelayCluster struct {
	// Name names the relay in logs and in the X-Mcptun-Via header of the
	// answers it serves for its peers (default: the host name).
	Name string `mapstructure:"name"`
	// NATSURL is the NATS server, nats://host:4222 (tls:// for TLS; a
	// comma-separated list for a NATS cluster). Required.
	NATSURL string `mapstructure:"nats_url"`
	// NATSCredsFile is a NATS credentials (.creds) file; NATSCAFile a CA
	// to verify a NATS server with TLS.
	NATSCredsFile string `mapstructure:"nats_creds_file"`
	NATSCAFile    string `mapstructure:"nats_ca_file"`
	// Listen is where the relay accepts links from its peers (host:port);
	// Advertise the host:port they dial (default Listen, which then must
	// name a host, not 0.0.0.0).
	Listen    string `mapstructure:"listen"`
	Advertise string `mapstructure:"advertise"`
	// SecretFile holds the secret every relay of the fleet shares (at
	// least 32 bytes, e.g. `openssl rand -hex 32`): it authenticates the
	// relay-to-relay links and signs the registry's announcements.
	SecretFile string `mapstructure:"secret_file"`
	// Secret is SecretFile's content, read by LoadRelay.
	Secret []byte `mapstructure:"-"`
}

// Enabled reports whether the section is set at all.
func (c *RelayCluster) Enabled() bool {
	return c.NATSURL != "" || c.Listen != "" || c.Advertise != "" || c.SecretFile != "" ||
		c.NATSCredsFile != "" || c.NATSCAFile != "" || c.Name != ""
}

// MinClusterSecret is the shortest cluster secret accepted, in bytes.
const MinClusterSecret = 32

func (c *RelayCluster) validate(p *problems, path string) {
	if !c.Enabled() {
		return
	}
	if c.NATSURL == "" {
		p.add("cluster.nats_url", "required with a cluster section: the NATS server the relays share (nats://host:4222)")
	} else {
		for _, u := range strings.Split(c.NATSURL, ",") {
			scheme, rest, ok := strings.Cut(strings.TrimSpace(u), "://")
			if !ok || rest == "" || (scheme != "nats" && scheme != "tls") {
				p.add("cluster.nats_url", "%q is not a NATS URL: want nats://host:port or tls://host:port", strings.TrimSpace(u))
				break
			}
		}
	}
	checkHostPort(p, "cluster.listen", c.Listen)
	if c.Advertise == "" && c.Listen != "" {
		if host, _, err := net.SplitHostPort(c.Listen); err == nil {
			if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
				p.add("cluster.advertise", "required when cluster.listen (%s) names no host: the host:port the other relays dial (the pod IP, say)", c.Listen)
			} else {
				c.Advertise = c.Listen
			}
		}
	} else if c.Advertise != "" {
		checkHostPort(p, "cluster.advertise", c.Advertise)
		if host, port, err := net.SplitHostPort(c.Advertise); err == nil {
			if ip := net.ParseIP(host); host == "" || port == "0" || (ip != nil && ip.IsUnspecified()) {
				p.add("cluster.advertise", "%q cannot be dialed: name a host and a port", c.Advertise)
			}
		}
	}
	if c.Name == "" {
		c.Name, _ = os.Hostname()
	} else {
		checkName(p, "cluster.name", c.Name)
	}
	if c.SecretFile == "" {
		p.add("cluster.secret_file", "required with a cluster section: a file with the secret the relays share (at least %d bytes; make one with: openssl rand -hex 32)", MinClusterSecret)
	} else {
		c.SecretFile = resolve(path, c.SecretFile)
		checkSecretMode(p, "cluster.secret_file", c.SecretFile)
		if s := readSecret(p, "cluster.secret_file", c.SecretFile); s != "" {
			if len(s) < MinClusterSecret {
				p.add("cluster.secret_file", "secret of %d bytes is too short: at least %d (make one with: openssl rand -hex 32)", len(s), MinClusterSecret)
			}
			c.Secret = []byte(s)
		}
	}
	c.NATSCredsFile = resolve(path, c.NATSCredsFile)
	checkSecretMode(p, "cluster.nats_creds_file", c.NATSCredsFile)
	c.NATSCAFile = resolve(path, c.NATSCAFile)
}

// RelayAgent is an agent allowed to connect.
type RelayAgent struct {
	Name string `mapstructure:"name"`
	// TokenSHA256 is one hash, or a list of them: one per replica (agent
	// process serving this name), each with a token of its own. A
	// connection with a hash that has a live connection replaces it; one
	// with another hash adds a replica. Rotation: add the new hash, move
	// the replica to its token, remove the old hash.
	TokenSHA256 []string `mapstructure:"token_sha256"`
	// PublicKeys lists Ed25519 keys ("ed25519:<base64>", from mcptun key
	// new), each a replica's credential like a token hash: the agent signs
	// the TLS session it connects on, so the relay learns nothing it could
	// replay elsewhere.
	PublicKeys []string `mapstructure:"public_keys"`
	// CertSHA256 lists the hex SHA-256 of TLS client certificates, each a
	// replica's credential: of the certificate's public key
	// (SubjectPublicKeyInfo, survives renewal with the same key; mcptun key
	// show prints it) or of the whole certificate (openssl x509
	// -fingerprint -sha256). Colons and case are ignored.
	CertSHA256 []string `mapstructure:"cert_sha256"`
}

// RelayClient is an MCP client allowed to call through the relay.
type RelayClient struct {
	Name        string    `mapstructure:"name"`
	TokenSHA256 string    `mapstructure:"token_sha256"`
	Allow       []string  `mapstructure:"allow"` // "agent/server" or "agent/server/tool-glob" patterns; "*" matches a whole segment
	RateLimit   RateLimit `mapstructure:"rate_limit"`
}

// RateLimit bounds exchanges (a relay client's, an agent server's):
// requests_per_second on average, bursts of up to burst (default:
// requests_per_second rounded up). Zero requests_per_second: no limit.
type RateLimit struct {
	RequestsPerSecond float64 `mapstructure:"requests_per_second"`
	Burst             int     `mapstructure:"burst"`
}

// Log configures logging.
type Log struct {
	Level  string `mapstructure:"level"`  // debug, info (default), warn, error
	Format string `mapstructure:"format"` // text (default) or json
}

// Debug holds opt-in diagnostics.
type Debug struct {
	// PprofListen serves net/http/pprof on this address (loopback only).
	PprofListen string `mapstructure:"pprof_listen"`
}

// LoadRelay reads and validates a relay configuration file.
func LoadRelay(path string) (*Relay, error) {
	var c Relay
	if err := load(path, &c, "admin.token"); err != nil {
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

func (c *Relay) validate(p *problems, path string) {
	checkHostPort(p, "tunnel.listen", c.Tunnel.Listen)
	if c.Tunnel.CertFile == "" {
		p.add("tunnel.cert_file", "required: agents verify the relay with TLS")
	}
	if c.Tunnel.KeyFile == "" {
		p.add("tunnel.key_file", "required: agents verify the relay with TLS")
	}
	c.Tunnel.CertFile = resolve(path, c.Tunnel.CertFile)
	c.Tunnel.KeyFile = resolve(path, c.Tunnel.KeyFile)
	checkSecretMode(p, "tunnel.key_file", c.Tunnel.KeyFile)

	checkHostPort(p, "http.listen", c.HTTP.Listen)
	if (c.HTTP.CertFile == "") != (c.HTTP.KeyFile == "") {
		p.add("http.cert_file", "cert_file and key_file must be set together (HTTPS) or both left out (plain HTTP)")
	}
	c.HTTP.CertFile = resolve(path, c.HTTP.CertFile)
	c.HTTP.KeyFile = resolve(path, c.HTTP.KeyFile)
	if c.HTTP.KeyFile != c.Tunnel.KeyFile { // one file, one report
		checkSecretMode(p, "http.key_file", c.HTTP.KeyFile)
	}
	checkOrigins(p, "http.allowed_origins", c.HTTP.AllowedOrigins)
	if c.HTTP.PublicURL != "" {
		checkURL(p, "http.public_url", c.HTTP.PublicURL)
	}
	c.HTTP.validateLimits(p)

	if len(c.Agents) == 0 {
		p.add("agents", "at least one agent is required")
	}
	seen := map[string]bool{}
	for i, a := range c.Agents {
		key := fmt.Sprintf("agents[%d]", i)
		checkNamed(p, key+".name", "agent", a.Name, seen)
		if len(a.TokenSHA256)+len(a.PublicKeys)+len(a.CertSHA256) == 0 {
			p.add(key+".token_sha256", "required: the SHA-256 of the agent's token, or a list of them, one per replica (make one with: mcptun token new); or public_keys (mcptun key new) or cert_sha256 instead")
			continue
		}
		if len(a.TokenSHA256) > 0 {
			checkTokenHashes(p, key+".token_sha256", a.TokenSHA256)
		}
		checkPublicKeys(p, key+".public_keys", a.PublicKeys)
		checkCertHashes(p, key+".cert_sha256", c.Agents[i].CertSHA256)
	}
	seen = map[string]bool{}
	for i, cl := range c.Clients {
		key := fmt.Sprintf("clients[%d]", i)
		checkNamed(p, key+".name", "client", cl.Name, seen)
		checkSHA256(p, key+".token_sha256", cl.TokenSHA256)
		if len(cl.Allow) == 0 {
			p.add(key+".allow", "empty: the client could reach nothing; list agent/server patterns such as \"dc1/*\"")
		}
		for j, pat := range cl.Allow {
			if err := CheckPattern(pat); err != nil {
				p.add(fmt.Sprintf("%s.allow[%d]", key, j), "%v", err)
			}
		}
		c.Clients[i].RateLimit.validate(p, key+".rate_limit")
	}
	c.OAuth.validate(p, path)
	c.Log.validate(p)
	if c.Debug.PprofListen != "" {
		checkHostPort(p, "debug.pprof_listen", c.Debug.PprofListen)
	}
	checkShutdownGrace(p, &c.ShutdownGrace)
	c.Admin.validate(p, path)
	c.Cluster.validate(p, path)
}

// checkTokenHashes validates an agent's token_sha256: one hash (a single
// YAML string arrives as a list of one) or a list, one per replica, each
// distinct (two replicas with one token would replace each other).
func checkTokenHashes(p *problems, key string, hashes []string) {
	if len(hashes) == 0 {
		p.add(key, "required: the SHA-256 of the agent's token, or a list of them, one per replica (make one with: mcptun token new)")
		return
	}
	seen := map[[32]byte]int{}
	for i, h := range hashes {
		k := key
		if len(hashes) > 1 {
			k = fmt.Sprintf("%s[%d]", key, i)
		}
		sum, ok := DecodeSHA256Hex(h)
		if !ok {
			checkSHA256(p, k, h)
			continue
		}
		if j, dup := seen[sum]; dup {
			p.add(k, "same hash as %s[%d]: each replica needs a token of its own, or the two replace each other", key, j)
			continue
		}
		seen[sum] = i
	}
}

// checkPublicKeys validates an agent's public_keys: each an Ed25519 key,
// none listed twice (two replicas with one key replace each other).
func checkPublicKeys(p *problems, key string, keys []string) {
	seen := map[string]int{}
	for i, s := range keys {
		k := fmt.Sprintf("%s[%d]", key, i)
		pub, err := agentkey.ParsePublic(s)
		if err != nil {
			p.add(k, "%v", err)
			continue
		}
		if j, dup := seen[string(pub)]; dup {
			p.add(k, "same key as %s[%d]: each replica needs a key of its own, or the two replace each other", key, j)
			continue
		}
		seen[string(pub)] = i
	}
}

// checkCertHashes validates an agent's cert_sha256 and normalises each
// entry to lower-case hex without colons (as openssl prints fingerprints).
func checkCertHashes(p *problems, key string, hashes []string) {
	seen := map[[32]byte]int{}
	for i, h := range hashes {
		k := fmt.Sprintf("%s[%d]", key, i)
		h = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(h), ":", ""))
		hashes[i] = h
		sum, ok := DecodeSHA256Hex(h)
		if !ok {
			p.add(k, "must be the 64 hex characters of a SHA-256 digest of the agent's client certificate or its public key (print one with: mcptun key show CERT_FILE)")
			continue
		}
		if j, dup := seen[sum]; dup {
			p.add(k, "same hash as %s[%d]: each replica needs a certificate of its own, or the two replace each other", key, j)
			continue
		}
		seen[sum] = i
	}
}

// checkShutdownGrace validates shutdown_grace and fills in its default.
func checkShutdownGrace(p *problems, d *time.Duration) {
	switch {
	case *d < 0:
		p.add("shutdown_grace", "must not be negative, not %s (0 or unset: %s)", *d, DefaultShutdownGrace)
	case *d == 0:
		*d = DefaultShutdownGrace
	case *d < time.Millisecond:
		// A bare number is nanoseconds: surely not what was meant.
		p.add("shutdown_grace", "%s is less than a millisecond: give a unit, such as 30s", *d)
	}
}

// validateLimits checks the connection limits and fills in defaults.
func (h *RelayHTTP) validateLimits(p *problems) {
	if h.MaxConnections < 0 {
		p.add("http.max_connections", "must be a number of connections, > 0 (or 0: the default %d), not %d", DefaultMaxConnections, h.MaxConnections)
	}
	for _, d := range h.timeouts() {
		if *d.v != 0 && *d.v < time.Second {
			p.add(d.key, "must be at least 1s (or left out: the default %s), not %s", d.def, *d.v)
		}
	}
	h.SetLimitDefaults()
}

// SetLimitDefaults gives the connection limits left at zero their
// defaults (for a RelayHTTP made in code, not loaded).
func (h *RelayHTTP) SetLimitDefaults() {
	if h.MaxConnections == 0 {
		h.MaxConnections = DefaultMaxConnections
	}
	for _, d := range h.timeouts() {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
}

type timeoutKey struct {
	key string
	v   *time.Duration
	def time.Duration
}

func (h *RelayHTTP) timeouts() []timeoutKey {
	return []timeoutKey{
		{"http.header_timeout", &h.HeaderTimeout, DefaultHeaderTimeout},
		{"http.idle_timeout", &h.IdleTimeout, DefaultHTTPIdleTimeout},
		{"http.body_timeout", &h.BodyTimeout, DefaultBodyTimeout},
		{"http.write_timeout", &h.WriteTimeout, DefaultWriteTimeout},
	}
}

func (r *RateLimit) validate(p *problems, key string) {
	switch rps := r.RequestsPerSecond; {
	case math.IsNaN(rps) || math.IsInf(rps, 0) || rps < 0:
		p.add(key+".requests_per_second", "must be a number of requests per second, > 0 (or 0: no limit), not %v", rps)
		return
	case r.Burst < 0:
		p.add(key+".burst", "must not be negative, not %d", r.Burst)
		return
	case rps == 0 && r.Burst > 0:
		p.add(key+".burst", "set without requests_per_second: a burst of what rate?")
		return
	}
	if r.RequestsPerSecond > 0 && r.Burst == 0 {
		r.Burst = int(math.Ceil(r.RequestsPerSecond))
	}
}

// CheckPattern validates an "agent/server" allow pattern, or an
// "agent/server/tool-glob" one that narrows the server's tools.
func CheckPattern(pat string) error {
	agent, server, ok := strings.Cut(pat, "/")
	if !ok {
		return fmt.Errorf("pattern %q must be agent/server, e.g. \"dc1/*\" or \"*/wiki\"", pat)
	}
	if s, tools, narrowed := strings.Cut(server, "/"); narrowed {
		server = s
		if err := glob.Check(tools); err != nil {
			return fmt.Errorf("pattern %q: tool glob %q: %w", pat, tools, err)
		}
	}
	for _, part := range []string{agent, server} {
		if part != "*" && !namePattern.MatchString(part) {
			return fmt.Errorf("pattern %q: segment %q must be a name or *", pat, part)
		}
	}
	return nil
}

func (l *Log) validate(p *problems) {
	if l.Level == "" {
		l.Level = "info"
	}
	if l.Format == "" {
		l.Format = "text"
	}
	oneOf(p, "log.level", l.Level, "debug", "info", "warn", "error")
	oneOf(p, "log.format", l.Format, "text", "json")
}
