package config

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// RelayOAuth makes the relay an OAuth 2.1 resource server (relay.yaml
// oauth:): clients may present JWT access tokens besides bearer tokens.
// Off unless issuer (or any other key) is set.
type RelayOAuth struct {
	// Issuer must equal a token's iss exactly.
	Issuer string `mapstructure:"issuer"`
	// JWKSURL (https; http only on loopback) or JWKSFile: the
	// authorization server's signing keys. Exactly one.
	JWKSURL  string `mapstructure:"jwks_url"`
	JWKSFile string `mapstructure:"jwks_file"`
	// PublicURL is the relay's base URL as clients reach it
	// (https://host[:port], no path). An endpoint's resource identifier
	// and token audience is PublicURL/{agent}/{server}/mcp.
	PublicURL string `mapstructure:"public_url"`
	// Audience lists more aud values accepted for every endpoint.
	Audience []string `mapstructure:"audience"`
	// RequiredScopes must all be granted (scope or scp claim).
	RequiredScopes []string `mapstructure:"required_scopes"`
	// ScopesSupported is published in the metadata (default
	// required_scopes).
	ScopesSupported []string `mapstructure:"scopes_supported"`
	// IdentityClaim names the client, as "oauth:<value>" (default sub).
	IdentityClaim string `mapstructure:"identity_claim"`
	// Algorithms accepted (default: every asymmetric JWS algorithm).
	Algorithms []string `mapstructure:"algorithms"`
	// Allow: agent/server patterns every valid token gets.
	Allow []string `mapstructure:"allow"`
	// ClaimRules add patterns for tokens with a claim value.
	ClaimRules []OAuthClaimRule `mapstructure:"claim_rules"`
	// AuthorizationServers are published in the metadata (default:
	// issuer).
	AuthorizationServers []string `mapstructure:"authorization_servers"`
	// Leeway is the clock skew tolerated on exp/nbf/iat (default 30s).
	Leeway time.Duration `mapstructure:"leeway"`
	// RateLimit limits each OAuth client (each identity) on its own.
	RateLimit RateLimit `mapstructure:"rate_limit"`

	// JWKS is the content of JWKSFile, read when the file is loaded.
	JWKS []byte `mapstructure:"-"`
}

// OAuthClaimRule gives tokens whose claim (a dotted path) equals value,
// or lists it, the patterns in allow.
type OAuthClaimRule struct {
	Claim string   `mapstructure:"claim"`
	Value string   `mapstructure:"value"`
	Allow []string `mapstructure:"allow"`
}

// Enabled reports whether the oauth section is set.
func (o *RelayOAuth) Enabled() bool {
	return o.Issuer != "" || o.JWKSURL != "" || o.JWKSFile != "" || o.PublicURL != "" ||
		len(o.Allow) > 0 || len(o.ClaimRules) > 0 || len(o.RequiredScopes) > 0
}

// oauthAlgorithms are the JWS algorithms oauth.algorithms may name: the
// asymmetric ones. HS* would let anyone holding the verification key
// (published, for an authorization server) sign tokens; none signs nothing.
var oauthAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// maxOAuthLeeway bounds oauth.leeway: more would keep expired tokens alive.
const maxOAuthLeeway = 5 * time.Minute

