//go:build unix

package mcpproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// upstream is a real mcp-go Streamable HTTP server that records the
// headers and URLs it was sent.
type upstream struct {
	srv *httptest.Server
	mu  sync.Mutex
	req []*http.Request
}

func newUpstream(t *testing.T) *upstream {
	t.Helper()
	s := server.NewMCPServer("upstream", "1.0.0", server.WithToolCapabilities(false))
	s.AddTool(mcp.NewTool("echo", mcp.WithString("text")),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(req.GetString("text", "")), nil
		})
	s.AddTool(mcp.NewTool("progress"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			if req.Params.Meta == nil || req.Params.Meta.ProgressToken == nil {
				return mcp.NewToolResultError("no progress token"), nil
			}
			for i := 1; i <= 3; i++ {
				if err := server.ServerFromContext(ctx).SendNotificationToClient(ctx, "notifications/progress",
					map[string]any{"progressToken": req.Params.Meta.ProgressToken, "progress": i, "total": 3}); err != nil {
					return nil, err
				}
			}
			return mcp.NewToolResultText("progress done"), nil
		})
	mcpHandler := server.NewStreamableHTTPServer(s)
	u := &upstream{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.req = append(u.req, r.Clone(context.Background()))
		u.mu.Unlock()
		mcpHandler.ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		u.srv.Close()
		_ = mcpHandler.Shutdown(context.Background())
	})
	return u
}

func (u *upstream) requests() []*http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]*http.Request(nil), u.req...)
}

func TestHTTPUpstream(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up := newUpstream(t)
	b := newBridge(t, Options{}, ServerConfig{
		Name:    "up",
		URL:     up.srv.URL + "/mcp?tenant=a",
		Headers: map[string]string{"Authorization": "Bearer internal", "X-Internal": "1"},
	})
	upURL := b.srv.URL + "/up/mcp"

	// Through the real mcp-go client.
	c := newMCPClient(t, ctx, b, upURL, "")
	if got := toolText(t)(callTool(ctx, c, "echo", map[string]any{"text": "via proxy"}, nil)); got != "via proxy" {
		t.Fatalf("echo: %q", got)
	}
	var mu sync.Mutex
	n := 0
	c.OnNotification(func(nt mcp.JSONRPCNotification) {
		if nt.Method == "notifications/progress" {
			mu.Lock()
			n++
			mu.Unlock()
		}
	})
	if got := toolText(t)(callTool(ctx, c, "progress", nil, "pt")); got != "progress done" {
		t.Fatalf("progress: %q", got)
	}
	mu.Lock()
	if n == 0 {
		t.Error("no progress notification came through the proxy")
	}
	mu.Unlock()

	// Raw: a relay-style request with the client's credential and the
	// relay's client header; the upstream must see neither.
	req, _ := http.NewRequest(http.MethodPost, upURL+"?x=1",
		strings.NewReader(`{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer client-token")
	req.Header.Set("X-Mcptun-Client", "alice")
	req.Header.Set("X-Mcptun-Other", "internal")
	req.Header.Set("Mcp-Protocol-Version", "2026-07-28")
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readBody(t, resp)
	// The upstream's own answer (it wants 2026 _meta) passes through as is.
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "protocolVersion") {
		t.Fatalf("upstream answer not passed through: %d %s", resp.StatusCode, body)
	}
	reqs := up.requests()
	last := reqs[len(reqs)-1]
	if last.URL.Path != "/mcp" || last.URL.RawQuery != "tenant=a&x=1" {
		t.Errorf("upstream URL %s", last.URL)
	}
	if got := last.Header.Get("Authorization"); got != "Bearer internal" {
		t.Errorf("upstream Authorization %q", got)
	}
	if last.Header.Get("X-Internal") != "1" {
		t.Error("configured header missing")
	}
	for _, r := range reqs {
		for k := range r.Header {
			if strings.HasPrefix(strings.ToLower(k), "x-mcptun") {
				t.Errorf("relay header %s reached the upstream", k)
			}
		}
		if r.Header.Get("Authorization") != "Bearer internal" {
			t.Errorf("request %s %s: Authorization %q", r.Method, r.URL, r.Header.Get("Authorization"))
		}
	}

	// Nothing but /up/mcp reaches the upstream.
	before := len(up.requests())
	for _, p := range []string{"/up/other", "/up/mcp/x", "/up/", "/up"} {
		if code, _ := (&bridge{srv: b.srv, url: b.srv.URL + p}).status(t, http.MethodPost, "", `{"jsonrpc":"2.0","id":1,"method":"ping"}`); code != 404 {
			t.Errorf("%s: %d", p, code)
		}
	}
	if len(up.requests()) != before {
		t.Error("a path other than /up/mcp reached the upstream")
	}
}

func TestHTTPUpstreamUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	b := newBridge(t, Options{}, ServerConfig{Name: "down", URL: "http://" + addr + "/mcp"})
	b.url = b.srv.URL + "/down/mcp"
	code, body := b.status(t, http.MethodPost, "", initBody)
	if code != http.StatusBadGateway {
		t.Fatalf("status %d: %s", code, body)
	}
	var e struct {
		Error struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil || !strings.Contains(e.Error.Message, "connection refused") || strings.Contains(body, addr) {
		t.Fatalf("502 body %s (%v)", body, err)
	}
	if b.logs.find("upstream exchange failed", addr) == "" {
		t.Fatal("the failure with its address is not in the agent's log")
	}
}

// TestHTTPUpstreamAnswersBeforeBody: an upstream may start its answer (an
// SSE head) before it has read the request body; the body must still reach
// it whole and the answer the client whole. (With httputil.ReverseProxy,
// net/http's server drained the body under the transport when that head
// was written, and the exchange was cut off mid-stream about one time in
// five in the conformance suite's elicitation scenarios.)
func TestHTTPUpstreamAnswersBeforeBody(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.EnableFullDuplex()
		_ = rc.Flush()
		n, err := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "event: message\ndata: {\"got\":%d,\"err\":%q}\n\n", n, fmt.Sprint(err))
	}))
	t.Cleanup(up.Close)
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.URL + "/mcp"})
	for _, size := range []int{70, 64 << 10, 3 << 20} {
		body := `{"jsonrpc":"2.0","id":1,"method":"x","params":{"pad":"` + strings.Repeat("p", size) + `"}}`
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.srv.URL+"/up/mcp", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := b.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		got := readBody(t, resp)
		cancel()
		if want := fmt.Sprintf(`data: {"got":%d,"err":"<nil>"}`, len(body)); !strings.Contains(got, want) {
			t.Fatalf("%d-byte body: answer %q, want it to contain %q", len(body), got, want)
		}
	}
}
