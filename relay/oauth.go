package relay

import (
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// OAuth makes the relay an OAuth 2.1 resource server beside its bearer
// tokens: a client may present a JWT access token that an authorization
// server issued for the endpoint it calls. The relay checks the token's
// signature (against the server's JWKS), issuer, audience, lifetime and
// scopes, names the client after a claim and gives it allow patterns from
// claims. The token stays at the relay, like every client credential.
type OAuth struct {
	// Issuer is the authorization server's issuer; a token's iss must be
	// exactly this.
	Issuer string
	// JWKSURL is where the signing keys are fetched (https; http only on
	// loopback). JWKS, if set instead, is a fixed key set document.
	JWKSURL string
	JWKS    []byte
	// PublicURL is the relay's base URL as clients reach it
	// (scheme://host[:port], no path): endpoint /{agent}/{server}/mcp is
	// the resource PublicURL/{agent}/{server}/mcp (RFC 8707), the
	// audience a token for it carries, and its metadata is published at
	// PublicURL/.well-known/oauth-protected-resource/{agent}/{server}/mcp
	// (RFC 9728). It is configured, not taken from the request's Host: a
	// relay behind a proxy would otherwise publish the wrong URL.
	PublicURL string
	// Audiences are more audience values accepted for every endpoint
	// (such as PublicURL itself for relay-wide tokens, or an API
	// identifier an authorization server insists on).
	Audiences []string
	// RequiredScopes must all be in a token's scope (or scp) claim; a
	// token lacking one gets 403 insufficient_scope.
	RequiredScopes []string
	// ScopesSupported is published in the metadata (default
	// RequiredScopes).
	ScopesSupported []string
	// IdentityClaim names the client: the relay calls it "oauth:" and the
	// claim's value (default "sub"). The prefix keeps a token's subject
	// from passing for a token client, whose names cannot hold ':'.
	IdentityClaim string
	// Algorithms are the signature algorithms accepted (default
	// DefaultOAuthAlgorithms); only asymmetric ones are allowed.
	Algorithms []string
	// Allow are the agent/server patterns every valid token gets; Rules
	// add patterns for tokens with a claim value.
	Allow []string
	Rules []OAuthRule
	// AuthorizationServers are published in the metadata (default:
	// Issuer).
	AuthorizationServers []string
	// Leeway is the clock skew tolerated on exp, nbf and iat (default
	// DefaultOAuthLeeway).
	Leeway time.Duration
	// HTTPClient fetches JWKSURL (nil: one with a 5 s timeout that
	// follows no redirects).
	HTTPClient *http.Client
	// JWKSMinRefresh and JWKSMaxAge tune the key cache (defaults
	// DefaultJWKSMinRefresh and DefaultJWKSMaxAge).
	JWKSMinRefresh time.Duration
	JWKSMaxAge     time.Duration
	// Rate, if > 0, limits each OAuth client (each identity) as
	// Client.Rate does a token client, with bursts of up to Burst.
	Rate  float64
	Burst int
}

// OAuthRule gives tokens whose Claim has Value (or, for a list claim such
// as groups, contains it) the agent/server patterns in Allow. Claim may be
// a dotted path into nested objects (realm_access.roles).
type OAuthRule struct {
	Claim string
	Value string
	Allow []string
}

// DefaultOAuthAlgorithms are the JWS algorithms accepted unless configured.
var DefaultOAuthAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// DefaultOAuthLeeway is the clock skew tolerated unless configured.
const DefaultOAuthLeeway = 30 * time.Second

// OAuthIdentityPrefix starts the name of every client the relay knows by
// a token's claim.
const OAuthIdentityPrefix = "oauth:"

// maxIdentityLen bounds the claim a client is named after: the name goes
// into a header on every exchange and into every log line.
const maxIdentityLen = 256

// metadataPath is RFC 9728's well-known path; an endpoint's metadata is
// at metadataPath + its path.
const metadataPath = "/.well-known/oauth-protected-resource"

// safeSegment is what an agent or server name in a published URL may be
// (the config's name rule); other path segments get the root metadata.
var safeSegment = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// asymmetric are the algorithms an OAuth configuration may accept.
var asymmetric = map[string]bool{}

func init() {
	for _, a := range DefaultOAuthAlgorithms {
		asymmetric[a] = true
	}
}

// oauthVerifier checks access tokens for a Handler.
type oauthVerifier struct {
	cfg    OAuth
	algs   []jose.SignatureAlgorithm
	keys   *jwks
	public string // PublicURL without a trailing slash
	log    *slog.Logger
	now    func() time.Time // time.Now; tests move it
	cache  *tokenCache
	limits *identityLimits // nil: no rate limit
}

func newOAuthVerifier(cfg OAuth, log *slog.Logger) (*oauthVerifier, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("relay: oauth: issuer is required")
	}
	u, err := url.Parse(cfg.PublicURL)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || strings.Trim(u.Path, "/") != "" ||
		u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("relay: oauth: public_url %q must be scheme://host[:port] with no path", cfg.PublicURL)
	}
	v := &oauthVerifier{cfg: cfg, public: u.Scheme + "://" + u.Host, log: log, now: time.Now, cache: newTokenCache(tokenCacheSize)}
	if cfg.Rate < 0 || cfg.Burst < 0 {
		return nil, fmt.Errorf("relay: oauth: rate %v and burst %d must not be negative", cfg.Rate, cfg.Burst)
	}
	if cfg.Rate > 0 {
		v.limits = newIdentityLimits(cfg.Rate, cfg.Burst, maxLimitedIdentities)
	}
	if v.cfg.IdentityClaim == "" {
		v.cfg.IdentityClaim = "sub"
	}
	if v.cfg.Leeway <= 0 {
		v.cfg.Leeway = DefaultOAuthLeeway
	}
	if len(v.cfg.AuthorizationServers) == 0 {
		v.cfg.AuthorizationServers = []string{cfg.Issuer}
	}
	if v.cfg.ScopesSupported == nil {
		v.cfg.ScopesSupported = cfg.RequiredScopes
	}
	algs := cfg.Algorithms
	if len(algs) == 0 {
		algs = DefaultOAuthAlgorithms
	}
	for _, a := range algs {
		if !asymmetric[a] {
			return nil, fmt.Errorf("relay: oauth: algorithm %q is not accepted: use asymmetric ones (%s)", a,
				strings.Join(DefaultOAuthAlgorithms, ", "))
		}
		v.algs = append(v.algs, jose.SignatureAlgorithm(a))
	}
	switch {
	case (cfg.JWKSURL == "") == (cfg.JWKS == nil):
		return nil, errors.New("relay: oauth: set exactly one of jwks_url and jwks_file")
	case cfg.JWKSURL != "":
		v.keys, err = newRemoteJWKS(cfg.JWKSURL, cfg.HTTPClient, cfg.JWKSMinRefresh, cfg.JWKSMaxAge, log)
	default:
		v.keys, err = newStaticJWKS(cfg.JWKS, log)
	}
	if err != nil {
		return nil, fmt.Errorf("relay: oauth: %w", err)
	}
	return v, nil
}

