package relay

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/authguard"
)

const (
	testIssuer = "https://idp.test/realms/bank"
	testPublic = "https://mcp.bank.test"
)

// testIdP is an authorization server's signing side: keys made in the
// test and a JWKS endpoint on 127.0.0.1 serving their public halves.
type testIdP struct {
	mu      sync.Mutex
	keys    map[string]crypto.Signer // kid → private key
	fail    atomic.Bool              // the JWKS endpoint answers 500
	fetches atomic.Int32
	srv     *httptest.Server
}

func newTestIdP(t *testing.T) *testIdP {
	t.Helper()
	idp := &testIdP{keys: map[string]crypto.Signer{}}
	idp.addKey(t, "ec1", "ES256")
	idp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idp.fetches.Add(1)
		if idp.fail.Load() {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write(idp.jwks(t))
	}))
	t.Cleanup(idp.srv.Close)
	return idp
}

func (idp *testIdP) addKey(t *testing.T, kid, alg string) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	switch alg {
	case "ES256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "RS256":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "EdDSA":
		_, k, err = ed25519.GenerateKey(rand.Reader)
	}
	require.NoError(t, err)
	idp.mu.Lock()
	idp.keys[kid] = k
	idp.mu.Unlock()
	return k
}

func (idp *testIdP) jwks(t *testing.T) []byte {
	idp.mu.Lock()
	defer idp.mu.Unlock()
	var set jose.JSONWebKeySet
	for kid, k := range idp.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.Public(), KeyID: kid, Use: "sig"})
	}
	b, err := json.Marshal(set)
	require.NoError(t, err)
	return b
}

// claims are a valid token's for dc1/notes; tests change them.
func validClaims() map[string]any {
	now := time.Now()
	return map[string]any{
		"iss":    testIssuer,
		"sub":    "alice",
		"aud":    testPublic + "/dc1/notes/mcp",
		"exp":    now.Add(5 * time.Minute).Unix(),
		"iat":    now.Unix(),
		"nbf":    now.Add(-time.Second).Unix(),
		"scope":  "openid mcp:tools",
		"groups": []string{"staff", "ops"},
	}
}

// sign makes a compact JWS of claims with key (kid and alg in its header).
func sign(t *testing.T, key any, kid string, alg jose.SignatureAlgorithm, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	require.NoError(t, err)
	tok, err := jwt.Signed(s).Claims(claims).Serialize()
	require.NoError(t, err)
	return tok
}

// unsigned is a token with alg none: no library signs those.
func unsigned(t *testing.T, kid string, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": kid})
	c, err := json.Marshal(claims)
	require.NoError(t, err)
	enc := base64.RawURLEncoding
	return enc.EncodeToString(h) + "." + enc.EncodeToString(c) + "."
}

// headerAgent is an agent whose server echoes the headers it got.
func headerAgent() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"path": r.URL.Path, "headers": r.Header})
	})
}

type oauthFixture struct {
	idp   *testIdP
	addr  string
	guard *authguard.Guard
}

// newOAuthFixture serves a relay with OAuth (changed by mod) in front of
// headerAgent; guard nil: one that never throttles in a test.
func newOAuthFixture(t *testing.T, mod func(*OAuth), guard *authguard.Guard) *oauthFixture {
	t.Helper()
	idp := newTestIdP(t)
	agentSrv := httptest.NewServer(headerAgent())
	o := &OAuth{
		Issuer:         testIssuer,
		JWKSURL:        idp.srv.URL + "/jwks",
		PublicURL:      testPublic,
		RequiredScopes: []string{"mcp:tools"},
		Rules:          []OAuthRule{{Claim: "groups", Value: "ops", Allow: []string{"dc1/*"}}},
	}
	if mod != nil {
		mod(o)
	}
	if guard == nil {
		guard = authguard.New(authguard.Config{Burst: 1000, Rate: 1})
	}
	h, err := NewHandler(Config{
		Agents:      tcpAgents{addr: agentSrv.Listener.Addr().String()},
		KnownAgents: []string{"dc1"},
		Clients:     []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}}},
		AuthGuard:   guard,
		OAuth:       o,
	})
	require.NoError(t, err)
	addr, _ := startFront(t, h, nil)
	t.Cleanup(func() {
		agentSrv.CloseClientConnections()
		agentSrv.Close()
	})
	return &oauthFixture{idp: idp, addr: addr, guard: guard}
}

