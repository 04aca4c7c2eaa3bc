package tunnel

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Resolver looks up the addresses of a relay's host name; *net.Resolver
// is one. Tests substitute their own to change the answer.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Multi defaults.
const (
	DefaultResolveInterval = 30 * time.Second
	DefaultRemoveGrace     = 30 * time.Second
)

// resolveTimeout bounds one DNS lookup.
const resolveTimeout = 10 * time.Second

// MultiConfig configures an agent's tunnels to several relays.
type MultiConfig struct {
	// Client is what every tunnel shares: name, token, TLS, transport,
	// backoff. Its Address and DialAddress are ignored. An empty
	// TLSConfig.ServerName means each relay is verified by the host of its
	// own entry in Addresses, never by the address dialed.
	Client ClientConfig
	// Addresses lists the relays' host:port. An IP literal is one relay;
	// a host name is one relay per address in its DNS answer (its IPv4
	// addresses, or its IPv6 ones if it has none: a relay with both an A
	// and an AAAA record would otherwise get two tunnels, which replace
	// each other at the relay).
	Addresses []string
	// Resolver looks host names up; default net.DefaultResolver.
	Resolver Resolver
	// ResolveInterval is how often host names are looked up again
	// (default 30 s); a name with no answer yet is retried sooner.
	ResolveInterval time.Duration
	// RemoveGrace is how long the tunnel to an address that left DNS
	// keeps serving the exchanges in flight on it after telling its relay
	// the agent drains there (default 30 s).
	RemoveGrace time.Duration
	// Connections is how many tunnels to open when the whole list comes
	// to one address (one entry that does not resolve to several) and
	// the relay reached there says it is one of a fleet (its welcome): a
	// load balancer in front of the fleet spreads them, so the loss of
	// one relay leaves the agent connected (default 1). Tunnels that
	// land on one relay serve side by side (see ClientConfig.Conn). A
	// lone relay gets one tunnel whatever Connections says.
	Connections int
}

// Multi keeps one tunnel (a Client with its own reconnect and backoff) to
// each relay of a list, following DNS. The streams of every tunnel arrive
// on one Listener: sessions live at the agent, so any relay with a tunnel
// serves any session.
type Multi struct {
	cfg      MultiConfig
	instance string // this process's id in every hello
	log      *slog.Logger
	entries  []multiEntry
	ln       *listener
	running  atomic.Bool

	kick chan struct{} // wakes Run to sync now

	mu       sync.Mutex
	fleet    bool                    // a relay said it is one of a fleet
	nextConn int                     // pooled tunnels opened so far (their ClientConfig.Conn)
	tunnels  map[string]*relayTunnel // by dialed address
	draining bool
	changed  chan struct{} // closed and replaced when a tunnel's state changes
}

type multiEntry struct {
	addr, host, port string
	literal          bool // host is an IP address: nothing to resolve
}

// relayTunnel is one Client and the goroutines that run and watch it.
type relayTunnel struct {
	entry  string // as configured
	dial   string // ip:port dialed
	client *Client
	cancel context.CancelFunc
	done   chan struct{} // closed when Run and the watcher returned

	// Guarded by Multi.mu.
	connected bool
	transport string
	since     time.Time
	removing  bool // left DNS: draining, closed after RemoveGrace
	// relayID is the instance id of the relay last reached. duplicateOf
	// is the dialed address of the tunnel that reached the same relay
	// (a load balancer's addresses lead to one relay): this one is
	// stopped, as the two would replace each other, until that tunnel
	// is down.
	relayID     string
	duplicateOf string
	// pooled: one of the relay.connections tunnels through one address;
	// those may reach one relay, and are never stopped as duplicates.
	pooled bool
}