// resource is the RFC 8707 resource identifier of an endpoint, "" for a
// path that is not a plain endpoint (the relay itself: v.public).
func (v *oauthVerifier) resource(agent, server string) string {
	if !safeSegment.MatchString(agent) || !safeSegment.MatchString(server) {
		return ""
	}
	return v.public + "/" + agent + "/" + server + "/mcp"
}

// metadataURL is where the metadata of agent/server's endpoint is.
func (v *oauthVerifier) metadataURL(agent, server string) string {
	if v.resource(agent, server) == "" {
		return v.public + metadataPath
	}
	return v.public + metadataPath + "/" + agent + "/" + server + "/mcp"
}

// challenge is the WWW-Authenticate value of a refusal for agent/server:
// RFC 6750 error and scope, and RFC 9728 resource_metadata.
func (v *oauthVerifier) challenge(agent, server, errCode, desc string, scope bool) string {
	var b strings.Builder
	b.WriteString(`Bearer realm="mcptun"`)
	if errCode != "" {
		fmt.Fprintf(&b, `, error="%s"`, errCode)
	}
	if desc != "" {
		fmt.Fprintf(&b, `, error_description="%s"`, quoteSafe(desc))
	}
	if scope && len(v.cfg.RequiredScopes) > 0 {
		fmt.Fprintf(&b, `, scope="%s"`, quoteSafe(strings.Join(v.cfg.RequiredScopes, " ")))
	}
	fmt.Fprintf(&b, `, resource_metadata="%s"`, v.metadataURL(agent, server))
	return b.String()
}