type callResult struct {
	status    int
	challenge string
	reason    string
	headers   http.Header // what the agent's server got
}

func (f *oauthFixture) call(t *testing.T, path, auth string) callResult {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+f.addr+path, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	res := callResult{status: resp.StatusCode, challenge: resp.Header.Get("WWW-Authenticate")}
	if resp.StatusCode == http.StatusOK {
		var echo struct{ Headers http.Header }
		require.NoError(t, json.Unmarshal(body, &echo), "body: %s", body)
		res.headers = echo.Headers
		return res
	}
	var eb errorBody
	require.NoError(t, json.Unmarshal(body, &eb), "body: %s", body)
	res.reason = eb.Error.Data.Reason
	return res
}

// TestOAuthTokens: a valid access token is accepted, named after its
// subject, and never reaches the agent; each way a token can be wrong is
// refused with RFC 6750's challenge and RFC 9728's resource_metadata.
func TestOAuthTokens(t *testing.T) {
	f := newOAuthFixture(t, nil, nil)
	ec := f.idp.keys["ec1"]
	rsaKey := f.idp.addKey(t, "rsa1", "RS256")
	edKey := f.idp.addKey(t, "ed1", "EdDSA")
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.Public())
	require.NoError(t, err)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})

	with := func(k string, v any) map[string]any {
		c := validClaims()
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
		return c
	}
	const meta = `resource_metadata="` + testPublic + `/.well-known/oauth-protected-resource/dc1/notes/mcp"`
	cases := []struct {
		name      string
		auth      string
		status    int
		reason    string
		challenge []string
	}{
		{"valid ES256", "Bearer " + sign(t, ec, "ec1", jose.ES256, validClaims()), 200, "", nil},
		{"valid RS256", "Bearer " + sign(t, rsaKey, "rsa1", jose.RS256, validClaims()), 200, "", nil},
		{"valid EdDSA", "Bearer " + sign(t, edKey, "ed1", jose.EdDSA, validClaims()), 200, "", nil},
		{"scp list instead of scope", "Bearer " + sign(t, ec, "ec1", jose.ES256,
			func() map[string]any { c := with("scope", nil); c["scp"] = []string{"mcp:tools"}; return c }()), 200, "", nil},
		{"audience list", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("aud", []string{"other", testPublic + "/dc1/notes/mcp"})), 200, "", nil},
		{"bad signature", "Bearer " + sign(t, other, "ec1", jose.ES256, validClaims()),
			401, "invalid_token", []string{`error="invalid_token"`, `error_description="bad signature"`, meta}},
		{"expired", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("exp", time.Now().Add(-2*time.Minute).Unix())),
			401, "invalid_token", []string{`error="invalid_token"`, `error_description="expired"`, meta}},
		{"not yet valid", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("nbf", time.Now().Add(2*time.Minute).Unix())),
			401, "invalid_token", []string{`error_description="not valid yet"`, meta}},
		{"no exp", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("exp", nil)),
			401, "invalid_token", []string{`error_description="no expiry (exp)"`}},
		{"wrong issuer", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("iss", "https://evil.test")),
			401, "invalid_token", []string{`error_description="wrong issuer"`, meta}},
		{"wrong audience: another endpoint", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("aud", testPublic+"/dc1/other/mcp")),
			401, "invalid_token", []string{`error_description="audience is not ` + testPublic + `/dc1/notes/mcp"`, meta}},
		{"wrong audience: the relay as a whole", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("aud", testPublic)),
			401, "invalid_token", []string{`error="invalid_token"`}},
		{"no audience", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("aud", nil)),
			401, "invalid_token", []string{`error="invalid_token"`}},
		{"missing scope", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("scope", "openid")),
			403, "insufficient_scope", []string{`error="insufficient_scope"`, `scope="mcp:tools"`, meta}},
		// Refused for the algorithm itself, before any key is looked at.
		{"alg none", "Bearer " + unsigned(t, "ec1", validClaims()),
			401, "invalid_token", []string{`error="invalid_token"`, `error_description="malformed, or signed with an algorithm not accepted"`, meta}},
		{"HS256 with the public key as secret", "Bearer " + sign(t, pubPEM, "rsa1", jose.HS256, validClaims()),
			401, "invalid_token", []string{`error="invalid_token"`, `error_description="malformed, or signed with an algorithm not accepted"`, meta}},
		{"unknown kid", "Bearer " + sign(t, other, "nope", jose.ES256, validClaims()),
			401, "invalid_token", []string{`error_description="unknown signing key"`}},
		{"no identity claim", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("sub", nil)),
			401, "invalid_token", []string{`error_description="no sub claim to name the client"`}},
		{"valid but no allow pattern for it", "Bearer " + sign(t, ec, "ec1", jose.ES256, with("groups", []string{"staff"})),
			403, "forbidden", nil},
		{"garbage that looks like a JWT", "Bearer a.b.c", 401, "invalid_token", []string{meta}},
		{"opaque unknown token", "Bearer not-a-jwt", 401, "unauthorized", []string{`error="invalid_token"`, meta}},
		{"no token", "", 401, "unauthorized", []string{`Bearer realm="mcptun"`, `scope="mcp:tools"`, meta}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := f.call(t, "/dc1/notes/mcp", tc.auth)
			require.Equal(t, tc.status, res.status, "reason %q, challenge %q", res.reason, res.challenge)
			require.Equal(t, tc.reason, res.reason)
			for _, c := range tc.challenge {
				require.Contains(t, res.challenge, c)
			}
			if tc.status == 200 {
				require.Equal(t, []string{"oauth:alice"}, res.headers[ClientHeader])
				require.Empty(t, res.headers["Authorization"], "the access token reached the agent")
			}
		})
	}
}

