package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/conformance"
	"github.com/mcptun/mcptun/internal/mcptest"
)

// testAS is a small OAuth 2.1 authorization server on 127.0.0.1: RFC 8414
// metadata, a JWKS, an authorization endpoint that approves at once
// (authorization code with PKCE S256, as MCP requires), and a token
// endpoint that issues ES256 JWTs for the resource the client names
// (RFC 8707). It records every request it gets.
type testAS struct {
	srv *httptest.Server
	key *ecdsa.PrivateKey

	mu       sync.Mutex
	requests []string          // "METHOD path"
	codes    map[string]asCode // code → what it was issued for
	resource []string          // resource parameters at the token endpoint
	sub      string            // the subject tokens are issued to
}

type asCode struct{ challenge, resource, redirect string }

func newTestAS(t *testing.T) *testAS {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	as := &testAS{key: key, codes: map[string]asCode{}, sub: "alice"}
	mux := http.NewServeMux()
	mux.HandleFunc("/.well-known/oauth-authorization-server", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                as.srv.URL,
			"authorization_endpoint":                as.srv.URL + "/authorize",
			"token_endpoint":                        as.srv.URL + "/token",
			"jwks_uri":                              as.srv.URL + "/jwks",
			"response_types_supported":              []string{"code"},
			"grant_types_supported":                 []string{"authorization_code", "client_credentials"},
			"code_challenge_methods_supported":      []string{"S256"},
			"token_endpoint_auth_methods_supported": []string{"none", "client_secret_basic"},
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "as1", Use: "sig", Algorithm: "ES256"}}})
	})
	mux.HandleFunc("/authorize", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if q.Get("response_type") != "code" || q.Get("code_challenge_method") != "S256" || q.Get("code_challenge") == "" {
			http.Error(w, "authorization code with PKCE S256 only", http.StatusBadRequest)
			return
		}
		code := rand.Text()
		as.mu.Lock()
		as.codes[code] = asCode{challenge: q.Get("code_challenge"), resource: q.Get("resource"), redirect: q.Get("redirect_uri")}
		as.mu.Unlock()
		to, _ := url.Parse(q.Get("redirect_uri"))
		v := to.Query()
		v.Set("code", code)
		v.Set("state", q.Get("state"))
		to.RawQuery = v.Encode()
		http.Redirect(w, r, to.String(), http.StatusFound)
	})
	mux.HandleFunc("/token", func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		switch r.PostForm.Get("grant_type") {
		case "authorization_code":
		case "client_credentials":
			// A machine client, pre-registered: its id is the subject.
			id, secret, ok := r.BasicAuth()
			if !ok || id != asClientID || secret != asClientSecret {
				w.WriteHeader(http.StatusUnauthorized)
				_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
				return
			}
			res := r.PostForm.Get("resource")
			as.mu.Lock()
			as.resource = append(as.resource, res)
			as.mu.Unlock()
			as.issue(w, id, res)
			return
		default:
			http.Error(w, `{"error":"unsupported_grant_type"}`, http.StatusBadRequest)
			return
		}
		as.mu.Lock()
		c, ok := as.codes[r.PostForm.Get("code")]
		delete(as.codes, r.PostForm.Get("code"))
		res := r.PostForm.Get("resource")
		as.resource = append(as.resource, res)
		sub := as.sub
		as.mu.Unlock()
		sum := sha256.Sum256([]byte(r.PostForm.Get("code_verifier")))
		if !ok || base64.RawURLEncoding.EncodeToString(sum[:]) != c.challenge || c.redirect != r.PostForm.Get("redirect_uri") {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant"}`))
			return
		}
		as.issue(w, sub, res)
	})
	as.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		as.mu.Lock()
		as.requests = append(as.requests, r.Method+" "+r.URL.Path)
		as.mu.Unlock()
		mux.ServeHTTP(w, r)
	}))
	t.Cleanup(as.srv.Close)
	return as
}

// The client the authorization server knows for client_credentials.
const (
	asClientID     = "ts-machine"
	asClientSecret = "ts-machine-secret"
)

// issue answers a token request with a JWT for sub and resource.
func (as *testAS) issue(w http.ResponseWriter, sub, resource string) {
	tok, err := signJWT(as.key, "as1", jose.ES256, as.claims(sub, resource))
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 300, "scope": "mcp:tools"})
}