// quoteSafe drops what may not be in a quoted-string of a header.
func quoteSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return -1
		}
		return r
	}, s)
}

// looksLikeJWT reports whether a bearer token has a JWS compact form's
// three parts; anything else is an opaque token (a token client's).
func looksLikeJWT(token string) bool {
	return strings.Count(token, ".") == 2
}

// verify checks an access token for agent/server. It returns the client
// the token stands for, or the refusal.
func (v *oauthVerifier) verify(token, agent, server string) (*client, *refusal) {
	now := v.now()
	sum := sha256.Sum256([]byte(token))
	if e, ok := v.cache.get(sum, now); ok {
		if !v.audienceOK(e.aud, agent, server) {
			return nil, v.invalid(agent, server, "audience is not "+v.resourceOrPublic(agent, server), nil)
		}
		return v.client(e.name, e.allow), nil
	}
	c, ref, e := v.check(token, agent, server, now)
	if e != nil {
		v.cache.put(sum, e)
	}
	return c, ref
}

// client is the client an accepted token stands for, with its identity's
// rate limiter.
func (v *oauthVerifier) client(name string, allow []string) *client {
	// narrows as for a token client: an OAuth pattern naming tools
	// narrows the client at the agent too.
	c := &client{Client: Client{Name: name, Allow: allow}, narrows: namesTools(allow)}
	if v.limits != nil {
		c.limiter = v.limits.get(name)
		c.Rate, c.Burst = v.cfg.Rate, v.cfg.Burst
	}
	return c
}

// invalid refuses a token for agent/server with RFC 6750's invalid_token.
func (v *oauthVerifier) invalid(agent, server, desc string, err error) *refusal {
	args := []any{"agent", agent, "server", server, "why", desc}
	if err != nil {
		args = append(args, "err", err)
	}
	return &refusal{status: http.StatusUnauthorized, reason: "invalid_token",
		msg:    "invalid access token: " + desc,
		header: "WWW-Authenticate", value: v.challenge(agent, server, "invalid_token", desc, false),
		wrongToken: true, logLevel: slog.LevelDebug, logMsg: "access token refused", logArgs: args}
}

