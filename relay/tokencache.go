package relay

import (
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/mcptun/mcptun/internal/ratelimit"
)

// Bounds of the cache of accepted access tokens.
const (
	tokenCacheSize = 4096
	// tokenCacheTTL bounds how long an accepted token is taken without a
	// new look at its signature, whatever its exp: a key the
	// authorization server withdrew stops working within it.
	tokenCacheTTL = 5 * time.Minute
)

// cachedToken is what an accepted token stands for.
type cachedToken struct {
	name  string
	allow []string // shared by every hit: never modified
	aud   jwt.Audience
	until time.Time
}

// tokenCache remembers accepted access tokens by their SHA-256, so that a
// client's every exchange does not cost a signature check. It is bounded:
// when full, expired entries go first, then arbitrary ones.
type tokenCache struct {
	max int
	mu  sync.Mutex
	m   map[[32]byte]*cachedToken
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[[32]byte]*cachedToken)}
}

func (c *tokenCache) get(sum [32]byte, now time.Time) (*cachedToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[sum]
	if !ok {
		return nil, false
	}
	if !now.Before(e.until) {
		delete(c.m, sum)
		return nil, false
	}
	return e, true
}

func (c *tokenCache) put(sum [32]byte, e *cachedToken) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		now := time.Now()
		for k, old := range c.m {
			if !now.Before(old.until) {
				delete(c.m, k)
			}
		}
		// Map order is random enough that a flood of tokens cannot pick
		// which entries it pushes out.
		for k := range c.m {
			if len(c.m) < c.max {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[sum] = e
}

func (c *tokenCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// maxLimitedIdentities bounds the OAuth identities with a rate limiter.
const maxLimitedIdentities = 10000

// identityLimits holds a rate limiter per OAuth identity: identities are
// not configured one by one, so limiters are made on first sight. The
// table is bounded: when full, the least recently used is forgotten (its
// allowance starts full again when it comes back).
type identityLimits struct {
	rate  float64
	burst int
	max   int

	mu   sync.Mutex
	m    map[string]*identityLimit
	tick uint64 // a use counter: recency without reading the clock
}

type identityLimit struct {
	lim  *ratelimit.Limiter
	used uint64
}

func newIdentityLimits(rate float64, burst, max int) *identityLimits {
	return &identityLimits{rate: rate, burst: burst, max: max, m: make(map[string]*identityLimit)}
}

func (l *identityLimits) get(name string) *ratelimit.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tick++
	if e, ok := l.m[name]; ok {
		e.used = l.tick
		return e.lim
	}
	if len(l.m) >= l.max {
		// A linear scan, only when a new identity arrives at a full
		// table: rare, and bounded by max.
		var oldest string
		var at uint64
		for k, e := range l.m {
			if oldest == "" || e.used < at {
				oldest, at = k, e.used
			}
		}
		delete(l.m, oldest)
	}
	e := &identityLimit{lim: ratelimit.New(l.rate, l.burst), used: l.tick}
	l.m[name] = e
	return e.lim
}
