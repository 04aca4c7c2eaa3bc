//go:build unix

package mcpproxy

import (
	"net/http"
	"strings"
	"testing"
)

func TestOriginGuard(t *testing.T) {
	ping := `{"jsonrpc":"2.0","id":1,"method":"ping"}`
	tests := []struct {
		name   string
		opts   Options
		host   string // "" keeps the test server's 127.0.0.1:PORT
		origin string
		status int
	}{
		{name: "no origin", status: 200},
		{name: "loopback origin", origin: "http://localhost:6274", status: 200},
		{name: "loopback ip origin", origin: "http://127.0.0.1:9", status: 200},
		{name: "ipv6 loopback origin", origin: "http://[::1]:9", status: 200},
		{name: "foreign origin", origin: "http://evil.example.com", status: 403},
		{name: "foreign origin, rebinding host", host: "evil.example.com", origin: "http://evil.example.com", status: 403},
		{name: "null origin", origin: "null", status: 403},
		{name: "listed origin", opts: Options{AllowedOrigins: []string{"https://App.Example.com"}}, origin: "https://app.example.com", status: 200},
		{name: "listed origin, other port", opts: Options{AllowedOrigins: []string{"https://app.example.com"}}, origin: "https://app.example.com:8443", status: 403},
		{name: "any origin", opts: Options{AllowedOrigins: []string{"*"}}, origin: "http://evil.example.com", status: 200},
		{name: "hosts: agent name", opts: Options{AllowedHosts: []string{"dc1"}}, host: "dc1", status: 200},
		{name: "hosts: loopback", opts: Options{AllowedHosts: []string{"dc1"}}, status: 200},
		{name: "hosts: rebinding host", opts: Options{AllowedHosts: []string{"dc1"}}, host: "evil.example.com:80", status: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBridge(t, tt.opts)
			sid := b.initialize(t)
			req, err := http.NewRequest(http.MethodPost, b.url, strings.NewReader(ping))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set("Mcp-Session-Id", sid)
			if tt.host != "" {
				req.Host = tt.host
			}
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			resp, err := b.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body)
			}
			if tt.status == 403 && !strings.Contains(body, "not") {
				t.Fatalf("403 body does not say why: %s", body)
			}
		})
	}
}

func TestOriginGuardConfig(t *testing.T) {
	for _, o := range []Options{
		{AllowedOrigins: []string{"app.example.com"}},
		{AllowedOrigins: []string{"https://app.example.com/path"}},
		{AllowedOrigins: []string{"ftp://x"}},
		{AllowedHosts: []string{"dc1:443"}},
		{AllowedHosts: []string{""}},
	} {
		if _, err := NewHandler([]ServerConfig{{Name: "a", URL: "http://127.0.0.1:1/mcp"}}, o); err == nil {
			t.Errorf("NewHandler accepted %+v", o)
		}
	}
}
