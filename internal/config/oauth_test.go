package config

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const validOAuth = `
oauth:
  issuer: https://idp.example.com/realms/bank
  jwks_url: https://idp.example.com/realms/bank/certs
  public_url: https://mcp.example.com/
  required_scopes: [mcp:tools]
  claim_rules:
    - {claim: groups, value: "AI-Ops", allow: ["dc1/*"]}
    - {claim: realm_access.roles, value: wiki-reader, allow: ["*/wiki"]}
`

func TestLoadRelayOAuth(t *testing.T) {
	p := writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+validOAuth)
	c, err := LoadRelay(p)
	require.NoError(t, err)
	o := c.OAuth
	require.True(t, o.Enabled())
	require.Equal(t, "https://mcp.example.com", o.PublicURL, "trailing slash dropped")
	require.Equal(t, "sub", o.IdentityClaim)
	require.Equal(t, 30*time.Second, o.Leeway)
	require.Zero(t, o.RateLimit.RequestsPerSecond, "no limit unless set")
	require.Equal(t, []OAuthClaimRule{
		{Claim: "groups", Value: "AI-Ops", Allow: []string{"dc1/*"}},
		{Claim: "realm_access.roles", Value: "wiki-reader", Allow: []string{"*/wiki"}},
	}, o.ClaimRules, "claim values keep their case (lists of objects, not map keys)")

	p = writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+validOAuth+"  rate_limit: {requests_per_second: 2.5}\n")
	c, err = LoadRelay(p)
	require.NoError(t, err)
	require.Equal(t, RateLimit{RequestsPerSecond: 2.5, Burst: 3}, c.OAuth.RateLimit)

	// Off unless set.
	p = writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA))
	c, err = LoadRelay(p)
	require.NoError(t, err)
	require.False(t, c.OAuth.Enabled())

	// A key set file, relative to the config file.
	dir := t.TempDir()
	writeFile(t, dir, "jwks.json", `{"keys":[]}`)
	body := strings.Replace(validOAuth, "jwks_url: https://idp.example.com/realms/bank/certs", "jwks_file: jwks.json", 1)
	p = writeFile(t, dir, "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+body)
	c, err = LoadRelay(p)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "jwks.json"), c.OAuth.JWKSFile)
	require.Equal(t, `{"keys":[]}`, string(c.OAuth.JWKS))
}

func TestLoadRelayOAuthErrors(t *testing.T) {
	rep := func(old, new string) string { return strings.Replace(validOAuth, old, new, 1) }
	for _, tc := range []struct{ name, oauth, key, reason string }{
		{"no issuer", rep("issuer: https://idp.example.com/realms/bank", ""), "oauth.issuer", "required"},
		{"no keys", rep("jwks_url: https://idp.example.com/realms/bank/certs", ""), "oauth.jwks_url", "set jwks_url"},
		{"both keys", rep("jwks_url:", "jwks_file: x.json\n  jwks_url:"), "oauth.jwks_file", "not both"},
		{"missing key file", rep("jwks_url: https://idp.example.com/realms/bank/certs", "jwks_file: nosuch.json"), "oauth.jwks_file", "cannot read"},
		{"plain http keys", rep("https://idp.example.com/realms/bank/certs", "http://idp.example.com/certs"), "oauth.jwks_url", "must be https"},
		{"no public url", rep("public_url: https://mcp.example.com/", ""), "oauth.public_url", "required"},
		{"public url with path", rep("https://mcp.example.com/", "https://mcp.example.com/mcp"), "oauth.public_url", "scheme://host[:port] only"},
		{"public url no scheme", rep("https://mcp.example.com/", "mcp.example.com"), "oauth.public_url", "must look like"},
		{"HS256", validOAuth + "  algorithms: [RS256, HS256]\n", "oauth.algorithms[1]", "asymmetric"},
		{"alg none", validOAuth + "  algorithms: [none]\n", "oauth.algorithms[0]", "asymmetric"},
		{"scope with a quote", rep("mcp:tools", `'a"b'`), "oauth.required_scopes[0]", "visible ASCII"},
		{"long leeway", validOAuth + "  leeway: 1h\n", "oauth.leeway", "between 0 and 5m0s"},
		{"bad rule pattern", rep(`allow: ["dc1/*"]`, `allow: ["dc1"]`), "oauth.claim_rules[0].allow[0]", "agent/server"},
		{"rule without value", rep(`value: "AI-Ops", `, ""), "oauth.claim_rules[0].value", "required"},
		{"rule without allow", rep(`, allow: ["dc1/*"]`, ""), "oauth.claim_rules[0].allow", "grant nothing"},
		{"nothing allowed", strings.Split(validOAuth, "  claim_rules:")[0], "oauth.allow", "could reach nothing"},
		{"bad authorization server", validOAuth + "  authorization_servers: [ftp://x]\n", "oauth.authorization_servers[0]", "http or https"},
		{"typo", validOAuth + "  audiences: [x]\n", "", "audiences"},
		{"negative rate", validOAuth + "  rate_limit: {requests_per_second: -1}\n", "oauth.rate_limit.requests_per_second", "> 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "relay.yaml", strings.ReplaceAll(validRelay, "HASH", hashA)+tc.oauth)
			_, err := LoadRelay(p)
			require.Error(t, err)
			var ce *Error
			require.True(t, errors.As(err, &ce), "error %v is not a *config.Error", err)
			require.Contains(t, err.Error(), p)
			if tc.key != "" {
				require.Contains(t, err.Error(), tc.key+":")
			}
			require.Contains(t, err.Error(), tc.reason)
		})
	}
}
