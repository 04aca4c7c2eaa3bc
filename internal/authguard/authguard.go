// Package authguard makes guessing secrets slow and visible: it counts
// failed authentications per source address, refuses a source that failed
// more than its allowance until the allowance refills, and logs failures
// without letting the log be flooded.
//
// A throttled source is refused before its credential is looked at, a
// correct one included: a guesser whose right guess still went through
// would not be slowed at all. The price is that a client sharing an
// address (a NAT) with a guesser waits with it; the refusal says how long
// (Retry-After).
//
// The table of sources is bounded (Config.MaxSources): under a flood of
// many addresses the least recently failed are forgotten first, so memory
// stays bounded and a forgotten source only starts again with a fresh
// allowance.
package authguard

import (
	"container/list"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/mcptun/mcptun/internal/logging"
)

// Defaults of Config.
const (
	DefaultRate       = 1.0 // failures a second, on average, once the burst is spent
	DefaultBurst      = 10
	DefaultMaxSources = 10000
	DefaultLogEvery   = time.Minute
)

// Config configures a Guard. Zero values take the defaults.
type Config struct {
	// A source may fail Burst times at once, then Rate times a second on
	// average; beyond that it is refused until its allowance refills.
	Rate  float64
	Burst int
	// MaxSources bounds the sources remembered.
	MaxSources int
	// LogEvery: one log line per source per LogEvery at most, with the
	// failures counted since its last line.
	LogEvery time.Duration
	// What names the credential in log lines ("bearer token", "agent
	// handshake").
	What   string
	Logger *slog.Logger
}

// Stats counts what a Guard saw, for metrics.
type Stats struct {
	Failures  atomic.Uint64 // failed authentications recorded
	Throttled atomic.Uint64 // attempts refused because their source was throttled
	Evicted   atomic.Uint64 // sources forgotten to keep the table bounded
}

// Guard tracks failed authentications per source. It is safe for
// concurrent use.
type Guard struct {
	cfg   Config
	log   *slog.Logger
	lines *logging.Limit // log lines over all sources
	stats Stats

	// n mirrors len(sources), so that Check costs one atomic load while
	// nobody has failed.
	n atomic.Int64

	mu      sync.Mutex
	sources map[netip.Prefix]*source
	lru     list.List // of *source, most recent failure first
}

type source struct {
	key      netip.Prefix
	lim      *rate.Limiter
	failures int // since the last log line
	refused  int // attempts refused since the last log line
	lastLog  time.Time
	lastFail time.Time
	elem     *list.Element
}

// New returns a Guard.
func New(cfg Config) *Guard {
	if cfg.Rate <= 0 {
		cfg.Rate = DefaultRate
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.MaxSources <= 0 {
		cfg.MaxSources = DefaultMaxSources
	}
	if cfg.LogEvery <= 0 {
		cfg.LogEvery = DefaultLogEvery
	}
	if cfg.What == "" {
		cfg.What = "credential"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Guard{cfg: cfg, log: log, lines: logging.NewLimit(logging.LimitRate, logging.LimitBurst), sources: make(map[netip.Prefix]*source)}
}

// Stats returns the Guard's counters.
func (g *Guard) Stats() *Stats { return &g.stats }

// Key is the source an address counts for: the address itself for IPv4,
// its /64 for IPv6 (one host usually has a whole /64 to pick from).
func Key(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p
	}
	return netip.PrefixFrom(a, a.BitLen())
}

// AddrOf returns the IP address of a TCP or UDP address, or of a
// "host:port" string as net/http's Request.RemoteAddr has it; the zero
// Addr if there is none.
func AddrOf(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr()
	case *net.UDPAddr:
		return a.AddrPort().Addr()
	case nil:
		return netip.Addr{}
	}
	return ParseAddr(a.String())
}

// ParseAddr parses "host:port" (or a bare address) into its IP address;
// the zero Addr if it is none.
func ParseAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return ap.Addr()
	}
	a, _ := netip.ParseAddr(s)
	return a
}

// Check reports whether src may try to authenticate now, and if not, how
// long until it may. A source without an address (not IP) is never
// throttled.
func (g *Guard) Check(src netip.Addr) (wait time.Duration, ok bool) {
	if g.n.Load() == 0 || !src.IsValid() {
		return 0, true
	}
	key := Key(src)
	now := time.Now()
	g.mu.Lock()
	defer g.mu.Unlock()
	s := g.sources[key]
	if s == nil {
		return 0, true
	}
	tokens := s.lim.TokensAt(now)
	if tokens >= 1 {
		return 0, true
	}
	return time.Duration((1 - tokens) / g.cfg.Rate * float64(time.Second)), false
}

