package tunnel

import "testing"

// TestResolveClientURL: a relay listening on all addresses advertises no
// usable host; the agent puts in the host it dialed.
func TestResolveClientURL(t *testing.T) {
	for _, tc := range []struct{ raw, dialed, want string }{
		{"http://[::]:8443", "relay.example.com:7443", "http://relay.example.com:8443"},
		{"https://0.0.0.0:8443", "10.0.0.5:7443", "https://10.0.0.5:8443"},
		{"https://0.0.0.0:8443", "[fd00::1]:7443", "https://[fd00::1]:8443"},
		{"https://mcp.example.com", "relay.example.com:7443", "https://mcp.example.com"},
		{"http://127.0.0.1:8080", "127.0.0.1:7443", "http://127.0.0.1:8080"},
		{"https://", "relay.example.com:7443", "https://relay.example.com"},
	} {
		if got := resolveClientURL(tc.raw, tc.dialed); got != tc.want {
			t.Errorf("resolveClientURL(%q, %q) = %q, want %q", tc.raw, tc.dialed, got, tc.want)
		}
	}
}