// TestOAuthIdentity: the client name comes from the configured claim,
// prefixed so no token passes for a token client, and escaped so a claim
// cannot add a header line on the tunnel.
func TestOAuthIdentity(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) {
		o.IdentityClaim = "client.name"
		o.Allow = []string{"dc1/notes"}
		o.Rules = nil
	}, nil)
	ec := f.idp.keys["ec1"]
	for _, tc := range []struct{ id, want string }{
		{"ci", "oauth:ci"},
		{"evil\r\nX-Mcptun-Client: ci", "oauth:evil%0D%0AX-Mcptun-Client:%20ci"},
		{"100%", "oauth:100%25"},
		{"jürgen", "oauth:j%C3%BCrgen"},
	} {
		c := validClaims()
		c["client"] = map[string]any{"name": tc.id}
		res := f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "ec1", jose.ES256, c))
		require.Equal(t, 200, res.status, tc.id)
		require.Equal(t, []string{tc.want}, res.headers[ClientHeader], tc.id)
	}
	// The token client still works beside OAuth, by its own name.
	res := f.call(t, "/dc1/notes/mcp", "Bearer ci-token")
	require.Equal(t, 200, res.status)
	require.Equal(t, []string{"ci"}, res.headers[ClientHeader])
	require.Empty(t, res.headers["Authorization"])
	// Allow is narrowed by pattern: dc1/notes only.
	c := validClaims()
	c["client"] = map[string]any{"name": "x"}
	c["aud"] = testPublic + "/dc1/other/mcp"
	res = f.call(t, "/dc1/other/mcp", "Bearer "+sign(t, ec, "ec1", jose.ES256, c))
	require.Equal(t, 403, res.status)
	require.Equal(t, "forbidden", res.reason)
}

// TestOAuthFailuresThrottled: refused access tokens count as failed
// authentications for the source, as wrong bearer tokens do; a token
// short of scope (valid, but not enough) does not.
func TestOAuthFailuresThrottled(t *testing.T) {
	f := newOAuthFixture(t, nil, nil)
	ec := f.idp.keys["ec1"]
	c := validClaims()
	c["scope"] = "openid"
	short := "Bearer " + sign(t, ec, "ec1", jose.ES256, c)
	for range 3 {
		require.Equal(t, 403, f.call(t, "/dc1/notes/mcp", short).status)
	}
	require.Zero(t, f.guard.Stats().Failures.Load())
	expired := validClaims()
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	bad := "Bearer " + sign(t, ec, "ec1", jose.ES256, expired)
	for range 3 {
		require.Equal(t, 401, f.call(t, "/dc1/notes/mcp", bad).status)
	}
	require.EqualValues(t, 3, f.guard.Stats().Failures.Load())

	// A guard that allows one failure: the second bad token is throttled,
	// and so is a valid token after it.
	gf := newOAuthFixture(t, nil, authguard.New(authguard.Config{Burst: 1, Rate: 0.001}))
	ec = gf.idp.keys["ec1"]
	bad = "Bearer " + sign(t, ec, "ec1", jose.ES256, expired)
	require.Equal(t, 401, gf.call(t, "/dc1/notes/mcp", bad).status)
	res := gf.call(t, "/dc1/notes/mcp", bad)
	require.Equal(t, 429, res.status)
	require.Equal(t, "auth_throttled", res.reason)
	res = gf.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "ec1", jose.ES256, validClaims()))
	require.Equal(t, 429, res.status)
}

