package relay

import (
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReconfigure: a new client works at once, a removed one gets 401 on
// its next request (also on a kept-alive connection), a client whose
// allow list shrank gets 403, a removed agent name 404, and a client whose
// rate limit is unchanged keeps its spent allowance.
func TestReconfigure(t *testing.T) {
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"jsonrpc":"2.0","id":1,"result":{}}`))
	}))
	url := f.url + "/dc1/notes/mcp"
	status := func(token string) int {
		resp, _ := do(t, "POST", url, token, nil)
		return resp.StatusCode
	}
	require.Equal(t, http.StatusOK, status("ci-token"))
	require.Equal(t, http.StatusUnauthorized, status("new-token"))
	// throttled has a burst of 2 and gets no token back during the test.
	require.Equal(t, http.StatusOK, status("slow-token"))
	require.Equal(t, http.StatusOK, status("slow-token"))
	require.Equal(t, http.StatusTooManyRequests, status("slow-token"))

	require.NoError(t, f.h.Reconfigure([]string{"dc1"}, []Client{
		{Name: "newbie", TokenSHA256: hash("new-token"), Allow: []string{"dc1/notes"}},
		{Name: "wikionly", TokenSHA256: hash("wiki-token"), Allow: []string{"dc1/nothing"}},
		{Name: "throttled", TokenSHA256: hash("slow-token"), Allow: []string{"dc1/*"}, Rate: 0.001, Burst: 2},
	}))
	require.Equal(t, http.StatusOK, status("new-token"), "added client")
	require.Equal(t, http.StatusUnauthorized, status("ci-token"), "removed client")
	require.Equal(t, http.StatusForbidden, status("wiki-token"), "narrowed client")
	require.Equal(t, http.StatusTooManyRequests, status("slow-token"), "unchanged limit refilled by a reload")
	resp, body := do(t, "POST", f.url+"/dc2/notes/mcp", "new-token", nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, string(body))

	// A bad table changes nothing.
	require.Error(t, f.h.Reconfigure([]string{"dc1"}, []Client{{Name: "x", TokenSHA256: hash("x"), Allow: []string{"dc1/*"}, Rate: -1}}))
	require.Equal(t, http.StatusOK, status("new-token"))

	// A changed limit starts afresh.
	require.NoError(t, f.h.Reconfigure([]string{"dc1", "dc2"}, []Client{
		{Name: "throttled", TokenSHA256: hash("slow-token"), Allow: []string{"dc1/*", "dc2/*"}, Rate: 0.001, Burst: 3},
	}))
	require.Equal(t, http.StatusOK, status("slow-token"), "changed limit")
	resp, body = do(t, "POST", f.url+"/dc3/notes/mcp", "slow-token", nil)
	require.Equal(t, http.StatusForbidden, resp.StatusCode, string(body))
	require.NoError(t, f.h.Reconfigure([]string{"dc2"}, []Client{
		{Name: "throttled", TokenSHA256: hash("slow-token"), Allow: []string{"*/*"}, Rate: 0.001, Burst: 3},
	}))
	resp, body = do(t, "POST", url, "slow-token", nil)
	require.Equal(t, http.StatusNotFound, resp.StatusCode, string(body))
	require.Contains(t, string(body), "unknown_agent")
}
