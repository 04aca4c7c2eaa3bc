package relay

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/stretchr/testify/assert"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pipeAgents serves each "agent" with a real http.Server over in-memory
// connections, standing in for the tunnel (which has its own tests and the
// end-to-end tests in cmd/mcptun).
type pipeAgents struct {
	mu       sync.Mutex
	servers  map[string][]string
	draining map[string]bool // agents that said they drain
	ln       *pipeListener
}

func (p *pipeAgents) AgentDraining(agent string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.draining[agent]
}

func (p *pipeAgents) setDraining(agent string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.draining == nil {
		p.draining = make(map[string]bool)
	}
	p.draining[agent] = true
}

func (p *pipeAgents) Offers(agent, server string) (bool, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.servers[agent]
	if !ok {
		return false, false
	}
	for _, name := range s {
		if name == server {
			return true, true
		}
	}
	return true, false
}

func (p *pipeAgents) Dial(ctx context.Context, agent string) (net.Conn, error) {
	if online, _ := p.Offers(agent, ""); !online {
		return nil, errors.New("offline")
	}
	c1, c2 := net.Pipe()
	select {
	case p.ln.ch <- c2:
		return c1, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type pipeListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}
func (l *pipeListener) Close() error   { l.once.Do(func() { close(l.done) }); return nil }
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }

func hash(s string) [32]byte { return sha256.Sum256([]byte(s)) }

type fixture struct {
	url    string
	agents *pipeAgents
}

// newFixture serves a Handler the way the relay binary serves clients (the
// fast path first, net/http for what it hands over), in front of an agent
// served by agentHandler; see newConnFixture.
func newFixture(t *testing.T, agentHandler http.Handler) *fixture {
	t.Helper()
	f := newConnFixture(t, agentHandler)
	return &fixture{url: f.url, agents: f.agents}
}

func do(t *testing.T, method, url, token string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`))
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, body
}

func TestRefusals(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"client":%q,"auth":%q,"cookie":%q}`,
			r.URL.Path, r.Header.Get(ClientHeader), r.Header.Get("Authorization"), r.Header.Get("Cookie"))
	}))
	tests := []struct {
		name, path, token string
		hdr               map[string]string
		status            int
		reason            string
	}{
		{"missing token", "/dc1/notes/mcp", "", nil, 401, "unauthorized"},
		{"wrong token", "/dc1/notes/mcp", "nope", nil, 401, "unauthorized"},
		{"out of scope", "/dc1/notes/mcp", "wiki-token", nil, 403, "forbidden"},
		{"foreign origin", "/dc1/notes/mcp", "ci-token", map[string]string{"Origin": "http://evil.example.com"}, 403, "origin_not_allowed"},
		{"rebinding origin", "/dc1/notes/mcp", "ci-token", map[string]string{"Origin": "http://evil.example.com", "Host": "evil.example.com"}, 403, "origin_not_allowed"},
		{"unknown agent", "/nope/notes/mcp", "wiki-token", nil, 403, "forbidden"},
		{"unknown agent in scope", "/nope/wiki/mcp", "wiki-token", nil, 404, "unknown_agent"},
		{"unknown server", "/dc1/files/mcp", "ci-token", nil, 404, "unknown_server"},
		{"offline agent", "/dc2/notes/mcp", "ci-token", nil, 503, "agent_offline"},
		{"no endpoint", "/dc1/notes", "ci-token", nil, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, http.MethodPost, f.url+tt.path, tt.token, tt.hdr)
			require.Equal(t, tt.status, resp.StatusCode, "body: %s", body)
			var eb errorBody
			require.NoError(t, json.Unmarshal(body, &eb), "body is JSON: %s", body)
			require.Equal(t, tt.reason, eb.Error.Data.Reason)
			require.NotEmpty(t, eb.Error.Message)
			if tt.status == 401 {
				require.Contains(t, resp.Header.Get("WWW-Authenticate"), "Bearer")
			}
		})
	}
}