// RelayStatus is one relay's tunnel, for logs and status pages.
type RelayStatus struct {
	Address   string    `json:"address"`             // the relay.address entry
	Dial      string    `json:"dial"`                // the ip:port dialed
	Connected bool      `json:"connected"`           // an authenticated session is up
	Transport string    `json:"transport,omitempty"` // of the session, when connected
	Since     time.Time `json:"since"`               // when Connected last changed
	Removing  bool      `json:"removing,omitempty"`  // the address left DNS
	// DuplicateOf: this address leads to the relay that tunnel (a Dial)
	// reaches, so this tunnel is stopped while that one is up.
	DuplicateOf string `json:"duplicate_of,omitempty"`
}

// NewMulti checks cfg; nothing is dialed until Run.
func NewMulti(cfg MultiConfig) (*Multi, error) {
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("tunnel: multi: no relay address")
	}
	m := &Multi{cfg: cfg, tunnels: map[string]*relayTunnel{}, changed: make(chan struct{}), kick: make(chan struct{}, 1)}
	seen := map[string]bool{}
	for _, a := range cfg.Addresses {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("tunnel: multi: relay address %q is not host:port", a)
		}
		if seen[strings.ToLower(a)] {
			return nil, fmt.Errorf("tunnel: multi: relay address %q is listed twice", a)
		}
		seen[strings.ToLower(a)] = true
		_, perr := netip.ParseAddr(host)
		m.entries = append(m.entries, multiEntry{addr: a, host: host, port: port, literal: perr == nil})
	}
	// The shared settings are checked once here, as every tunnel's are.
	probe := cfg.Client
	probe.Address, probe.DialAddress = cfg.Addresses[0], ""
	norm, err := probe.normalize()
	if err != nil {
		return nil, err
	}
	// Not the rest of norm: its TLS server name is the first entry's.
	m.cfg.Client.Logger, m.cfg.Client.Clock, m.cfg.Client.MinBackoff = norm.Logger, norm.Clock, norm.MinBackoff
	if m.cfg.Resolver == nil {
		m.cfg.Resolver = net.DefaultResolver
	}
	if m.cfg.ResolveInterval <= 0 {
		m.cfg.ResolveInterval = DefaultResolveInterval
	}
	if m.cfg.RemoveGrace <= 0 {
		m.cfg.RemoveGrace = DefaultRemoveGrace
	}
	if m.cfg.Connections <= 0 {
		m.cfg.Connections = 1
	}
	if m.cfg.Connections > maxConns {
		return nil, fmt.Errorf("tunnel: multi: %d connections, at most %d", m.cfg.Connections, maxConns)
	}
	var id [8]byte
	if _, err := crand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("tunnel: multi: %w", err)
	}
	m.instance = hex.EncodeToString(id[:])
	m.log = norm.Logger.With("agent", norm.Name)
	m.ln = newListener(norm.Name)
	return m, nil
}

// Listener returns the listener on which the streams of every tunnel
// arrive. Closing it makes Accept return net.ErrClosed; the tunnels keep
// running.
func (m *Multi) Listener() net.Listener { return m.ln }

// Status lists the tunnels, ordered by entry and dialed address.
func (m *Multi) Status() []RelayStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]RelayStatus, 0, len(m.tunnels))
	for _, t := range m.tunnels {
		out = append(out, RelayStatus{Address: t.entry, Dial: t.dial, Connected: t.connected,
			Transport: t.transport, Since: t.since, Removing: t.removing, DuplicateOf: t.duplicateOf})
	}
	slices.SortFunc(out, func(a, b RelayStatus) int {
		if c := strings.Compare(a.Address, b.Address); c != 0 {
			return c
		}
		return strings.Compare(a.Dial, b.Dial)
	})
	return out
}

// Connected reports how many tunnels have an authenticated session.
func (m *Multi) Connected() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.connectedLocked()
}

func (m *Multi) connectedLocked() int {
	n := 0
	for _, t := range m.tunnels {
		if t.connected {
			n++
		}
	}
	return n
}