func (as *testAS) claims(sub, aud string) map[string]any {
	now := time.Now()
	return map[string]any{"iss": as.srv.URL, "sub": sub, "aud": aud, "scope": "mcp:tools",
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
}

func (as *testAS) sign(t *testing.T, claims map[string]any) string {
	return signWith(t, as.key, "as1", jose.ES256, claims)
}

func signWith(t *testing.T, key any, kid string, alg jose.SignatureAlgorithm, claims map[string]any) string {
	t.Helper()
	tok, err := signJWT(key, kid, alg, claims)
	require.NoError(t, err)
	return tok
}

func signJWT(key any, kid string, alg jose.SignatureAlgorithm, claims map[string]any) (string, error) {
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		return "", err
	}
	return jwt.Signed(s).Claims(claims).Serialize()
}

func (as *testAS) seen() []string {
	as.mu.Lock()
	defer as.mu.Unlock()
	return append([]string(nil), as.requests...)
}

// headerRecorder is an HTTP MCP server (the fixture) that keeps the
// headers of every request it gets: what an internal server sees.
type headerRecorder struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []http.Header
}

func newHeaderRecorder(t *testing.T) *headerRecorder {
	t.Helper()
	hr := &headerRecorder{}
	h := mcptest.NewHTTPHandler(mcptest.NewServer(mcptest.ServerOptions{}), mcptest.HTTPConfig{})
	hr.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hr.mu.Lock()
		hr.got = append(hr.got, r.Header.Clone())
		hr.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		hr.srv.CloseClientConnections()
		hr.srv.Close()
	})
	return hr
}

func (hr *headerRecorder) headers() []http.Header {
	hr.mu.Lock()
	defer hr.mu.Unlock()
	return append([]http.Header(nil), hr.got...)
}

// freeLoopbackPort is a TCP port free on 127.0.0.1 at the time of the
// call: the relay's public_url must name its port before it starts.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// oauthDeployment is a relay with an oauth: section trusting as, and an
// agent whose url: server wiki is a headerRecorder.
func oauthDeployment(t *testing.T, as *testAS) (*deployment, *headerRecorder) {
	t.Helper()
	hr := newHeaderRecorder(t)
	d := &deployment{dir: t.TempDir()}
	d.relayYAML = writeRelayConfig(t, d.dir, relayOpts{}) // and the certificate
	// public_url names the relay's port, so the port is picked before the
	// relay starts; another process on the machine may take it first,
	// then the relay exits and we pick again.
	for attempt := 1; ; attempt++ {
		listen := fmt.Sprintf("127.0.0.1:%d", freeLoopbackPort(t))
		require.NoError(t, os.WriteFile(d.relayYAML, []byte(fmt.Sprintf(`tunnel: {listen: "127.0.0.1:0", cert_file: relay.crt, key_file: relay.key}
http: {listen: %q}
agents:  [{name: dc1, token_sha256: %q}]
clients:
  - {name: ci, token_sha256: %q, allow: ["dc1/*"]}
oauth:
  issuer: %s
  jwks_url: %s/jwks
  public_url: http://%s
  required_scopes: [mcp:tools]
  allow: ["dc1/wiki"]
log: {level: debug}
`, listen, sha256Hex(agentToken), sha256Hex(clientToken), as.srv.URL, as.srv.URL, listen)), 0o600))
		d.relay = startProc(t, "relay", nil, mcptunBin, "relay", "--config", d.relayYAML)
		if m, ok := d.relay.waitStartOrExit(t, 20*time.Second); ok {
			d.tunnelAddr, d.relayURL = m[1], m[2]
			require.Equal(t, "http://"+listen, d.relayURL)
			break
		}
		require.Less(t, attempt, 3, "the relay did not start:\n%s", d.relay.out)
		require.True(t, d.relay.hasLine(regexp.MustCompile(`address already in use`)), "the relay did not start:\n%s", d.relay.out)
	}
	d.writeAgentConfig(t, agentOpts{transport: "quic", httpURL: hr.srv.URL + mcptest.EndpointPath})
	d.startAgent(t)
	d.waitOnline(t, "wiki")
	return d, hr
}

// waitStartOrExit waits for the relay's started line (ok) or its exit.
func (p *proc) waitStartOrExit(t *testing.T, timeout time.Duration) ([]string, bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		lines, changed := p.out.snapshot()
		for _, l := range lines {
			if m := relayStarted.FindStringSubmatch(l); m != nil {
				return m, true
			}
		}
		select {
		case <-changed:
		case <-p.done:
			lines2, _ := p.out.snapshot()
			if len(lines2) > len(lines) {
				continue
			}
			return nil, false
		case <-deadline:
			t.Fatalf("%s printed no started line within %s", p.name, timeout)
		}
	}
}

