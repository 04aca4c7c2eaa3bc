//go:build unix

package mcpproxy

import (
	"net/http"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// statsOfServer returns the snapshot of one server.
func statsOfServer(t *testing.T, h *Handler, name string) ServerStats {
	t.Helper()
	for _, s := range h.Stats() {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no server %q in Stats", name)
	return ServerStats{}
}

// TestStatsStdio: requests, sessions and children count what runs; a
// child killed from outside is the server's last error, a session the
// client ends is not.
func TestStatsStdio(t *testing.T) {
	b := newBridge(t, Options{})
	st := statsOfServer(t, b.h, "ts")
	require.Equal(t, ServerStats{Name: "ts", Kind: "stdio"}, st)

	sid := b.initialize(t)
	st = statsOfServer(t, b.h, "ts")
	require.Equal(t, 1, st.Sessions)
	require.Equal(t, 1, st.Children)
	require.GreaterOrEqual(t, st.Requests, uint64(2), "initialize and initialized")

	// A session the client ends: no error.
	code, _ := b.status(t, http.MethodDelete, sid, "")
	require.Equal(t, http.StatusNoContent, code)
	eventually(t, 5*time.Second, "the child is gone", func() bool { return statsOfServer(t, b.h, "ts").Children == 0 })
	require.Empty(t, statsOfServer(t, b.h, "ts").LastError)

	// A child that dies: the last error, counted.
	sid = b.initialize(t)
	pid := b.pidOf(t, sid, "pid")
	require.NoError(t, syscall.Kill(pid, syscall.SIGKILL))
	eventually(t, 5*time.Second, "the death is recorded", func() bool { return statsOfServer(t, b.h, "ts").UpstreamErrors == 1 })
	st = statsOfServer(t, b.h, "ts")
	require.Contains(t, st.LastError, "server process ended on its own")
	require.Equal(t, 0, st.Sessions)
}

// TestStatsURLServer: an unreachable url server's failures count, with
// the last one's message.
func TestStatsURLServer(t *testing.T) {
	h, err := NewHandler([]ServerConfig{{Name: "down", URL: "http://127.0.0.1:1/mcp"}}, Options{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = h.Close() })
	srv := serveLikeAgent(t, h)
	for range 2 {
		resp, err := srv.Client().Post(srv.URL+"/down/mcp", "application/json", nil)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusBadGateway, resp.StatusCode)
	}
	st := statsOfServer(t, h, "down")
	require.Equal(t, "http", st.Kind)
	require.EqualValues(t, 2, st.Requests)
	require.EqualValues(t, 2, st.UpstreamErrors)
	require.NotEmpty(t, st.LastError)
}

// TestLimitReasons: LimitReasons spells the limits' reasons as they do.
func TestLimitReasons(t *testing.T) {
	require.Equal(t, [...]string{reasonRateLimited, reasonSessionLimit, reasonClientSessionLimit,
		reasonConcurrencyLimit, reasonClientConcurrencyLimit}, LimitReasons)
}

// TestStatsRefusals: a server's rate limit refusals count, on both paths.
func TestStatsRefusals(t *testing.T) {
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: "http://127.0.0.1:1/mcp", Rate: 0.001, Burst: 1})
	for range 3 {
		resp, err := b.srv.Client().Post(b.srv.URL+"/up/mcp", "application/json", nil)
		require.NoError(t, err)
		resp.Body.Close()
	}
	st := statsOfServer(t, b.h, "up")
	require.Equal(t, map[string]uint64{reasonRateLimited: 2}, st.Refusals)
}

// TestStatsLimitRefusals: a stdio server's own limits count by reason.
func TestStatsLimitRefusals(t *testing.T) {
	b := newBridgeLimits(t, Options{}, Limits{Sessions: 1})
	b.initializeAs(t, "alice")
	resp := b.do(t, http.MethodPost, "", initBody, as("bob")...)
	body := readBody(t, resp)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode, body)
	require.Equal(t, map[string]uint64{reasonSessionLimit: 1}, statsOfServer(t, b.h, "ts").Refusals)
}