// TestOAuthMetadata: RFC 9728 documents at the endpoint's path-inserted
// well-known URL and the root one, built from public_url (not the Host a
// request came with), for any plain names so they tell nobody which
// agents exist.
func TestOAuthMetadata(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) {
		o.AuthorizationServers = []string{"https://idp.test/realms/bank", "https://backup.test"}
		o.ScopesSupported = []string{"mcp:tools", "openid"}
	}, nil)
	get := func(path string) (int, http.Header, map[string]any) {
		req, err := http.NewRequest(http.MethodGet, "http://"+f.addr+path, nil)
		require.NoError(t, err)
		req.Host = "attacker.example" // must not show in the document
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var doc map[string]any
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
		return resp.StatusCode, resp.Header, doc
	}
	for path, resource := range map[string]string{
		"/.well-known/oauth-protected-resource/dc1/notes/mcp":      testPublic + "/dc1/notes/mcp",
		"/.well-known/oauth-protected-resource/nosuch/agent.x/mcp": testPublic + "/nosuch/agent.x/mcp",
		"/.well-known/oauth-protected-resource":                    testPublic,
	} {
		status, hdr, doc := get(path)
		require.Equal(t, 200, status, path)
		require.Equal(t, "application/json", hdr.Get("Content-Type"))
		require.Equal(t, "*", hdr.Get("Access-Control-Allow-Origin"))
		require.Equal(t, resource, doc["resource"], path)
		require.Equal(t, []any{"https://idp.test/realms/bank", "https://backup.test"}, doc["authorization_servers"])
		require.Equal(t, []any{"mcp:tools", "openid"}, doc["scopes_supported"])
		require.Equal(t, []any{"header"}, doc["bearer_methods_supported"])
	}
	// A browser's CORS preflight (MCP clients send MCP-Protocol-Version).
	req, err := http.NewRequest(http.MethodOptions, "http://"+f.addr+"/.well-known/oauth-protected-resource/dc1/notes/mcp", nil)
	require.NoError(t, err)
	req.Header.Set("Origin", "https://inspector.example")
	req.Header.Set("Access-Control-Request-Method", "GET")
	req.Header.Set("Access-Control-Request-Headers", "mcp-protocol-version")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	require.Equal(t, "*", resp.Header.Get("Access-Control-Allow-Origin"))
	require.Equal(t, "*", resp.Header.Get("Access-Control-Allow-Headers"))
	require.Contains(t, resp.Header.Get("Access-Control-Allow-Methods"), "GET")

	status, _, doc := get("/.well-known/oauth-protected-resource/-bad/x/mcp")
	require.Equal(t, 404, status)
	require.Equal(t, "not_found", doc["error"].(map[string]any)["data"].(map[string]any)["reason"])

	// Without oauth there is no metadata.
	agentSrv := httptest.NewServer(headerAgent())
	defer agentSrv.Close()
	h, err := NewHandler(Config{Agents: tcpAgents{addr: agentSrv.Listener.Addr().String()}, KnownAgents: []string{"dc1"}})
	require.NoError(t, err)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/.well-known/oauth-protected-resource/dc1/notes/mcp", nil))
	require.Equal(t, 404, rec.Code)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/dc1/notes/mcp", nil))
	require.Equal(t, `Bearer realm="mcptun"`, rec.Header().Get("WWW-Authenticate"))
}