// WaitConnected returns nil once at least n tunnels have an authenticated
// session, or ctx's error.
func (m *Multi) WaitConnected(ctx context.Context, n int) error {
	for {
		m.mu.Lock()
		ok, ch := m.connectedLocked() >= n, m.changed
		m.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Drain tells every relay that the agent is shutting down (see
// Client.Drain); no tunnel is added afterwards. The errors are those of
// the relays that could not be told.
func (m *Multi) Drain() error {
	m.mu.Lock()
	m.draining = true
	tunnels := make([]*relayTunnel, 0, len(m.tunnels))
	for _, t := range m.tunnels {
		tunnels = append(tunnels, t)
	}
	m.mu.Unlock()
	var errs []error
	for _, t := range tunnels {
		if err := t.client.Drain(); err != nil {
			errs = append(errs, fmt.Errorf("relay %s (%s): %w", t.entry, t.dial, err))
		}
	}
	return errors.Join(errs...)
}

// Run resolves the addresses, keeps a tunnel to each relay and follows
// DNS until ctx is done; then it closes every tunnel, waits for them and
// returns nil. Run may be called once.
func (m *Multi) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("tunnel: Multi.Run called twice")
	}
	var wg sync.WaitGroup
	defer func() {
		m.mu.Lock()
		for _, t := range m.tunnels {
			t.cancel()
		}
		m.mu.Unlock()
		wg.Wait()
	}()
	failures := 0
	for {
		missing := m.sync(ctx, &wg)
		wait := m.cfg.ResolveInterval
		if missing {
			// A name with no answer yet: the agent may have started
			// before DNS knew its relays; look again soon.
			wait = backoffDelay(failures, m.cfg.Client.MinBackoff, m.cfg.ResolveInterval, rand.Float64())
			failures++
		} else {
			failures = 0
		}
		select {
		case <-ctx.Done():
			return nil
		case <-m.cfg.Client.Clock.After(wait):
		case <-m.kick:
		}
	}
}

// sync resolves every entry and adds or removes tunnels to match. It
// reports whether some name has no address yet (its lookup failed and it
// has no tunnel).
func (m *Multi) sync(ctx context.Context, wg *sync.WaitGroup) (missing bool) {
	type target struct {
		entry, dial, key string
		pooled           bool
	}
	var want []target
	kept := map[string]bool{} // entries whose lookup failed: their tunnels stay
	for _, e := range m.entries {
		if e.literal {
			want = append(want, target{entry: e.addr})
			continue
		}
		ips, err := m.lookup(ctx, e.host)
		if ctx.Err() != nil {
			return false
		}
		if err != nil {
			m.log.Warn("tunnel: cannot resolve relay; keeping its tunnels", "relay", e.addr, "err", err)
			kept[e.addr] = true
			continue
		}
		for _, ip := range ips {
			want = append(want, target{entry: e.addr, dial: net.JoinHostPort(ip.String(), e.port)})
		}
	}

	for i := range want {
		want[i].key = want[i].dial
		if want[i].key == "" {
			want[i].key = want[i].entry
		}
	}
	m.mu.Lock()
	fleet := m.fleet
	m.mu.Unlock()
	if len(want) == 1 && len(kept) == 0 && m.cfg.Connections > 1 && fleet {
		// One address for everything: a load balancer's, most likely.
		// Open several tunnels through it so that losing one relay
		// behind it leaves the agent connected through another.
		one := want[0]
		one.pooled = true
		want = want[:0]
		for i := range m.cfg.Connections {
			tg := one
			if i > 0 {
				tg.key = fmt.Sprintf("%s#%d", one.key, i+1)
			}
			want = append(want, tg)
		}
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	wanted := map[string]bool{}
	for _, tg := range want {
		key := tg.key
		if wanted[key] {
			// Two entries lead to one address: one tunnel, or the two
			// would replace each other at the relay.
			continue
		}
		wanted[key] = true
		if t := m.tunnels[key]; t != nil {
			switch {
			case t.removing:
				// Back in DNS while its old tunnel drains: that
				// tunnel cannot take new work again; end it for a
				// fresh one.
			case t.duplicateOf != "" && !m.upLocked(t.duplicateOf):
				// The tunnel that reached the same relay is down:
				// this address may lead elsewhere now.
				m.log.Info("tunnel: retrying an address that led to the relay of a tunnel now down", "relay", t.entry, "dial", t.dial, "was_duplicate_of", t.duplicateOf)
			default:
				continue
			}
			t.cancel()
			delete(m.tunnels, key)
		}
		if m.draining {
			continue
		}
		if err := m.addLocked(ctx, wg, key, tg.entry, tg.dial, tg.pooled); err != nil {
			m.log.Error("tunnel: cannot add relay", "relay", tg.entry, "dial", tg.dial, "err", err)
		}
	}
	for key, t := range m.tunnels {
		if wanted[key] || t.removing || kept[t.entry] {
			continue
		}
		m.removeLocked(ctx, wg, t)
	}
	for _, e := range m.entries {
		if !kept[e.addr] {
			continue
		}
		has := false
		for _, t := range m.tunnels {
			has = has || t.entry == e.addr
		}
		missing = missing || !has
	}
	return missing
}

// upLocked reports whether the tunnel dialing key is connected.
func (m *Multi) upLocked(key string) bool {
	t := m.tunnels[key]
	return t != nil && t.connected && !t.removing
}

// lookup resolves host to the addresses of one family: IPv4 if it has
// any, else IPv6.
func (m *Multi) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	lctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	ips, err := m.cfg.Resolver.LookupNetIP(lctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("tunnel: resolve %s: %w", host, err)
	}
	var v4, v6 []netip.Addr
	for _, ip := range ips {
		ip = ip.Unmap()
		switch {
		case ip.Is4():
			v4 = append(v4, ip)
		case ip.Is6():
			v6 = append(v6, ip.WithZone(""))
		}
	}
	out := v4
	if len(out) == 0 {
		out = v6
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("tunnel: resolve %s: no addresses", host)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return slices.Compact(out), nil
}

// addLocked starts a tunnel to dial (or to entry itself when dial is "").
func (m *Multi) addLocked(ctx context.Context, wg *sync.WaitGroup, key, entry, dial string, pooled bool) error {
	cc := m.cfg.Client
	cc.Address, cc.DialAddress = entry, dial
	// A pooled tunnel (relay.connections) has a number of its own, so
	// those that land on one relay serve there side by side. The tunnels
	// of listed addresses share number 0: two of them that reach one
	// relay replace each other there, so the relay sends new exchanges
	// to the newer while the agent stops the older as a duplicate
	// (duplicatesLocked); side by side, the relay would go on choosing
	// the one being stopped.
	cc.Instance = m.instance
	if pooled {
		m.nextConn++
		cc.Conn = 1 + (m.nextConn-1)%maxConns
	}
	logger := m.cfg.Client.Logger
	if dial != "" {
		logger = logger.With("relay_addr", dial)
	}
	if key != dial && key != entry {
		logger = logger.With("tunnel", key)
	}
	cc.Logger = logger
	c, err := NewClient(cc)
	if err != nil {
		return err
	}
	// Every tunnel hands its streams to the one listener the agent
	// serves.
	c.ln = m.ln
	tctx, cancel := context.WithCancel(ctx)
	t := &relayTunnel{entry: entry, dial: key, client: c, cancel: cancel, done: make(chan struct{}), since: time.Now(), pooled: pooled}
	m.tunnels[key] = t
	m.log.Info("tunnel: relay added", "relay", entry, "dial", key, "relays", len(m.tunnels))
	wg.Go(func() {
		defer close(t.done)
		var run sync.WaitGroup
		defer run.Wait()
		run.Go(func() {
			if err := c.Run(tctx); err != nil {
				m.log.Error("tunnel: relay tunnel stopped", "relay", entry, "dial", key, "err", err)
			}
		})
		m.watch(tctx, t)
	})
	return nil
}

// removeLocked drains the tunnel of an address that left DNS and ends it
// after RemoveGrace, so the exchanges in flight on it can finish.
func (m *Multi) removeLocked(ctx context.Context, wg *sync.WaitGroup, t *relayTunnel) {
	t.removing = true
	m.log.Info("tunnel: relay left DNS; draining its tunnel", "relay", t.entry, "dial", t.dial, "grace", m.cfg.RemoveGrace)
	wg.Go(func() {
		if err := t.client.Drain(); err != nil {
			m.log.Debug("tunnel: cannot tell a relay that left DNS the agent drains there", "relay", t.entry, "dial", t.dial, "err", err)
		}
		select {
		case <-ctx.Done():
		case <-t.done:
		case <-m.cfg.Client.Clock.After(m.cfg.RemoveGrace):
		}
		t.cancel()
		<-t.done
		m.mu.Lock()
		if m.tunnels[t.dial] == t {
			delete(m.tunnels, t.dial)
		}
		n := len(m.tunnels)
		m.mu.Unlock()
		m.notify()
		m.log.Info("tunnel: relay removed", "relay", t.entry, "dial", t.dial, "relays", n)
	})
}

// watch follows one tunnel's session for Status and logs each change with
// how many relays the agent is connected to.
func (m *Multi) watch(ctx context.Context, t *relayTunnel) {
	c := t.client
	for {
		c.mu.Lock()
		up, ch := c.cur != nil, c.changed
		transport, relayID, fleet := "", "", false
		if up {
			transport, relayID, fleet = c.cur.Transport(), c.cur.relayID, c.cur.fleet
		}
		c.mu.Unlock()
		m.mu.Lock()
		changed := up != t.connected
		if changed {
			t.connected, t.transport, t.since = up, transport, time.Now()
		}
		var dups []*relayTunnel
		if up && relayID != "" {
			t.relayID = relayID
			dups = m.duplicatesLocked(t)
		}
		n, total := m.connectedLocked(), len(m.tunnels)
		newFleet := up && fleet && !m.fleet
		if newFleet {
			m.fleet = true
		}
		m.mu.Unlock()
		if newFleet && m.cfg.Connections > 1 {
			m.log.Info("tunnel: the relay is one of a fleet; opening more tunnels through its address", "relay", t.entry, "connections", m.cfg.Connections)
			select {
			case m.kick <- struct{}{}:
			default:
			}
		}
		for _, o := range dups {
			m.log.Warn("tunnel: two addresses lead to one relay (a load balancer's?); keeping one tunnel, as two would replace each other",
				"relay", t.entry, "dial", t.dial, "stopped", o.dial)
		}
		if changed {
			m.notify()
			state := "down"
			if up {
				state = "up"
			}
			m.log.Info("tunnel: relay "+state, "relay", t.entry, "dial", t.dial, "transport", transport,
				"relays_connected", n, "relays", total)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			m.mu.Lock()
			t.connected, t.transport = false, ""
			m.mu.Unlock()
			m.notify()
			return
		}
	}
}

// duplicatesLocked stops the other tunnels that reached t's relay and
// returns them. A tunnel already stopped as a duplicate stops no other,
// so two tunnels that reach one relay at once do not stop each other.
func (m *Multi) duplicatesLocked(t *relayTunnel) []*relayTunnel {
	if t.duplicateOf != "" || t.pooled {
		return nil
	}
	var out []*relayTunnel
	for _, o := range m.tunnels {
		if o != t && o.relayID == t.relayID && o.duplicateOf == "" && !o.removing && !o.pooled {
			o.duplicateOf = t.dial
			o.cancel()
			out = append(out, o)
		}
	}
	return out
}

func (m *Multi) notify() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}
