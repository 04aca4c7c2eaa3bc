package relay

import (
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
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