// TestOAuthDiscoveryWithRealClient: mcp-go's OAuth client, with only the
// endpoint's URL and a token the relay refuses, gets a 401 naming the relay's
// protected-resource metadata (RFC 9728), fetches it, finds the
// authorization server there, fetches its metadata (RFC 8414), runs
// authorization code + PKCE for the endpoint as resource (RFC 8707), and
// then calls tools through relay, tunnel and agent with the JWT it got.
// The internal server never sees the token, and the agent knows the client
// as oauth:alice, which no token client can be (nor the reverse).
func TestOAuthDiscoveryWithRealClient(t *testing.T) {
	as := newTestAS(t)
	d, hr := oauthDeployment(t, as)
	endpoint := d.relayURL + "/dc1/wiki/mcp"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var mu sync.Mutex
	var fetched []string // what the client's OAuth side fetched, in order
	httpc := &http.Client{Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			mu.Lock()
			fetched = append(fetched, r.Method+" "+r.URL.String())
			mu.Unlock()
			return http.DefaultTransport.RoundTrip(r)
		})}
	// The client holds a token the relay refuses (one for another
	// endpoint): mcp-go sends no request at all without a token, and the
	// 401 is what must lead it to the metadata.
	store := transport.NewMemoryTokenStore()
	require.NoError(t, store.SaveToken(ctx, &transport.Token{TokenType: "Bearer", ExpiresAt: time.Now().Add(time.Hour),
		AccessToken: as.sign(t, as.claims("alice", d.relayURL+"/dc1/notes/mcp"))}))
	c, err := client.NewOAuthStreamableHttpClient(endpoint, transport.OAuthConfig{
		ClientID:    "e2e-client",
		RedirectURI: "http://127.0.0.1:1/callback", // never visited: the test reads the redirect
		Scopes:      []string{"mcp:tools"},
		PKCEEnabled: true,
		TokenStore:  store,
		HTTPClient:  httpc,
	})
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.Start(ctx))
	init := mcp.InitializeRequest{}
	init.Params.ClientInfo = mcp.Implementation{Name: "e2e-oauth", Version: "1"}
	init.Params.ProtocolVersion = mcp.LATEST_LEGACY_PROTOCOL_VERSION
	_, err = c.Initialize(ctx, init)
	require.True(t, client.IsOAuthAuthorizationRequiredError(err), "first initialize: %v", err)
	require.Equal(t, d.relayURL+"/.well-known/oauth-protected-resource/dc1/wiki/mcp", client.GetResourceMetadataURL(err))

	h := client.GetOAuthHandler(err)
	verifier, err := transport.GenerateCodeVerifier()
	require.NoError(t, err)
	state, err := transport.GenerateState()
	require.NoError(t, err)
	authURL, err := h.GetAuthorizationURL(ctx, state, transport.GenerateCodeChallenge(verifier))
	require.NoError(t, err, "discovery")
	mu.Lock()
	require.Equal(t, []string{
		"GET " + d.relayURL + "/.well-known/oauth-protected-resource/dc1/wiki/mcp",
		"GET " + as.srv.URL + "/.well-known/oauth-authorization-server",
	}, fetched, "discovery: the relay's metadata, then the authorization server's it names")
	mu.Unlock()
	require.True(t, strings.HasPrefix(authURL, as.srv.URL+"/authorize?"), authURL)
	require.Contains(t, authURL, "resource="+url.QueryEscape(endpoint))

	// The user's browser: the authorization server approves at once.
	resp, err := httpc.Get(authURL)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusFound, resp.StatusCode)
	back, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	require.NoError(t, h.ProcessAuthorizationResponse(ctx, back.Query().Get("code"), back.Query().Get("state"), verifier))
	as.mu.Lock()
	require.Equal(t, []string{endpoint}, as.resource, "the token was asked for the endpoint as resource")
	as.mu.Unlock()

	_, err = c.Initialize(ctx, init)
	require.NoError(t, err, "initialize with the token")
	req := mcp.CallToolRequest{}
	req.Params.Name = mcptest.ToolEcho
	req.Params.Arguments = map[string]any{"text": "hello with a JWT"}
	res, err := c.CallTool(ctx, req)
	require.NoError(t, err)
	require.Contains(t, textOf(res), "hello with a JWT")

	// No token passthrough: the internal server saw neither the JWT nor
	// the relay's client header.
	got := hr.headers()
	require.NotEmpty(t, got)
	for _, hdr := range got {
		require.Empty(t, hdr.Values("Authorization"), "the access token reached the internal server: %v", hdr)
		require.Empty(t, hdr.Values("X-Mcptun-Client"))
		require.Equal(t, "yes", hdr.Get("X-Internal"), "the agent's own headers are set")
	}

	// The agent knows this client as oauth:alice: its session is not the
	// token client ci's, nor is ci's session open to a token whose subject
	// is "ci".
	tr := c.GetTransport().(*transport.StreamableHTTP)
	sid := tr.GetSessionId()
	require.NotEmpty(t, sid)
	ping := `{"jsonrpc":"2.0","id":7,"method":"ping"}`
	require.Equal(t, http.StatusNotFound, rawPost(t, endpoint, clientToken, sid, ping).StatusCode, "token client ci used oauth:alice's session")
	initBody := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
	r := rawPost(t, endpoint, clientToken, "", initBody)
	require.Equal(t, http.StatusOK, r.StatusCode, r.Body)
	ciSID := r.Header.Get("Mcp-Session-Id")
	asCI := as.sign(t, as.claims("ci", endpoint))
	require.Equal(t, http.StatusNotFound, rawPost(t, endpoint, asCI, ciSID, ping).StatusCode, "a JWT with sub ci used token client ci's session")
	require.Equal(t, http.StatusOK, rawPost(t, endpoint, clientToken, ciSID, ping).StatusCode)
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// TestOAuthRefusals: through the real relay, each bad token is refused
// with RFC 6750's error in WWW-Authenticate and the endpoint's
// resource_metadata, and never reaches the agent's server.
func TestOAuthRefusals(t *testing.T) {
	as := newTestAS(t)
	d, hr := oauthDeployment(t, as)
	endpoint := d.relayURL + "/dc1/wiki/mcp"
	meta := `resource_metadata="` + d.relayURL + `/.well-known/oauth-protected-resource/dc1/wiki/mcp"`
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	with := func(k string, v any) map[string]any {
		c := as.claims("alice", endpoint)
		c[k] = v
		return c
	}
	none := func() string {
		h, _ := json.Marshal(map[string]string{"alg": "none", "typ": "JWT", "kid": "as1"})
		c, _ := json.Marshal(as.claims("alice", endpoint))
		return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c) + "."
	}
	init := `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`
	for _, tc := range []struct {
		name, token string
		status      int
		reason      string
		challenge   []string
	}{
		{"valid", as.sign(t, as.claims("alice", endpoint)), 200, "", nil},
		{"bad signature", signWith(t, other, "as1", jose.ES256, as.claims("alice", endpoint)), 401, "invalid_token",
			[]string{`error="invalid_token"`, `error_description="bad signature"`, meta}},
		{"expired", as.sign(t, with("exp", time.Now().Add(-time.Hour).Unix())), 401, "invalid_token",
			[]string{`error="invalid_token"`, `error_description="expired"`, meta}},
		{"wrong issuer", as.sign(t, with("iss", "https://other-idp.test")), 401, "invalid_token",
			[]string{`error="invalid_token"`, `error_description="wrong issuer"`, meta}},
		{"wrong audience", as.sign(t, with("aud", d.relayURL+"/dc1/notes/mcp")), 401, "invalid_token",
			[]string{`error="invalid_token"`, `error_description="audience is not ` + endpoint + `"`, meta}},
		{"missing scope", as.sign(t, with("scope", "openid")), 403, "insufficient_scope",
			[]string{`error="insufficient_scope"`, `scope="mcp:tools"`, meta}},
		{"alg none", none(), 401, "invalid_token", []string{`error="invalid_token"`, meta}},
		{"no token", "", 401, "unauthorized", []string{`scope="mcp:tools"`, meta}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(hr.headers())
			r := rawPost(t, endpoint, tc.token, "", init)
			require.Equal(t, tc.status, r.StatusCode, r.Body)
			if tc.status == 200 {
				require.Greater(t, len(hr.headers()), before)
				return
			}
			var eb struct {
				Error struct{ Data struct{ Reason string } }
			}
			require.NoError(t, json.Unmarshal([]byte(r.Body), &eb), r.Body)
			require.Equal(t, tc.reason, eb.Error.Data.Reason)
			for _, c := range tc.challenge {
				require.Contains(t, r.Header.Get("WWW-Authenticate"), c)
			}
			require.Len(t, hr.headers(), before, "a refused request reached the server")
		})
	}
	// The metadata as published.
	resp, err := http.Get(d.relayURL + "/.well-known/oauth-protected-resource/dc1/wiki/mcp")
	require.NoError(t, err)
	defer resp.Body.Close()
	var doc map[string]any
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&doc))
	require.Equal(t, map[string]any{
		"resource":                 endpoint,
		"authorization_servers":    []any{as.srv.URL},
		"scopes_supported":         []any{"mcp:tools"},
		"bearer_methods_supported": []any{"header"},
		"resource_name":            "mcptun dc1/wiki",
	}, doc)
	// The relay fetched the keys from the authorization server.
	require.Contains(t, as.seen(), "GET /jwks")
}

