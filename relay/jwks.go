package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Bounds on what a JWKS fetch may cost the relay: the key set comes from
// the network, and an unknown kid in a client's token triggers a fetch.
const (
	jwksFetchTimeout = 5 * time.Second
	jwksMaxBytes     = 1 << 20
	jwksMaxKeys      = 100
	// DefaultJWKSMinRefresh is the least time between two fetches of the
	// key set (an unknown kid asks for one): a client sending made-up kids
	// cannot make the relay hammer the authorization server.
	DefaultJWKSMinRefresh = 30 * time.Second
	// DefaultJWKSMaxAge is how long a fetched key set is used before the
	// next token makes the relay fetch it again (keys retire without a new
	// kid showing up first).
	DefaultJWKSMaxAge = time.Hour
)

// errKeysUnavailable means the relay has no key set at all: the JWKS URL
// could not be fetched yet. No token can be checked, through no fault of
// the client's.
var errKeysUnavailable = errors.New("the authorization server's signing keys are unavailable")

// errUnknownKey means the key set has no key for the token's kid.
var errUnknownKey = errors.New("no signing key with the token's kid")

// keySet is the signing keys fetched at one time.
type keySet struct {
	keys    []jose.JSONWebKey
	fetched time.Time
}

// find returns the key for kid and alg: the one with that kid, or with no
// kid in the token, the only key there is.
func (s *keySet) find(kid, alg string) *jose.JSONWebKey {
	if s == nil {
		return nil
	}
	if kid == "" {
		if len(s.keys) == 1 && (s.keys[0].Algorithm == "" || s.keys[0].Algorithm == alg) {
			return &s.keys[0]
		}
		return nil
	}
	for i := range s.keys {
		if k := &s.keys[i]; k.KeyID == kid && (k.Algorithm == "" || k.Algorithm == alg) {
			return k
		}
	}
	return nil
}

// jwks holds the authorization server's signing keys: fixed (jwks_file)
// or fetched from a URL, cached, and fetched again when a token names a
// kid the set lacks (at most once per minRefresh) or the set is older
// than maxAge. Lookups of a known kid never wait for a fetch in progress.
type jwks struct {
	url        string
	client     *http.Client
	timeout    time.Duration // of one fetch
	minRefresh time.Duration
	maxAge     time.Duration
	log        *slog.Logger

	set atomic.Pointer[keySet]

	mu      sync.Mutex // one fetch at a time
	lastTry time.Time  // guarded by mu
}

// newStaticJWKS serves the keys of a JWKS document that never changes.
func newStaticJWKS(doc []byte, log *slog.Logger) (*jwks, error) {
	keys, err := parseJWKS(doc, log)
	if err != nil {
		return nil, err
	}
	j := &jwks{log: log}
	j.set.Store(&keySet{keys: keys, fetched: time.Now()})
	return j, nil
}