// TestOAuthKeyRotation: a token signed with a key the relay has not seen
// makes it fetch the key set again, so a rotation at the authorization
// server needs no restart.
func TestOAuthKeyRotation(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) { o.JWKSMinRefresh = time.Nanosecond }, nil)
	ec := f.idp.keys["ec1"]
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "ec1", jose.ES256, validClaims())).status)
	require.EqualValues(t, 1, f.idp.fetches.Load())
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "ec1", jose.ES256, validClaims())).status)
	require.EqualValues(t, 1, f.idp.fetches.Load(), "a known kid fetched the key set again")
	k2 := f.idp.addKey(t, "ec2", "ES256")
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, k2, "ec2", jose.ES256, validClaims())).status)
	require.EqualValues(t, 2, f.idp.fetches.Load())
}

// TestOAuthKeyFetchBounded: tokens with made-up kids fetch the key set at
// most once per JWKSMinRefresh, and while the authorization server's keys
// were never had the relay answers 503 without counting the client's
// token as wrong.
func TestOAuthKeyFetchBounded(t *testing.T) {
	f := newOAuthFixture(t, nil, nil)
	ec := f.idp.keys["ec1"]
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "ec1", jose.ES256, validClaims())).status)
	for i := range 20 {
		res := f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "made-up-"+string(rune('a'+i)), jose.ES256, validClaims()))
		require.Equal(t, 401, res.status)
	}
	require.EqualValues(t, 1, f.idp.fetches.Load(), "unknown kids fetched the key set within JWKSMinRefresh of the last fetch")

	down := newOAuthFixture(t, nil, nil)
	down.idp.fail.Store(true)
	res := down.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, down.idp.keys["ec1"], "ec1", jose.ES256, validClaims()))
	require.Equal(t, 503, res.status)
	require.Equal(t, "oauth_keys_unavailable", res.reason)
	require.Zero(t, down.guard.Stats().Failures.Load())
}