// check verifies a token in full: the client, or the refusal; and for a
// token accepted, what to cache (the audience is checked again on a hit:
// a token may name one endpoint and be sent to another).
func (v *oauthVerifier) check(token, agent, server string, now time.Time) (*client, *refusal, *cachedToken) {
	invalid := func(desc string, err error) (*client, *refusal, *cachedToken) {
		return nil, v.invalid(agent, server, desc, err), nil
	}
	tok, err := jwt.ParseSigned(token, v.algs)
	if err != nil {
		// alg none and HS*, among others, end here: go-jose refuses any
		// algorithm not in the list before it looks at a key.
		return invalid("malformed, or signed with an algorithm not accepted", err)
	}
	if len(tok.Headers) != 1 {
		return invalid("not a single-signature JWT", nil)
	}
	hdr := tok.Headers[0]
	key, err := v.keys.key(hdr.KeyID, hdr.Algorithm)
	switch {
	case errors.Is(err, errKeysUnavailable):
		return nil, &refusal{status: http.StatusServiceUnavailable, reason: "oauth_keys_unavailable",
			msg:    "the relay cannot check access tokens now: the authorization server's signing keys are unavailable",
			header: "Retry-After", value: unavailableRetryAfter,
			logLevel: slog.LevelWarn, logMsg: "access token not checked", logArgs: []any{"err", err}}, nil
	case err != nil:
		return invalid("unknown signing key", err)
	}
	var claims jwt.Claims
	var raw map[string]any
	if err := tok.Claims(key, &claims, &raw); err != nil {
		return invalid("bad signature", err)
	}
	if claims.Expiry == nil {
		return invalid("no expiry (exp)", nil)
	}
	err = claims.ValidateWithLeeway(jwt.Expected{Issuer: v.cfg.Issuer, Time: now}, v.cfg.Leeway)
	switch {
	case errors.Is(err, jwt.ErrExpired):
		return invalid("expired", nil)
	case errors.Is(err, jwt.ErrNotValidYet), errors.Is(err, jwt.ErrIssuedInTheFuture):
		return invalid("not valid yet", nil)
	case errors.Is(err, jwt.ErrInvalidIssuer):
		return invalid("wrong issuer", nil)
	case err != nil:
		return invalid("claims not valid", err)
	}
	if !v.audienceOK(claims.Audience, agent, server) {
		return invalid("audience is not "+v.resourceOrPublic(agent, server), nil)
	}
	id, ok := claimString(raw, v.cfg.IdentityClaim)
	if !ok || id == "" {
		return invalid("no "+v.cfg.IdentityClaim+" claim to name the client", nil)
	}
	if len(id) > maxIdentityLen {
		return invalid(v.cfg.IdentityClaim+" claim longer than 256 bytes", nil)
	}
	name := OAuthIdentityPrefix + escapeIdentity(id)
	if missing := v.missingScopes(raw); len(missing) > 0 {
		return nil, &refusal{status: http.StatusForbidden, reason: "insufficient_scope",
			msg: fmt.Sprintf("access token lacks scope %s (required: %s)", strings.Join(missing, " "),
				strings.Join(v.cfg.RequiredScopes, " ")),
			header: "WWW-Authenticate", value: v.challenge(agent, server, "insufficient_scope", "", true),
			logLevel: slog.LevelInfo, logMsg: "access token lacks scope",
			logArgs: []any{"client", name, "agent", agent, "server", server, "missing", missing}}, nil
	}
	allow := slices.Clone(v.cfg.Allow)
	for _, r := range v.cfg.Rules {
		if claimHas(raw, r.Claim, r.Value) {
			allow = append(allow, r.Allow...)
		}
	}
	// Cached until it expires (or for tokenCacheTTL at most): checking a
	// signature costs a few hundred microseconds, more than the rest of an
	// exchange at the relay.
	until := minTime(claims.Expiry.Time().Add(v.cfg.Leeway), now.Add(tokenCacheTTL))
	e := &cachedToken{name: name, allow: allow, aud: claims.Audience, until: until}
	return v.client(name, allow), nil, e
}

func (v *oauthVerifier) resourceOrPublic(agent, server string) string {
	if r := v.resource(agent, server); r != "" {
		return r
	}
	return v.public
}

// audienceOK reports whether aud names this endpoint, or a value accepted
// for every endpoint.
func (v *oauthVerifier) audienceOK(aud jwt.Audience, agent, server string) bool {
	if r := v.resource(agent, server); r != "" && aud.Contains(r) {
		return true
	}
	for _, a := range v.cfg.Audiences {
		if aud.Contains(a) {
			return true
		}
	}
	return false
}