// newRemoteJWKS fetches keys from rawURL, which must be https (or http on
// a loopback host, for tests).
func newRemoteJWKS(rawURL string, client *http.Client, minRefresh, maxAge time.Duration, log *slog.Logger) (*jwks, error) {
	if err := checkJWKSURL(rawURL); err != nil {
		return nil, err
	}
	if client == nil {
		client = &http.Client{
			Timeout: jwksFetchTimeout,
			// A redirect could lead to plain HTTP; key sets are not moved
			// around, so none is followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	if minRefresh <= 0 {
		minRefresh = DefaultJWKSMinRefresh
	}
	if maxAge <= 0 {
		maxAge = DefaultJWKSMaxAge
	}
	return &jwks{url: rawURL, client: client, timeout: jwksFetchTimeout, minRefresh: minRefresh, maxAge: maxAge, log: log}, nil
}

// checkJWKSURL accepts https URLs, and http ones only on loopback: keys
// fetched in the clear could be swapped on the way.
func checkJWKSURL(rawURL string) error {
	u, err := url.Parse(rawURL)
	if err != nil {
		return fmt.Errorf("jwks_url: %w", err)
	}
	switch {
	case u.Host == "":
		return fmt.Errorf("jwks_url %q has no host", rawURL)
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
		return nil
	}
	return fmt.Errorf("jwks_url %q must be https (http only on a loopback host)", rawURL)
}

// key returns the verification key for a token's kid and alg.
func (j *jwks) key(kid, alg string) (*jose.JSONWebKey, error) {
	s := j.set.Load()
	k := s.find(kid, alg)
	switch {
	case j.url == "" && k != nil:
		return k, nil
	case j.url == "":
		return nil, errUnknownKey
	case k != nil && time.Since(s.fetched) < j.maxAge:
		return k, nil
	case k != nil:
		// An old set: fetch it again, unless another exchange is doing so;
		// meanwhile the key in hand serves, so no exchange waits.
		if !j.mu.TryLock() {
			return k, nil
		}
		s, _ = j.refreshLocked(s)
		j.mu.Unlock()
		if k := s.find(kid, alg); k != nil {
			return k, nil
		}
		return nil, errUnknownKey // withdrawn
	}
	j.mu.Lock()
	s, err := j.refreshLocked(s)
	j.mu.Unlock()
	if k := s.find(kid, alg); k != nil {
		return k, nil
	}
	if s == nil {
		return nil, fmt.Errorf("%w: %w", errKeysUnavailable, err)
	}
	return nil, errUnknownKey
}

// refreshLocked fetches the key set again unless another caller did since
// seen was loaded, or the last try was less than minRefresh ago. It
// returns the set to use (the old one if the fetch failed) and the
// fetch's error. j.mu is held.
func (j *jwks) refreshLocked(seen *keySet) (*keySet, error) {
	if cur := j.set.Load(); cur != seen {
		return cur, nil
	}
	if !j.lastTry.IsZero() && time.Since(j.lastTry) < j.minRefresh {
		return seen, errors.New("key set fetched moments ago")
	}
	j.lastTry = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), j.timeout)
	defer cancel()
	keys, err := j.fetch(ctx)
	if err != nil {
		j.log.Warn("cannot fetch the OAuth signing keys", "jwks_url", j.url, "err", err)
		return seen, err
	}
	s := &keySet{keys: keys, fetched: time.Now()}
	j.set.Store(s)
	j.log.Debug("fetched the OAuth signing keys", "jwks_url", j.url, "keys", len(keys))
	return s, nil
}

func (j *jwks) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch jwks: HTTP status %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, jwksMaxBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: read: %w", err)
	}
	if len(body) > jwksMaxBytes {
		return nil, fmt.Errorf("fetch jwks: the key set is larger than %d bytes", jwksMaxBytes)
	}
	return parseJWKS(body, j.log)
}

// parseJWKS keeps the usable signing keys of a JWKS document: public,
// asymmetric, not for encryption. A key of a type go-jose does not know
// is skipped, not fatal: authorization servers publish all sorts.
func parseJWKS(doc []byte, log *slog.Logger) ([]jose.JSONWebKey, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(doc, &raw); err != nil {
		return nil, fmt.Errorf("parse jwks: %w", err)
	}
	if len(raw.Keys) > jwksMaxKeys {
		return nil, fmt.Errorf("parse jwks: %d keys, more than the %d accepted", len(raw.Keys), jwksMaxKeys)
	}
	var keys []jose.JSONWebKey
	for i, r := range raw.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(r); err != nil {
			log.Debug("skipping a JWKS key", "index", i, "err", err)
			continue
		}
		// Symmetric (oct) and private keys are not verification keys: a
		// token "signed" with a published secret proves nothing.
		if !k.Valid() || !k.IsPublic() || (k.Use != "" && k.Use != "sig") {
			continue
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("parse jwks: no public signing key in the key set")
	}
	return keys, nil
}