// TestOAuthConfigRefused: settings that would weaken the checks are
// refused when the handler is made.
func TestOAuthConfigRefused(t *testing.T) {
	base := func() OAuth {
		return OAuth{Issuer: testIssuer, JWKSURL: "https://idp.test/jwks", PublicURL: testPublic}
	}
	for name, tc := range map[string]struct {
		mod  func(*OAuth)
		want string
	}{
		"HS256 accepted":        {func(o *OAuth) { o.Algorithms = []string{"RS256", "HS256"} }, `algorithm "HS256" is not accepted`},
		"none accepted":         {func(o *OAuth) { o.Algorithms = []string{"none"} }, `algorithm "none" is not accepted`},
		"plain http jwks":       {func(o *OAuth) { o.JWKSURL = "http://idp.test/jwks" }, "must be https"},
		"no issuer":             {func(o *OAuth) { o.Issuer = "" }, "issuer is required"},
		"public url with path":  {func(o *OAuth) { o.PublicURL = testPublic + "/mcp" }, "no path"},
		"public url not a url":  {func(o *OAuth) { o.PublicURL = "mcp.bank.test" }, "scheme://host"},
		"both jwks url and doc": {func(o *OAuth) { o.JWKS = []byte(`{"keys":[]}`) }, "exactly one of jwks_url and jwks_file"},
		"jwks with only a secret": {func(o *OAuth) {
			o.JWKSURL = ""
			o.JWKS = []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"s"}]}`)
		}, "no public signing key"},
	} {
		t.Run(name, func(t *testing.T) {
			o := base()
			tc.mod(&o)
			_, err := NewHandler(Config{Agents: tcpAgents{}, OAuth: &o})
			require.ErrorContains(t, err, tc.want)
		})
	}
}

// TestOAuthStaticKeys: a fixed key set (jwks_file) checks tokens with no
// fetching.
func TestOAuthStaticKeys(t *testing.T) {
	idp := newTestIdP(t)
	f := newOAuthFixture(t, func(o *OAuth) {
		o.JWKSURL = ""
		o.JWKS = idp.jwks(t)
	}, nil)
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, idp.keys["ec1"], "ec1", jose.ES256, validClaims())).status)
	require.Equal(t, 401, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, f.idp.keys["ec1"], "ec1", jose.ES256, validClaims())).status)
	require.Zero(t, f.idp.fetches.Load())
}

// TestOAuthTokenCache: an accepted token is remembered, but a hit still
// answers for the endpoint it is sent to (its audience) and ends with the
// token's expiry; the cache stays bounded.
func TestOAuthTokenCache(t *testing.T) {
	idp := newTestIdP(t)
	v, err := newOAuthVerifier(OAuth{Issuer: testIssuer, JWKS: idp.jwks(t), PublicURL: testPublic,
		RequiredScopes: []string{"mcp:tools"}, Allow: []string{"dc1/*"}}, nil)
	require.NoError(t, err)
	now := time.Now()
	v.now = func() time.Time { return now }
	tok := sign(t, idp.keys["ec1"], "ec1", jose.ES256, validClaims()) // exp: now+5m

	c, ref := v.verify(tok, "dc1", "notes")
	require.Nil(t, ref)
	require.Equal(t, "oauth:alice", c.Name)
	require.Equal(t, 1, v.cache.len())
	c, ref = v.verify(tok, "dc1", "notes")
	require.Nil(t, ref, "a hit")
	require.Equal(t, "oauth:alice", c.Name)
	_, ref = v.verify(tok, "dc1", "other")
	require.NotNil(t, ref, "a hit for another endpoint than the token's audience")
	require.Equal(t, "invalid_token", ref.reason)

	now = now.Add(5*time.Minute + DefaultOAuthLeeway + time.Second)
	_, ref = v.verify(tok, "dc1", "notes")
	require.NotNil(t, ref, "the token expired while cached")
	require.Contains(t, ref.value, `error_description="expired"`)
	require.Zero(t, v.cache.len())

	// A token good for an hour is looked at again after tokenCacheTTL.
	c1 := validClaims()
	c1["exp"] = now.Add(time.Hour).Unix()
	long := sign(t, idp.keys["ec1"], "ec1", jose.ES256, c1)
	_, ref = v.verify(long, "dc1", "notes")
	require.Nil(t, ref)
	_, hit := v.cache.get(sha256.Sum256([]byte(long)), now.Add(tokenCacheTTL-time.Second))
	require.True(t, hit)
	_, hit = v.cache.get(sha256.Sum256([]byte(long)), now.Add(tokenCacheTTL))
	require.False(t, hit, "cached beyond tokenCacheTTL")

	small := newTokenCache(8)
	for i := range 100 {
		small.put([32]byte{byte(i)}, &cachedToken{until: now.Add(time.Hour)})
	}
	require.Equal(t, 8, small.len())
}

// BenchmarkOAuthVerify is the relay's cost of an access token per
// exchange: the first sight of a token (a signature check) and later ones
// (a cache hit).
func BenchmarkOAuthVerify(b *testing.B) {
	t := &testing.T{}
	idp := newTestIdP(t)
	defer idp.srv.Close()
	rsaKey := idp.addKey(t, "rsa1", "RS256")
	v, err := newOAuthVerifier(OAuth{Issuer: testIssuer, JWKS: idp.jwks(t), PublicURL: testPublic,
		RequiredScopes: []string{"mcp:tools"}, Allow: []string{"dc1/*"}}, nil)
	require.NoError(b, err)
	for _, tc := range []struct {
		name   string
		key    any
		kid    string
		alg    jose.SignatureAlgorithm
		cached bool
	}{
		{"ES256/first", idp.keys["ec1"], "ec1", jose.ES256, false},
		{"RS256/first", rsaKey, "rsa1", jose.RS256, false},
		{"ES256/cached", idp.keys["ec1"], "ec1", jose.ES256, true},
	} {
		tok := sign(t, tc.key, tc.kid, tc.alg, validClaims())
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if !tc.cached {
					v.cache = newTokenCache(tokenCacheSize)
				}
				if c, ref := v.verify(tok, "dc1", "notes"); c == nil {
					b.Fatal(ref.msg)
				}
			}
		})
	}
}

// TestJWKSFetchBounds: what a key set fetch may cost is bounded (time,
// size, keys, no redirects), and only public signature keys are kept.
func TestJWKSFetchBounds(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	hang := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hang":
			select {
			case <-hang:
			case <-r.Context().Done():
			}
		case "/redirect":
			http.Redirect(w, r, "/keys", http.StatusFound)
		case "/big":
			_, _ = w.Write([]byte(`{"keys":[],"pad":"` + strings.Repeat("x", jwksMaxBytes) + `"}`))
		case "/many":
			keys := make([]string, jwksMaxKeys+1)
			for i := range keys {
				keys[i] = `{"kty":"oct","k":"c2VjcmV0"}`
			}
			_, _ = w.Write([]byte(`{"keys":[` + strings.Join(keys, ",") + `]}`))
		}
	}))
	defer srv.Close()
	defer close(hang)
	for path, want := range map[string]string{
		"/hang":     "context deadline exceeded",
		"/redirect": "HTTP status 302",
		"/big":      "larger than",
		"/many":     "more than the 100 accepted",
	} {
		j, err := newRemoteJWKS(srv.URL+path, nil, 0, 0, log)
		require.NoError(t, err)
		j.timeout = 200 * time.Millisecond
		_, err = j.key("k", "ES256")
		require.ErrorIs(t, err, errKeysUnavailable, path)
		require.ErrorContains(t, err, want, path)
	}

	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	set := jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: []byte("secret"), KeyID: "oct", Algorithm: "HS256"},
		{Key: ec, KeyID: "private", Use: "sig"},
		{Key: &ec.PublicKey, KeyID: "enc", Use: "enc"},
		{Key: &ec.PublicKey, KeyID: "good", Use: "sig"},
	}}
	doc, err := json.Marshal(set)
	require.NoError(t, err)
	keys, err := parseJWKS(doc, log)
	require.NoError(t, err)
	require.Len(t, keys, 1)
	require.Equal(t, "good", keys[0].KeyID)
}

// TestJWKSMaxAge: a key set older than JWKSMaxAge is fetched again on
// the next token, though its kid is known.
func TestJWKSMaxAge(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) { o.JWKSMaxAge = time.Nanosecond; o.JWKSMinRefresh = time.Nanosecond }, nil)
	for i := range 3 {
		// A new token each time: an accepted one is cached.
		c := validClaims()
		c["jti"] = strconv.Itoa(i)
		require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, f.idp.keys["ec1"], "ec1", jose.ES256, c)).status)
	}
	require.EqualValues(t, 3, f.idp.fetches.Load())
}

// TestOAuthMoreRules: relay-wide audiences, leeway, kid-less tokens,
// dotted claim rules, long identities, and refusals that are not
// failures.
func TestOAuthMoreRules(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) {
		o.Audiences = []string{"api://mcptun"}
		o.Rules = append(o.Rules, OAuthRule{Claim: "realm_access.roles", Value: "notes-reader", Allow: []string{"dc1/notes"}})
	}, nil)
	ec := f.idp.keys["ec1"]
	tok := func(mod func(map[string]any)) string {
		c := validClaims()
		mod(c)
		return "Bearer " + sign(t, ec, "ec1", jose.ES256, c)
	}
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", tok(func(c map[string]any) { c["aud"] = "api://mcptun" })).status)
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", tok(func(c map[string]any) { c["exp"] = time.Now().Add(-10 * time.Second).Unix() })).status,
		"expired 10 s ago, within the 30 s leeway")
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", "Bearer "+sign(t, ec, "", jose.ES256, validClaims())).status,
		"no kid: the only key")
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", tok(func(c map[string]any) {
		delete(c, "groups")
		c["realm_access"] = map[string]any{"roles": []string{"notes-reader"}}
	})).status, "a dotted claim rule")
	res := f.call(t, "/dc1/notes/mcp", tok(func(c map[string]any) { c["sub"] = strings.Repeat("a", 257) }))
	require.Equal(t, 401, res.status)
	require.Contains(t, res.challenge, "longer than 256 bytes")
	failures := f.guard.Stats().Failures.Load()
	res = f.call(t, "/dc1/notes/mcp", tok(func(c map[string]any) { delete(c, "groups") }))
	require.Equal(t, 403, res.status)
	require.Equal(t, "forbidden", res.reason)
	require.Equal(t, failures, f.guard.Stats().Failures.Load(), "a genuine token without the pattern is no failed authentication")
}

// TestOAuthRateLimit: oauth.rate_limit holds each identity to its own
// allowance, and the table of identities stays bounded.
func TestOAuthRateLimit(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) { o.Rate, o.Burst = 0.001, 1 }, nil)
	ec := f.idp.keys["ec1"]
	as := func(sub string) string {
		c := validClaims()
		c["sub"] = sub
		return "Bearer " + sign(t, ec, "ec1", jose.ES256, c)
	}
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", as("alice")).status)
	res := f.call(t, "/dc1/notes/mcp", as("alice"))
	require.Equal(t, 429, res.status, "alice's second exchange, with another token of hers")
	require.Equal(t, "rate_limited", res.reason)
	require.Equal(t, 200, f.call(t, "/dc1/notes/mcp", as("bob")).status, "bob has an allowance of his own")

	l := newIdentityLimits(1, 1, 3)
	a := l.get("a")
	l.get("b")
	l.get("c")
	require.Same(t, a, l.get("a"))
	l.get("d") // b is the least recently used
	require.Len(t, l.m, 3)
	require.Contains(t, l.m, "a")
	require.NotContains(t, l.m, "b")
}

// TestJWKSOldSetNoWait: while an old key set is fetched again, exchanges
// whose kid it holds go on with it instead of waiting for the fetch; a
// key the new set withdrew then stops working.
func TestJWKSOldSetNoWait(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	idp := newTestIdP(t) // for its keys
	var fetches atomic.Int32
	inFetch := make(chan struct{})
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch fetches.Add(1) {
		case 1:
			_, _ = w.Write(idp.jwks(t))
		case 2:
			close(inFetch)
			select {
			case <-release:
			case <-r.Context().Done():
			}
			_, _ = w.Write([]byte(`{"keys":[]}`)) // not a usable set: the old one stays
		default:
			idp.mu.Lock()
			delete(idp.keys, "ec1")
			idp.mu.Unlock()
			idp.addKey(t, "ec2", "ES256")
			_, _ = w.Write(idp.jwks(t))
		}
	}))
	defer srv.Close()
	j, err := newRemoteJWKS(srv.URL, nil, time.Nanosecond, time.Nanosecond, log)
	require.NoError(t, err)
	j.timeout = time.Minute // a fetch that hangs, hangs
	_, err = j.key("ec1", "ES256")
	require.NoError(t, err)

	slow := make(chan error, 1)
	go func() { _, err := j.key("ec1", "ES256"); slow <- err }() // the set is old: it fetches
	<-inFetch
	fast := make(chan error, 1)
	go func() { _, err := j.key("ec1", "ES256"); fast <- err }()
	select {
	case err := <-fast:
		require.NoError(t, err)
	case <-time.After(5 * time.Second): // generous: the answer needs no I/O
		close(release)
		<-slow
		<-fast
		t.Fatal("an exchange waited for the fetch of an old key set")
	}
	close(release)
	require.NoError(t, <-slow)

	_, err = j.key("ec1", "ES256") // fetches the set without ec1
	require.ErrorIs(t, err, errUnknownKey)
	_, err = j.key("ec2", "ES256")
	require.NoError(t, err)
}

// TestOAuthNarrowsTools: an OAuth allow pattern that names tools narrows
// the client to them at the agent (X-Mcptun-Tools), as a token client's
// does: without it an OAuth client granted "dc1/notes/search_*" reached
// every tool of dc1/notes.
func TestOAuthNarrowsTools(t *testing.T) {
	f := newOAuthFixture(t, func(o *OAuth) {
		o.Allow = []string{"dc1/notes/search_*"}
		o.Rules = []OAuthRule{{Claim: "groups", Value: "ops", Allow: []string{"dc1/notes/read"}}}
	}, nil)
	ec := f.idp.keys["ec1"]
	for _, tc := range []struct {
		groups []string
		want   string
	}{
		{[]string{"staff"}, "search_%2A"},
		{[]string{"ops"}, "search_%2A,read"},
	} {
		c := validClaims()
		c["groups"] = tc.groups
		tok := "Bearer " + sign(t, ec, "ec1", jose.ES256, c)
		for range 2 { // checked in full, then from the token cache
			res := f.call(t, "/dc1/notes/mcp", tok)
			require.Equal(t, 200, res.status, "reason %q", res.reason)
			require.Equal(t, []string{tc.want}, res.headers[ToolsHeader], "groups %q", tc.groups)
		}
	}
}
