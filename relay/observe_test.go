package relay

import (
	"net/http"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestMCPMethodLabel: the method label comes from a bounded set whatever
// the client sends.
func TestMCPMethodLabel(t *testing.T) {
	cases := []struct {
		http, body, want string
	}{
		{http.MethodGet, "", "stream"},
		{http.MethodDelete, "", "delete"},
		{http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`, "tools/call"},
		{http.MethodPost, ` {"method" : "initialize","id":1}`, "initialize"},
		{http.MethodPost, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, "notification"},
		{http.MethodPost, `{"jsonrpc":"2.0","id":1,"result":{}}`, "response"},
		{http.MethodPost, `[{"jsonrpc":"2.0","id":1,"method":"ping"}]`, "batch"},
		{http.MethodPost, `{"jsonrpc":"2.0","id":1,"method":"x-made-up/` + string(make([]byte, 100)) + `"}`, "other"},
		{http.MethodPost, `{"method":42}`, "other"},
		{http.MethodPost, `{"method":"unterminated`, "other"},
		{http.MethodPost, ``, "unknown"},
	}
	for _, tc := range cases {
		got := mcpMethod(tc.http, []byte(tc.body))
		require.Equal(t, tc.want, got, "%s %q", tc.http, tc.body)
		require.True(t, slices.Contains(MCPMethods, got), "%q is not in MCPMethods", got)
	}
}
