package relay

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gatedAgent answers POST /notes/mcp once release is closed (reporting on
// entered when it begins), with "done"; with abort it cuts the exchange
// instead. Other requests are answered at once.
func gatedAgent(entered chan<- struct{}, release <-chan struct{}, abort bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.Method == http.MethodPost && r.URL.Path == "/notes/mcp" {
			entered <- struct{}{}
			<-release
			if abort {
				panic(http.ErrAbortHandler)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"done":true}`)
	})
}

var ciAuth = []string{"Authorization: Bearer ci-token", "Content-Type: application/json"}

// Drain: new exchanges, on an open connection or a new one, POST or GET,
// get 503 relay_draining; the exchange in flight goes on and Wait waits
// for it.
func TestDrainRefusesNewWaitsForInFlight(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	f := newConnFixture(t, gatedAgent(entered, release, false))

	idle := f.dial(t)
	resp, body := idle.do("POST", "/dc1/wiki/mcp", ciAuth, `{}`)
	require.Equal(t, http.StatusOK, resp.StatusCode, "before the drain: %s", body)

	busy := f.dial(t)
	busy.send(busy.request("POST", "/dc1/notes/mcp", ciAuth, `{"slow":true}`))
	<-entered
	// The first exchange leaves the count just after its answer is
	// written, which the client may read first.
	require.Eventually(t, func() bool { return f.h.InFlight() == 1 }, connTimeout, time.Millisecond)

	f.h.Drain()
	require.True(t, f.h.Draining())
	for _, tc := range []struct{ name, method, path string }{
		{"POST on an open connection", "POST", "/dc1/wiki/mcp"},
		{"GET on a new connection", "GET", "/dc1/notes/mcp"},
		{"POST to an unknown server", "POST", "/dc1/nope/mcp"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := idle
			if tc.name != "POST on an open connection" {
				rc = f.dial(t)
			}
			resp, body := rc.do(tc.method, tc.path, ciAuth, `{}`)
			requireErrorBody(t, resp, body, http.StatusServiceUnavailable, "relay_draining")
			require.Equal(t, "5", resp.Header.Get("Retry-After"))
			require.True(t, resp.Close, "Connection: close")
			rc.requireClosed()
		})
	}

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, f.h.Wait(ctx), context.DeadlineExceeded, "Wait returned with an exchange in flight")
	close(release)
	resp, body = busy.read("POST")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.JSONEq(t, `{"done":true}`, string(body), "the exchange in flight got its answer")
	ctx, cancel = context.WithTimeout(context.Background(), connTimeout)
	defer cancel()
	require.NoError(t, f.h.Wait(ctx))
	require.Equal(t, 0, f.h.InFlight())
}

// An agent that drains gets no new exchanges; one of its exchanges that
// fails then reads as its shutdown, and one the relay cuts on closing as
// the relay's.
func TestDrainingAgent(t *testing.T) {
	t.Run("new exchange", func(t *testing.T) {
		f := newConnFixture(t, gatedAgent(nil, nil, false))
		f.agents.setDraining("dc1")
		resp, body := f.dial(t).do("POST", "/dc1/wiki/mcp", ciAuth, `{}`)
		requireErrorBody(t, resp, body, http.StatusServiceUnavailable, "agent_draining")
		require.Equal(t, "5", resp.Header.Get("Retry-After"))
	})
	for _, tc := range []struct {
		name, reason string
		cut          func(f *connFixture)
	}{
		{"agent cuts", "agent_shutdown", func(f *connFixture) { f.agents.setDraining("dc1") }},
		{"relay cuts", "relay_shutdown", func(f *connFixture) { f.h.Close() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			entered, release := make(chan struct{}, 1), make(chan struct{})
			f := newConnFixture(t, gatedAgent(entered, release, true))
			rc := f.dial(t)
			rc.send(rc.request("POST", "/dc1/notes/mcp", ciAuth, `{}`))
			<-entered
			tc.cut(f)
			close(release)
			resp, body := rc.read("POST")
			requireErrorBody(t, resp, body, http.StatusServiceUnavailable, tc.reason)
		})
	}
}