// Refused records an attempt refused because Check said so: counted, and
// in the source's next log line. (Check only looks, so that a caller that
// asks twice for one attempt counts it once.)
func (g *Guard) Refused(src netip.Addr) {
	g.stats.Throttled.Add(1)
	if !src.IsValid() {
		return
	}
	now := time.Now()
	g.mu.Lock()
	s := g.sources[Key(src)]
	var args []any
	if s != nil {
		s.refused++
		args = g.dueLocked(s, now)
	}
	g.mu.Unlock()
	g.emit(args)
}

// Failed records a failed authentication from src; attrs (never the
// secret) go into its log line, such as the name it claimed.
func (g *Guard) Failed(src netip.Addr, attrs ...any) {
	g.stats.Failures.Add(1)
	if !src.IsValid() {
		g.emit(append([]any{"source", "unknown", "failures", 1}, attrs...))
		return
	}
	key := Key(src)
	now := time.Now()
	var lines [][]any
	g.mu.Lock()
	s := g.sources[key]
	if s == nil {
		lines = g.sweepLocked(now)
		s = &source{key: key, lim: rate.NewLimiter(rate.Limit(g.cfg.Rate), g.cfg.Burst)}
		s.elem = g.lru.PushFront(s)
		g.sources[key] = s
		g.n.Store(int64(len(g.sources)))
	} else {
		g.lru.MoveToFront(s.elem)
	}
	s.lim.AllowN(now, 1)
	s.failures++
	s.lastFail = now
	if args := g.dueLocked(s, now); args != nil {
		lines = append(lines, append(args, attrs...))
	}
	g.mu.Unlock()
	for _, l := range lines {
		g.emit(l)
	}
}

// dueLocked returns the source's log line if one is due, and resets its
// counts; nil if not.
func (g *Guard) dueLocked(s *source, now time.Time) []any {
	if !s.lastLog.IsZero() && now.Sub(s.lastLog) < g.cfg.LogEvery {
		return nil
	}
	return g.lineLocked(s, now)
}

func (g *Guard) lineLocked(s *source, now time.Time) []any {
	if s.failures == 0 && s.refused == 0 {
		return nil
	}
	args := []any{"source", s.key.String(), "failures", s.failures, "throttled", s.lim.TokensAt(now) < 1}
	if s.refused > 0 {
		args = append(args, "refused", s.refused)
	}
	s.failures, s.refused, s.lastLog = 0, 0, now
	return args
}

// sweepLocked makes room for a new source: sources whose allowance is full
// again and whose log line is out go (oldest first, a few per call);
// then, if the table is still full, the least recently failed one, with
// its pending line.
func (g *Guard) sweepLocked(now time.Time) [][]any {
	var lines [][]any
	for range 4 {
		e := g.lru.Back()
		if e == nil {
			break
		}
		s := e.Value.(*source)
		full := s.lim.TokensAt(now) >= float64(g.cfg.Burst)
		if !full || now.Sub(s.lastFail) < g.cfg.LogEvery {
			break
		}
		if args := g.lineLocked(s, now); args != nil {
			lines = append(lines, args)
		}
		g.removeLocked(s)
	}
	if len(g.sources) >= g.cfg.MaxSources {
		s := g.lru.Back().Value.(*source)
		if args := g.lineLocked(s, now); args != nil {
			lines = append(lines, args)
		}
		g.removeLocked(s)
		g.stats.Evicted.Add(1)
	}
	return lines
}

func (g *Guard) removeLocked(s *source) {
	g.lru.Remove(s.elem)
	delete(g.sources, s.key)
	g.n.Store(int64(len(g.sources)))
}

// emit writes one line, within the limit over all sources.
func (g *Guard) emit(args []any) {
	if args == nil {
		return
	}
	g.lines.Log(g.log, slog.LevelWarn, "authentication failed", append([]any{"what", g.cfg.What}, args...)...)
}

// Len reports the sources remembered (for tests).
func (g *Guard) Len() int { return int(g.n.Load()) }