// tsOAuthClient is a Node script: the official TypeScript SDK's client
// with its ClientCredentialsProvider connects to argv[3] and calls the
// echo tool. The SDK does the OAuth discovery itself, on the 401.
const tsOAuthClient = `
const [sdk, url, id, secret, issuer] = process.argv.slice(2);
const { Client } = await import(sdk + "/dist/esm/client/index.js");
const { StreamableHTTPClientTransport } = await import(sdk + "/dist/esm/client/streamableHttp.js");
const { ClientCredentialsProvider } = await import(sdk + "/dist/esm/client/auth-extensions.js");
const seen = [];
const fetchLogged = (input, init) => { seen.push((init?.method || "GET") + " " + String(input)); return fetch(input, init); };
const authProvider = new ClientCredentialsProvider({ clientId: id, clientSecret: secret, scope: "mcp:tools", expectedIssuer: issuer });
const transport = new StreamableHTTPClientTransport(new URL(url), { authProvider, fetch: fetchLogged });
const client = new Client({ name: "ts-oauth", version: "1" });
await client.connect(transport);
const res = await client.callTool({ name: "echo", arguments: { text: "hello from the TypeScript SDK" } });
await client.close();
console.log(JSON.stringify({ seen, text: res.content.map((c) => c.text).join("") }));
`

