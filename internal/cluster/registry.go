package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Registry defaults.
const (
	// DefaultHeartbeat is how often a relay announces what it holds.
	DefaultHeartbeat = time.Second
	// DefaultExpiry is how long an announcement stands: a relay that
	// died (sent nothing for this long) is forgotten by the others.
	DefaultExpiry = 3 * time.Second
)

// subject carries every relay's announcements; macHeader their mac.
const (
	DefaultSubject = "mcptun.fleet.relays"
	macHeader      = "Mcptun-Mac"
	// maxAnnounce bounds an announcement's size (NATS's default message
	// limit is 1 MiB).
	maxAnnounce = 1 << 20
)

// Holdings is what a relay holds: per agent name, the replica tags it
// has a tunnel to.
type Holdings map[string][]string

// announce is a relay's heartbeat on the subject.
type announce struct {
	Version int      `json:"v"`
	Relay   string   `json:"relay"` // instance id
	Name    string   `json:"name"`  // for humans
	Addr    string   `json:"addr"`  // cluster.advertise
	Agents  Holdings `json:"agents"`
	// Bye: the relay drains or stops; forget it now.
	Bye bool `json:"bye,omitempty"`
}

// Peer is a relay that holds an agent.
type Peer struct {
	Relay string // instance id
	Name  string
	Addr  string // where to dial its link
}

