package mcpproxy

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// BenchmarkPeek measures classifying one message without decoding it, as
// the bridge does for every client and child message.
// Run: go test -run '^$' -bench Peek ./mcpproxy
func BenchmarkPeek(b *testing.B) {
	for _, tc := range []struct{ name, msg string }{
		{"tools-call", `{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"},"_meta":{"progressToken":"p-1"}}}`},
		{"response", `{"jsonrpc":"2.0","id":42,"result":{"content":[{"type":"text","text":"hello"}],"isError":false}}`},
		{"progress", `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p-1","progress":50,"total":100}}`},
	} {
		b.Run(tc.name, func(b *testing.B) {
			data := []byte(tc.msg)
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Peek(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStdioBridge measures one tools/call through the stdio bridge to
// a real child process, on one session over one keep-alive connection: as
// the agent serves it (the fast path: the bridge's handler on the
// connection) and behind net/http's server (how it was served before).
// Run: go test -run '^$' -bench StdioBridge ./mcpproxy
func BenchmarkStdioBridge(b *testing.B) {
	for _, pc := range benchPolicies {
		b.Run(pc.name, func(b *testing.B) { benchStdioBridge(b, pc.policy) })
	}
}

func benchStdioBridge(b *testing.B, pol Policy) {
	h, err := NewHandler([]ServerConfig{{Name: "ts", Command: []string{testServerBin}, Policy: pol}}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close() })
	for _, tc := range []struct {
		name  string
		serve func() *httptest.Server
	}{
		{"fast-path", func() *httptest.Server { return serveLikeAgent(b, h) }},
		{"net-http", func() *httptest.Server { return httptest.NewServer(h) }},
	} {
		b.Run(tc.name, func(b *testing.B) {
			srv := tc.serve()
			defer srv.Close()
			client := srv.Client()
			url := srv.URL + "/ts/mcp"
			post := func(sid, body string) (*http.Response, []byte) {
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Accept", "application/json, text/event-stream")
				if sid != "" {
					req.Header.Set("Mcp-Session-Id", sid)
					req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
				}
				resp, err := client.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				out, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode/100 != 2 {
					b.Fatalf("POST %s: %d %s %v", body, resp.StatusCode, out, err)
				}
				return resp, out
			}
			resp, _ := post("", initBody)
			sid := resp.Header.Get("Mcp-Session-Id")
			post(sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
			const call = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
			b.ReportAllocs()
			for b.Loop() {
				if _, out := post(sid, call); !bytes.Contains(out, []byte("hello")) {
					b.Fatalf("answer %s", out)
				}
			}
		})
	}
}

// BenchmarkURLServer measures one POST in a session through the agent to a
// url: server, on the fast path, as the relay sends it (X-Mcptun-Client,
// Mcp-Session-Id), over one keep-alive connection; the upstream answers
// at once, so the agent's part shows.
// Run: go test -run '^$' -bench URLServer ./mcpproxy
func BenchmarkURLServer(b *testing.B) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		if r.Header.Get("Mcp-Session-Id") == "" {
			w.Header().Set("Mcp-Session-Id", "s-1")
		}
		_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"hello"}]}}`)
	}))
	defer up.Close()
	for _, pc := range benchPolicies {
		b.Run(pc.name, func(b *testing.B) { benchURLServer(b, up.URL, pc.policy) })
	}
}

// benchPolicies are the policies the bridge benchmarks run with: none
// (the path every server without a policy takes) and a typical one.
var benchPolicies = []struct {
	name   string
	policy Policy
}{
	{"no-policy", Policy{}},
	{"policy", Policy{Tools: Rules{Allow: []string{"echo", "search_*"}, Deny: []string{"search_admin*"}},
		ToolRates: []ToolRate{{Tool: "search_*", Rate: 100, Burst: 10}}}},
}

func benchURLServer(b *testing.B, upURL string, pol Policy) {
	h, err := NewHandler([]ServerConfig{{Name: "up", URL: upURL + "/mcp", Policy: pol}}, Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = h.Close() })
	srv := serveLikeAgent(b, h)
	client := srv.Client()
	url := srv.URL + "/up/mcp"
	post := func(sid, body string) *http.Response {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		req.Header.Set("X-Mcptun-Client", "ci")
		if sid != "" {
			req.Header.Set("Mcp-Session-Id", sid)
			req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
		}
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("POST: %d", resp.StatusCode)
		}
		return resp
	}
	sid := post("", initBody).Header.Get("Mcp-Session-Id")
	const call = `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`
	b.ReportAllocs()
	for b.Loop() {
		post(sid, call)
	}
}

// BenchmarkURLSessionCheck measures what session ownership adds to an
// exchange in a session on a url: server: the header lookup and the
// table's.
// Run: go test -run '^$' -bench URLSessionCheck ./mcpproxy
func BenchmarkURLSessionCheck(b *testing.B) {
	var head httpfwd.Head
	raw := "POST /up/mcp HTTP/1.1\r\nHost: dc1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\n" +
		"Mcp-Session-Id: 6f1c2a3b4d5e6f708192a3b4c5d6e7f8\r\nMcp-Protocol-Version: 2025-11-25\r\nX-Mcptun-Client: ci\r\nContent-Length: 2\r\n\r\n"
	if err := httpfwd.ReadHead(bufio.NewReader(strings.NewReader(raw)), &head); err != nil {
		b.Fatal(err)
	}
	p := &httpServer{sessions: newURLSessions()}
	p.onSessionAnswer = p.sessionAnswer
	p.sessions.bind("6f1c2a3b4d5e6f708192a3b4c5d6e7f8", "ci", time.Now())
	var req httpfwd.RawRequest
	b.ReportAllocs()
	for b.Loop() {
		if x, handOff := p.checkSession(&head, http.MethodPost, &req); x != nil || handOff {
			b.Fatal("refused")
		}
	}
}