// TestOAuthDiscoveryTypeScriptSDK: the official TypeScript SDK's client,
// with no token at first, follows the relay's 401 to its metadata and the
// authorization server's, gets a token with client_credentials for the
// endpoint as resource, and calls a tool through the tunnel.
func TestOAuthDiscoveryTypeScriptSDK(t *testing.T) {
	node, err := conformance.FindNode()
	if err != nil {
		requireToolsOrSkip(t, err)
	}
	ejs, err := conformance.FindEverythingJS()
	if err != nil {
		requireToolsOrSkip(t, err)
	}
	// The SDK as installed beside server-everything (.ci/install-tools.sh).
	sdk := filepath.Join(filepath.Dir(ejs), "..", "..", "sdk")
	if _, err := os.Stat(filepath.Join(sdk, "dist", "esm", "client", "auth-extensions.js")); err != nil {
		requireToolsOrSkip(t, err)
	}
	as := newTestAS(t)
	d, hr := oauthDeployment(t, as)
	endpoint := d.relayURL + "/dc1/wiki/mcp"
	script := filepath.Join(t.TempDir(), "client.mjs")
	require.NoError(t, os.WriteFile(script, []byte(tsOAuthClient), 0o600))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, script, "file://"+sdk, endpoint, asClientID, asClientSecret, as.srv.URL).CombinedOutput()
	require.NoError(t, err, "%s", out)
	var res struct {
		Seen []string
		Text string
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	require.NoError(t, json.Unmarshal([]byte(lines[len(lines)-1]), &res), "%s", out)
	require.Equal(t, "hello from the TypeScript SDK", res.Text)
	// The SDK's own requests, in order: the MCP POST refused, the relay's
	// metadata named in the 401, the authorization server's metadata,
	// the token, then MCP again.
	var oauthSteps []string
	for _, s := range res.Seen {
		if strings.Contains(s, "/.well-known/") || strings.Contains(s, "/token") {
			oauthSteps = append(oauthSteps, s)
		}
	}
	require.Equal(t, []string{
		"GET " + d.relayURL + "/.well-known/oauth-protected-resource/dc1/wiki/mcp",
		"GET " + as.srv.URL + "/.well-known/oauth-authorization-server",
		"POST " + as.srv.URL + "/token",
	}, oauthSteps, "all the SDK fetched: %v", res.Seen)
	require.Equal(t, "POST "+endpoint, res.Seen[0], "it first tried without a token")
	as.mu.Lock()
	require.Equal(t, []string{endpoint}, as.resource)
	as.mu.Unlock()
	for _, hdr := range hr.headers() {
		require.Empty(t, hdr.Values("Authorization"), "the access token reached the internal server")
	}
}

// requireToolsOrSkip skips a test whose npm tools are missing, or fails
// it where CI requires them.
func requireToolsOrSkip(t *testing.T, err error) {
	t.Helper()
	if os.Getenv(conformance.EnvRequireTools) == "1" {
		t.Fatalf("%s=1 but: %v", conformance.EnvRequireTools, err)
	}
	t.Skipf("skipping: %v", err)
}