// A client over its rate limit gets 429 with Retry-After, on the fast
// path and on net/http's alike, and one limiter counts both: an exchange
// the fast path hands over is admitted (and counted) once. Refusals for
// other reasons take no token, and other clients are not slowed.
func TestRateLimit(t *testing.T) {
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	}))
	// Every request on a connection of its own: a connection the fast
	// path handed over stays with net/http.
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	send := func(method, token string, body io.Reader, hdr map[string]string) (*http.Response, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, f.url+"/dc1/notes/mcp", body)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := tr.RoundTrip(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp, b
	}
	ping := func() io.Reader { return strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`) }

	// Refused for its Origin: no token taken.
	resp, body := send(http.MethodPost, "slow-token", ping(), map[string]string{"Origin": "http://evil.example.com"})
	require.Equal(t, http.StatusForbidden, resp.StatusCode, "body: %s", body)

	handoffs := f.handoffs.Load()
	resp, body = send(http.MethodPost, "slow-token", ping(), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "body: %s", body)
	require.Equal(t, handoffs, f.handoffs.Load(), "served on the fast path")
	// A body of unknown length goes chunked, which is net/http's: the
	// burst's second token is taken there.
	resp, body = send(http.MethodPost, "slow-token", io.MultiReader(ping()), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "body: %s", body)
	require.Equal(t, handoffs+1, f.handoffs.Load(), "served by net/http")

	for _, method := range []string{http.MethodPost, http.MethodGet, http.MethodDelete} {
		resp, body = send(method, "slow-token", ping(), nil)
		require.Equal(t, http.StatusTooManyRequests, resp.StatusCode, "%s: body: %s", method, body)
		var eb errorBody
		require.NoError(t, json.Unmarshal(body, &eb), "body is JSON: %s", body)
		assert.Equal(t, "rate_limited", eb.Error.Data.Reason)
		assert.Contains(t, eb.Error.Message, `client "throttled"`)
		assert.Contains(t, eb.Error.Message, "0.001 requests/s (burst 2)")
		retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		require.NoError(t, err, "Retry-After %q", resp.Header.Get("Retry-After"))
		assert.InDelta(t, 1000, retry, 2, "a token per 1,000 s")
	}
	resp, body = send(http.MethodPost, "ci-token", ping(), nil)
	require.Equal(t, http.StatusOK, resp.StatusCode, "another client is not limited; body: %s", body)
}

func TestForward(t *testing.T) {
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"client":%q,"auth":%q,"cookie":%q}`,
			r.URL.Path, r.Header.Get(ClientHeader), r.Header.Get("Authorization"), r.Header.Get("Cookie"))
	}))
	for _, tc := range []struct {
		token, path, client string
		hdr                 map[string]string
	}{
		{"ci-token", "/dc1/notes/mcp", "ci", map[string]string{"Cookie": "a=b", ClientHeader: "forged"}},
		{"wiki-token", "/dc1/wiki/mcp", "wikionly", map[string]string{"Origin": "https://app.example.com"}},
		{"ci-token", "/dc1/wiki/mcp", "ci", map[string]string{"Origin": "http://localhost:6274"}},
	} {
		resp, body := do(t, http.MethodPost, f.url+tc.path, tc.token, tc.hdr)
		require.Equal(t, 200, resp.StatusCode, "body: %s", body)
		var got map[string]string
		require.NoError(t, json.Unmarshal(body, &got))
		require.Equal(t, strings.TrimPrefix(tc.path, "/dc1"), got["path"])
		require.Equal(t, tc.client, got["client"], "client header is set by the relay, not the client")
		require.Empty(t, got["auth"], "client credentials never reach the agent")
		require.Empty(t, got["cookie"])
	}
}

// TestSSEStreamsEventByEvent checks that each event reaches the client
// before the agent writes the next one.
func TestSSEStreamsEventByEvent(t *testing.T) {
	next := make(chan struct{})
	f := newFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "id: %d\ndata: {\"n\":%d}\n\n", i, i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-r.Context().Done():
				return
			}
		}
	}))
	req, _ := http.NewRequest(http.MethodPost, f.url+"/dc1/notes/mcp", strings.NewReader("{}"))
	req.Header.Set("Authorization", "Bearer ci-token")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		for {
			line, err := br.ReadString('\n')
			require.NoError(t, err)
			if strings.HasPrefix(line, "data:") {
				require.Equal(t, fmt.Sprintf("data: {\"n\":%d}\n", i), line)
				break
			}
		}
		next <- struct{}{} // the agent writes the next event only now
	}
}

// BenchmarkAdmit measures the admission of one exchange (token hash and
// compare, scope, agent lookup), with and without a rate limit.
// Run: go test -run '^$' -bench Admit ./relay
func BenchmarkAdmit(b *testing.B) {
	for _, tc := range []struct {
		name string
		rate float64
	}{{"unlimited", 0}, {"rate-limited", 1e9}} {
		b.Run(tc.name, func(b *testing.B) {
			h, err := NewHandler(Config{
				Agents:      &pipeAgents{servers: map[string][]string{"dc1": {"notes"}}},
				KnownAgents: []string{"dc1"},
				Clients:     []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/*"}, Rate: tc.rate, Burst: 1 << 30}},
			})
			require.NoError(b, err)
			b.ReportAllocs()
			for b.Loop() {
				if _, ref := h.admit(netip.MustParseAddr("127.0.0.1"), "", "Bearer ci-token", "relay", "dc1", "notes", ""); ref != nil {
					b.Fatal(ref.msg)
				}
			}
		})
	}
}