// missingScopes are the required scopes a token's scope (a space-separated
// string, RFC 8693/9068) and scp (a list or string, as some servers send)
// claims do not grant.
func (v *oauthVerifier) missingScopes(raw map[string]any) []string {
	if len(v.cfg.RequiredScopes) == 0 {
		return nil
	}
	granted := map[string]bool{}
	for _, c := range []string{"scope", "scp"} {
		switch s := raw[c].(type) {
		case string:
			for _, f := range strings.Fields(s) {
				granted[f] = true
			}
		case []any:
			for _, e := range s {
				if str, ok := e.(string); ok {
					granted[str] = true
				}
			}
		}
	}
	var missing []string
	for _, s := range v.cfg.RequiredScopes {
		if !granted[s] {
			missing = append(missing, s)
		}
	}
	return missing
}

// claimValue looks up a dotted claim path.
func claimValue(raw map[string]any, path string) (any, bool) {
	var cur any = raw
	for part := range strings.SplitSeq(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[part]; !ok {
			return nil, false
		}
	}
	return cur, true
}

func claimString(raw map[string]any, path string) (string, bool) {
	v, ok := claimValue(raw, path)
	if !ok {
		return "", false
	}
	s, ok := v.(string)
	return s, ok
}

// claimHas reports whether a claim is value, or a list holding it.
// Numbers and booleans match their JSON spelling.
func claimHas(raw map[string]any, path, value string) bool {
	v, ok := claimValue(raw, path)
	if !ok {
		return false
	}
	list, isList := v.([]any)
	if !isList {
		list = []any{v}
	}
	for _, e := range list {
		switch e := e.(type) {
		case string:
			if e == value {
				return true
			}
		case float64, bool:
			if b, _ := json.Marshal(e); string(b) == value {
				return true
			}
		}
	}
	return false
}

// escapeIdentity makes a claim value safe in a header and a log line:
// bytes outside visible ASCII, and '%', become %XX, so distinct values
// stay distinct.
func escapeIdentity(s string) string {
	var b strings.Builder
	for i := range len(s) {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '%' {
			fmt.Fprintf(&b, "%%%02X", c)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// protectedResourceMetadata is RFC 9728's document.
type protectedResourceMetadata struct {
	Resource               string   `json:"resource"`
	AuthorizationServers   []string `json:"authorization_servers"`
	ScopesSupported        []string `json:"scopes_supported,omitempty"`
	BearerMethodsSupported []string `json:"bearer_methods_supported"`
	ResourceName           string   `json:"resource_name,omitempty"`
}

// serveMetadata answers GET /.well-known/oauth-protected-resource[/{agent}/{server}/mcp].
// Every plain name gets a document, known or not, so the metadata does not
// tell which agents exist.
func (v *oauthVerifier) serveMetadata(w http.ResponseWriter, r *http.Request) {
	// Public by definition; browser-based clients fetch it cross-origin,
	// with MCP-Protocol-Version, so after a CORS preflight.
	w.Header().Set("Access-Control-Allow-Origin", "*")
	if r.Method == http.MethodOptions {
		w.Header().Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
		w.Header().Set("Access-Control-Allow-Headers", "*")
		w.Header().Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD, OPTIONS")
		writeError(w, http.StatusMethodNotAllowed, reasonBadRequest, "protected resource metadata is read with GET")
		return
	}
	res := v.public
	name := "mcptun relay"
	if agent, server := r.PathValue("agent"), r.PathValue("server"); agent != "" || server != "" {
		if res = v.resource(agent, server); res == "" {
			writeError(w, http.StatusNotFound, "not_found", "no MCP endpoint with those names")
			return
		}
		name = "mcptun " + agent + "/" + server
	}
	body, _ := json.Marshal(protectedResourceMetadata{
		Resource:               res,
		AuthorizationServers:   v.cfg.AuthorizationServers,
		ScopesSupported:        v.cfg.ScopesSupported,
		BearerMethodsSupported: []string{"header"},
		ResourceName:           name,
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "max-age=300")
	_, _ = w.Write(append(body, '\n'))
}