// RegistryConfig configures a Registry.
type RegistryConfig struct {
	// URL is the NATS server (nats://host:4222; a list separated by
	// commas). NATSOptions add credentials or TLS.
	URL         string
	NATSOptions []nats.Option
	Relay       string // this relay's instance id
	Name        string // this relay's name, for logs and X-Mcptun-Via
	Advertise   string // where peers dial this relay's link
	// Secret keys the mac on every announcement, so a NATS user without
	// it cannot divert agents to another address.
	Secret []byte
	// Holdings reports what this relay holds now.
	Holdings  func() Holdings
	Heartbeat time.Duration // default DefaultHeartbeat
	Expiry    time.Duration // default DefaultExpiry
	Subject   string        // default DefaultSubject
	Logger    *slog.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Registry keeps, from the announcements on NATS, which relay holds which
// agent, and announces this relay's own holdings every Heartbeat and at
// once on Changed. An entry not renewed within Expiry is gone: a relay
// that dies is forgotten that long after its last heartbeat.
type Registry struct {
	cfg     RegistryConfig
	nc      *nats.Conn
	sub     *nats.Subscription
	kick    chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	badMACs int

	mu    sync.Mutex
	peers map[string]peerEntry // by relay id
	left  bool                 // Leave was called: announce nothing more
}

type peerEntry struct {
	announce
	expires time.Time
}

// NewRegistry connects to NATS and starts announcing. Close stops it.
func NewRegistry(ctx context.Context, cfg RegistryConfig) (*Registry, error) {
	if cfg.URL == "" {
		return nil, errors.New("cluster: registry: no NATS URL")
	}
	if len(cfg.Secret) < MinSecretLen {
		return nil, fmt.Errorf("cluster: registry: secret of %d bytes, want at least %d", len(cfg.Secret), MinSecretLen)
	}
	if cfg.Holdings == nil {
		return nil, errors.New("cluster: registry: no Holdings func")
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	if cfg.Expiry <= 0 {
		cfg.Expiry = DefaultExpiry
	}
	if cfg.Expiry < 2*cfg.Heartbeat {
		return nil, fmt.Errorf("cluster: registry: expiry %s under two heartbeats (%s)", cfg.Expiry, cfg.Heartbeat)
	}
	if cfg.Subject == "" {
		cfg.Subject = DefaultSubject
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Registry{cfg: cfg, kick: make(chan struct{}, 1), stop: make(chan struct{}), peers: map[string]peerEntry{}}
	log := cfg.Logger
	opts := append([]nats.Option{
		nats.Name("mcptun relay " + cfg.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("cluster: NATS disconnected; forwarding uses what is known until it expires", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("cluster: NATS reconnected", "server", nc.ConnectedUrlRedacted())
			r.Changed()
		}),
	}, cfg.NATSOptions...)
	nc, err := nats.Connect(cfg.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: registry: connect to NATS: %w", err)
	}
	r.nc = nc
	r.sub, err = nc.Subscribe(cfg.Subject, r.receive)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: registry: subscribe %s: %w", cfg.Subject, err)
	}
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := nc.FlushWithContext(fctx); err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: registry: NATS: %w", err)
	}
	r.wg.Go(r.heartbeat)
	log.Info("cluster: joined the fleet", "relay", cfg.Relay, "name", cfg.Name, "advertise", cfg.Advertise,
		"nats", nc.ConnectedUrlRedacted(), "heartbeat", cfg.Heartbeat, "expiry", cfg.Expiry)
	return r, nil
}

// Changed announces this relay's holdings now (an agent came or went).
func (r *Registry) Changed() {
	select {
	case r.kick <- struct{}{}:
	default: // an announcement is already due
	}
}

// Leave announces that this relay holds nothing and will not (it drains):
// peers stop forwarding to it at once.
func (r *Registry) Leave() {
	r.mu.Lock()
	if r.left {
		r.mu.Unlock()
		return
	}
	r.left = true
	r.mu.Unlock()
	r.publish(announce{Version: 1, Relay: r.cfg.Relay, Name: r.cfg.Name, Addr: r.cfg.Advertise, Bye: true})
	_ = r.nc.FlushTimeout(time.Second)
}

// Close leaves the fleet and disconnects from NATS.
func (r *Registry) Close() error {
	r.once.Do(func() {
		r.Leave()
		close(r.stop)
		r.wg.Wait()
		_ = r.sub.Unsubscribe()
		r.nc.Close()
	})
	return nil
}

func (r *Registry) heartbeat() {
	t := time.NewTicker(r.cfg.Heartbeat)
	defer t.Stop()
	for {
		r.mu.Lock()
		left := r.left
		r.mu.Unlock()
		if !left {
			r.publish(announce{Version: 1, Relay: r.cfg.Relay, Name: r.cfg.Name, Addr: r.cfg.Advertise, Agents: r.cfg.Holdings()})
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		case <-r.kick:
		}
	}
}

func (r *Registry) publish(a announce) {
	body, err := json.Marshal(a)
	if err != nil {
		r.cfg.Logger.Error("cluster: encode announcement", "err", err)
		return
	}
	msg := nats.NewMsg(r.cfg.Subject)
	msg.Data = body
	msg.Header.Set(macHeader, announceMAC(r.cfg.Secret, body))
	if err := r.nc.PublishMsg(msg); err != nil {
		r.cfg.Logger.Debug("cluster: announce", "err", err)
	}
}

func announceMAC(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("mcptun announce v1\x00"))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

func (r *Registry) receive(msg *nats.Msg) {
	if len(msg.Data) > maxAnnounce {
		return
	}
	got := msg.Header.Get(macHeader)
	if !hmac.Equal([]byte(got), []byte(announceMAC(r.cfg.Secret, msg.Data))) {
		r.mu.Lock()
		r.badMACs++
		n := r.badMACs
		r.mu.Unlock()
		if n == 1 || n%1000 == 0 {
			r.cfg.Logger.Warn("cluster: ignoring announcements whose mac does not verify (another fleet on the subject, or cluster.secret_file differs)", "count", n)
		}
		return
	}
	var a announce
	if err := json.Unmarshal(msg.Data, &a); err != nil || a.Version != 1 || a.Relay == "" {
		return
	}
	if a.Relay == r.cfg.Relay {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	_, known := r.peers[a.Relay]
	if a.Bye {
		delete(r.peers, a.Relay)
		if known {
			r.cfg.Logger.Info("cluster: relay left the fleet", "relay", a.Relay, "name", a.Name)
		}
		return
	}
	r.peers[a.Relay] = peerEntry{announce: a, expires: r.cfg.Now().Add(r.cfg.Expiry)}
	if !known {
		r.cfg.Logger.Info("cluster: relay joined the fleet", "relay", a.Relay, "name", a.Name, "addr", a.Addr, "agents", len(a.Agents))
	}
}

// Lookup returns the peers (never this relay) that hold a tunnel to agent
// — to its replica tag, when tag is not "" — and whose last announcement
// has not expired, in a random order so that forwarded work spreads.
func (r *Registry) Lookup(agent, tag string) []Peer {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Peer
	for id, p := range r.peers {
		if now.After(p.expires) {
			delete(r.peers, id)
			r.cfg.Logger.Info("cluster: relay expired (no heartbeat)", "relay", id, "name", p.Name, "expiry", r.cfg.Expiry)
			continue
		}
		tags, ok := p.Agents[agent]
		if !ok || (tag != "" && !slices.Contains(tags, tag)) {
			continue
		}
		out = append(out, Peer{Relay: id, Name: p.Name, Addr: p.Addr})
	}
	// Map order is random enough to spread; sorting would send all
	// forwarded work for an agent to one peer.
	return out
}

// Peers returns every peer relay whose announcement stands.
func (r *Registry) Peers() []Peer {
	now := r.cfg.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Peer
	for id, p := range r.peers {
		if !now.After(p.expires) {
			out = append(out, Peer{Relay: id, Name: p.Name, Addr: p.Addr})
		}
	}
	slices.SortFunc(out, func(a, b Peer) int { return cmpString(a.Name, b.Name) })
	return out
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