func (o *RelayOAuth) validate(p *problems, path string) {
	if !o.Enabled() {
		return
	}
	if o.Issuer == "" {
		p.add("oauth.issuer", "required: the authorization server's issuer, which a token's iss must equal")
	}
	switch {
	case o.JWKSURL == "" && o.JWKSFile == "":
		p.add("oauth.jwks_url", "set jwks_url (the authorization server's key set URL) or jwks_file")
	case o.JWKSURL != "" && o.JWKSFile != "":
		p.add("oauth.jwks_file", "set jwks_url or jwks_file, not both")
	case o.JWKSURL != "":
		checkJWKSURL(p, "oauth.jwks_url", o.JWKSURL)
	default:
		o.JWKSFile = resolve(path, o.JWKSFile)
		b, err := os.ReadFile(o.JWKSFile)
		if err != nil {
			p.add("oauth.jwks_file", "cannot read the key set: %v", err)
		} else {
			o.JWKS = b
		}
	}
	switch u, err := url.Parse(o.PublicURL); {
	case o.PublicURL == "":
		p.add("oauth.public_url", "required: the relay's URL as clients reach it, such as https://mcp.example.com (tokens' audience and the metadata are built from it)")
	case err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		p.add("oauth.public_url", "%q must look like https://host[:port]", o.PublicURL)
	case strings.Trim(u.Path, "/") != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil:
		p.add("oauth.public_url", "%q must be scheme://host[:port] only: endpoints are at /{agent}/{server}/mcp under it", o.PublicURL)
	default:
		o.PublicURL = strings.TrimSuffix(o.PublicURL, "/")
	}
	for i, a := range o.Algorithms {
		if !slices.Contains(oauthAlgorithms, a) {
			p.add(fmt.Sprintf("oauth.algorithms[%d]", i), "%q is not accepted: use asymmetric algorithms (%s)", a, strings.Join(oauthAlgorithms, ", "))
		}
	}
	for i, s := range append(append([]string{}, o.RequiredScopes...), o.ScopesSupported...) {
		if s == "" || strings.ContainsAny(s, " \"\\") || strings.IndexFunc(s, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0 {
			key := fmt.Sprintf("oauth.required_scopes[%d]", i)
			if i >= len(o.RequiredScopes) {
				key = fmt.Sprintf("oauth.scopes_supported[%d]", i-len(o.RequiredScopes))
			}
			p.add(key, "scope %q must be visible ASCII without spaces, quotes or backslashes (RFC 6749)", s)
		}
	}
	for i, a := range o.AuthorizationServers {
		checkURL(p, fmt.Sprintf("oauth.authorization_servers[%d]", i), a)
	}
	if o.IdentityClaim == "" {
		o.IdentityClaim = "sub"
	}
	switch {
	case o.Leeway < 0 || o.Leeway > maxOAuthLeeway:
		p.add("oauth.leeway", "must be between 0 and %s, not %s", maxOAuthLeeway, o.Leeway)
	case o.Leeway == 0:
		o.Leeway = 30 * time.Second
	}
	o.RateLimit.validate(p, "oauth.rate_limit")
	checkPatterns(p, "oauth.allow", o.Allow)
	for i, r := range o.ClaimRules {
		key := fmt.Sprintf("oauth.claim_rules[%d]", i)
		if r.Claim == "" {
			p.add(key+".claim", "required: the claim to look at, such as groups or realm_access.roles")
		}
		if r.Value == "" {
			p.add(key+".value", "required: the claim value that grants allow")
		}
		if len(r.Allow) == 0 {
			p.add(key+".allow", "empty: the rule would grant nothing; list agent/server patterns such as \"dc1/*\"")
		}
		checkPatterns(p, key+".allow", r.Allow)
	}
	if len(o.Allow) == 0 && len(o.ClaimRules) == 0 {
		p.add("oauth.allow", "no allow and no claim_rules: OAuth clients could reach nothing; list agent/server patterns such as \"dc1/*\"")
	}
}

func checkPatterns(p *problems, key string, pats []string) {
	for j, pat := range pats {
		if err := CheckPattern(pat); err != nil {
			p.add(fmt.Sprintf("%s[%d]", key, j), "%v", err)
		}
	}
}

// checkJWKSURL accepts https, and http only on a loopback host: keys
// fetched in the clear could be swapped on the way.
func checkJWKSURL(p *problems, key, raw string) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		p.add(key, "%q must be an https URL", raw)
		return
	}
	if u.Scheme == "https" {
		return
	}
	h := u.Hostname()
	ip := net.ParseIP(h)
	if u.Scheme == "http" && (strings.EqualFold(h, "localhost") || (ip != nil && ip.IsLoopback())) {
		return
	}
	p.add(key, "%q must be https (http only on a loopback host): keys fetched in the clear could be swapped", raw)
}
