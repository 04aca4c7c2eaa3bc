package admin

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/logging"
)

type fakeSource struct {
	ready    atomic.Bool
	statuses atomic.Int32
}

func (f *fakeSource) Ready() (bool, string) {
	if f.ready.Load() {
		return true, ""
	}
	return false, "no tunnel to a relay is up"
}

func (f *fakeSource) Status() *Status {
	f.statuses.Add(1)
	return &Status{Role: "agent", Name: "dc1", Servers: []ServerStatus{{Name: "notes", Requests: 7}}}
}

func get(t *testing.T, url, auth string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	require.NoError(t, err)
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, string(b)
}

// TestAdminEndpoints: with a token, the data asks for it (and nothing
// else will do), the probes and the page never do; /readyz follows the
// source; /healthz does not consult it.
func TestAdminEndpoints(t *testing.T) {
	src := &fakeSource{}
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "mcptun_test_total", Help: "test"})
	reg.MustRegister(c)
	c.Add(3)
	s, err := Start(Config{Listen: "127.0.0.1:0", Token: "s3cret", Registry: reg, Source: src})
	require.NoError(t, err)
	defer s.Close()
	base := "http://" + s.Addr()

	cases := []struct {
		path, auth string
		want       int
		body       string
	}{
		{"/healthz", "", 200, "ok"},
		{"/readyz", "", 503, "not ready: no tunnel to a relay is up"},
		{"/", "", 200, "<title>mcptun status</title>"},
		{"/metrics", "", 401, "admin token required"},
		{"/metrics", "Bearer wrong", 401, "admin token required"},
		{"/metrics", "Bearer s3cret2", 401, "admin token required"},
		{"/metrics", "Bearer s3cre", 401, "admin token required"},
		{"/metrics", "Basic s3cret", 401, "admin token required"},
		{"/metrics", "Bearer s3cret", 200, "mcptun_test_total 3"},
		{"/metrics", "bearer s3cret", 200, "mcptun_test_total 3"},
		{"/api/status", "", 401, "admin token required"},
		{"/api/status", "Bearer s3cret", 200, `"requests": 7`},
		{"/nope", "Bearer s3cret", 404, ""},
	}
	for _, tc := range cases {
		code, h, body := get(t, base+tc.path, tc.auth)
		require.Equal(t, tc.want, code, "%s %q: %s", tc.path, tc.auth, body)
		require.Contains(t, body, tc.body, tc.path)
		if code == 401 {
			require.Equal(t, `Bearer realm="mcptun admin"`, h.Get("WWW-Authenticate"))
		}
	}
	require.EqualValues(t, 1, src.statuses.Load(), "only the authorised status call reached the source")

	src.ready.Store(true)
	code, _, body := get(t, base+"/readyz", "")
	require.Equal(t, 200, code, body)

	_, h, page := get(t, base+"/", "")
	require.NotContains(t, page, "http://", "self-contained: no CDN")
	require.NotContains(t, page, "https://")
	require.Contains(t, h.Get("Content-Security-Policy"), "default-src 'self'")

	_, _, js := get(t, base+"/api/status", "Bearer s3cret")
	var st Status
	require.NoError(t, json.NewDecoder(strings.NewReader(js)).Decode(&st))
	require.Equal(t, "dc1", st.Name)
}

// TestAdminWithoutToken: a loopback listener without a token serves the
// data to anyone who can reach it.
func TestAdminWithoutToken(t *testing.T) {
	s, err := Start(Config{Listen: "127.0.0.1:0", Registry: prometheus.NewRegistry(), Source: &fakeSource{}})
	require.NoError(t, err)
	defer s.Close()
	code, _, _ := get(t, "http://"+s.Addr()+"/api/status", "")
	require.Equal(t, 200, code)
}

// TestAdminListenError: a listen address in use is an error naming it.
func TestAdminListenError(t *testing.T) {
	s, err := Start(Config{Listen: "127.0.0.1:0", Registry: prometheus.NewRegistry(), Source: &fakeSource{}})
	require.NoError(t, err)
	defer s.Close()
	_, err = Start(Config{Listen: s.Addr(), Registry: prometheus.NewRegistry(), Source: &fakeSource{}})
	require.ErrorContains(t, err, "admin: listen on "+s.Addr())
}

// TestAdminLogLevel: /api/loglevel reads and sets the role's level, only
// with the token; a bad name changes nothing.
func TestAdminLogLevel(t *testing.T) {
	lv := logging.NewLevel(slog.LevelInfo)
	s, err := Start(Config{Listen: "127.0.0.1:0", Token: "s3cret", Registry: prometheus.NewRegistry(), Source: &fakeSource{}, Level: lv})
	require.NoError(t, err)
	defer s.Close()
	url := "http://" + s.Addr() + "/api/loglevel"
	put := func(query, auth string) (int, string) {
		req, err := http.NewRequest(http.MethodPut, url+query, nil)
		require.NoError(t, err)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	code, _, body := get(t, url, "")
	require.Equal(t, 401, code, body)
	code, _, body = get(t, url, "Bearer s3cret")
	require.Equal(t, 200, code, body)
	require.JSONEq(t, `{"level":"info","configured":"info"}`, body)

	code, body = put("?level=debug", "")
	require.Equal(t, 401, code, body)
	require.Equal(t, slog.LevelInfo, lv.Get(), "changed without the token")
	code, body = put("?level=debug", "Bearer s3cret")
	require.Equal(t, 200, code, body)
	require.JSONEq(t, `{"level":"debug","configured":"info"}`, body)
	require.Equal(t, slog.LevelDebug, lv.Get())
	code, body = put("?level=loud", "Bearer s3cret")
	require.Equal(t, 400, code, body)
	require.Contains(t, body, `"loud"`)
	require.Equal(t, slog.LevelDebug, lv.Get())
	code, body = put("?level=reset", "Bearer s3cret")
	require.Equal(t, 200, code, body)
	require.Equal(t, slog.LevelInfo, lv.Get())
}
