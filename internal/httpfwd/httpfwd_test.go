package httpfwd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rig is upstream ← Forwarder ← front, all real HTTP on loopback.
type rig struct {
	upstream *httptest.Server
	front    *httptest.Server
	fwd      *Forwarder
	dials    atomic.Int32
	lastErr  atomic.Value
}

func newRig(t *testing.T, upstream http.Handler, out Request) *rig {
	t.Helper()
	r := &rig{upstream: httptest.NewServer(upstream)}
	addr := r.upstream.Listener.Addr().String()
	r.fwd = New(func(ctx context.Context) (net.Conn, error) {
		r.dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, Options{})
	r.front = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		o := out
		if o.RequestURI == "" {
			o.RequestURI = req.URL.RequestURI()
		}
		if o.Host == "" {
			o.Host = addr
		}
		if err := r.fwd.Forward(w, req, o); err != nil {
			r.lastErr.Store(err)
			var ue *UpstreamError
			if errors.As(err, &ue) {
				http.Error(w, err.Error(), http.StatusBadGateway)
			}
		}
	}))
	t.Cleanup(func() {
		r.front.Close()
		r.fwd.Close()
		r.upstream.Close()
	})
	return r
}

func TestHeadersAndBody(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		w.Header().Set("X-Seen-Auth", req.Header.Get("Authorization"))
		w.Header().Set("X-Seen-Custom", req.Header.Get("X-Custom"))
		w.Header().Set("X-Seen-Set", req.Header.Get("X-Set"))
		w.Header().Set("X-Seen-Dropme", req.Header.Get("X-Dropme"))
		w.Header().Set("X-Seen-Host", req.Host)
		w.Header().Set("X-Seen-URI", req.RequestURI)
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	}), Request{Host: "internal.example", RequestURI: "/up/mcp?x=1", SetHeader: http.Header{"X-Set": {"v"}}, DelHeader: []string{"Authorization"}})

	req, _ := http.NewRequest(http.MethodPost, r.front.URL+"/in", strings.NewReader(`{"id":9007199254740993}`))
	req.Header.Set("Authorization", "Bearer secret")
	req.Header.Set("X-Custom", "kept")
	req.Header.Set("X-Set", "client-value")
	req.Header.Set("Connection", "X-Dropme")
	req.Header.Set("X-Dropme", "hop")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, `{"id":9007199254740993}`, string(body))
	require.Empty(t, resp.Header.Get("X-Seen-Auth"), "DelHeader drops the client's header")
	require.Equal(t, "kept", resp.Header.Get("X-Seen-Custom"))
	require.Equal(t, "v", resp.Header.Get("X-Seen-Set"), "SetHeader replaces the client's value")
	require.Empty(t, resp.Header.Get("X-Seen-Dropme"), "headers named by Connection are hop-by-hop")
	require.Equal(t, "internal.example", resp.Header.Get("X-Seen-Host"))
	require.Equal(t, "/up/mcp?x=1", resp.Header.Get("X-Seen-URI"))
}

func TestReusesConnections(t *testing.T) {
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		io.Copy(io.Discard, req.Body)
		fmt.Fprint(w, "ok")
	}), Request{})
	for i := 0; i < 20; i++ {
		resp, err := http.Post(r.front.URL, "application/json", strings.NewReader("{}"))
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.Equal(t, "ok", string(b))
	}
	require.Equal(t, int32(1), r.dials.Load(), "sequential exchanges share one pooled connection")
}

// TestRetriesDeadPooledConnection: the upstream closes an idle connection;
// the next exchange must not fail because of it.
func TestRetriesDeadPooledConnection(t *testing.T) {
	var calls atomic.Int32
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, req.Body)
		fmt.Fprint(w, "ok")
	}), Request{})
	post := func() int {
		resp, err := http.Post(r.front.URL, "application/json", strings.NewReader(`{"jsonrpc":"2.0"}`))
		require.NoError(t, err)
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, 200, post())
	r.upstream.CloseClientConnections()
	require.Equal(t, 200, post(), "last error: %v", r.lastErr.Load())
	require.Equal(t, int32(2), calls.Load(), "each request reached the upstream exactly once")
	require.Equal(t, int32(2), r.dials.Load())
}

func TestSSEFlushedEventByEvent(t *testing.T) {
	next := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		// The client sees the head before any event exists.
		select {
		case <-next:
		case <-req.Context().Done():
			return
		}
		for i := 0; i < 3; i++ {
			fmt.Fprintf(w, "data: %d\n\n", i)
			w.(http.Flusher).Flush()
			select {
			case <-next:
			case <-req.Context().Done():
				return
			}
		}
	}), Request{})
	// A bounded wait: without the early flush the head never comes.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.front.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err, "the stream's head arrives before its first event")
	defer resp.Body.Close()
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"), "streams tell buffering proxies not to buffer")
	next <- struct{}{}
	br := bufio.NewReader(resp.Body)
	for i := 0; i < 3; i++ {
		line, err := br.ReadString('\n')
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("data: %d\n", i), line)
		_, _ = br.ReadString('\n')
		next <- struct{}{}
	}
}

// TestClientGoneClosesConnection: a client leaving mid-stream must not
// leave the exchange (or a half-read connection in the pool) behind.
func TestClientGoneClosesConnection(t *testing.T) {
	upstreamDone := make(chan struct{})
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		defer close(upstreamDone)
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-req.Context().Done()
	}), Request{})
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.front.URL, nil)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "data: first\n", line)
	cancel()
	resp.Body.Close()
	<-upstreamDone // the upstream saw its connection close
	r.fwd.mu.Lock()
	idle := len(r.fwd.idle)
	r.fwd.mu.Unlock()
	require.Zero(t, idle, "a half-read connection is never pooled")
}

func TestLargeBodiesBothWays(t *testing.T) {
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<20) // 16 MiB
	r := newRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		got, _ := io.ReadAll(req.Body)
		if !bytes.Equal(got, big) {
			http.Error(w, "body mismatch", 500)
			return
		}
		w.Write(big)
	}), Request{})
	for _, chunked := range []bool{false, true} {
		var body io.Reader = bytes.NewReader(big)
		if chunked {
			body = io.MultiReader(body) // hides the length: sent chunked
		}
		req, _ := http.NewRequest(http.MethodPost, r.front.URL, body)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Equal(t, 200, resp.StatusCode, "chunked=%v: %s", chunked, got[:min(len(got), 100)])
		require.True(t, bytes.Equal(big, got), "chunked=%v: 16 MiB came back intact", chunked)
	}
}

func TestDialError(t *testing.T) {
	f := New(func(ctx context.Context) (net.Conn, error) { return nil, errors.New("agent offline") }, Options{})
	defer f.Close()
	rec := httptest.NewRecorder()
	err := f.Forward(rec, httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}")), Request{Host: "x", RequestURI: "/"})
	var ue *UpstreamError
	require.ErrorAs(t, err, &ue)
	require.Equal(t, "dial", ue.Op)
	require.ErrorContains(t, err, "agent offline")
	require.False(t, rec.Flushed)
	require.Empty(t, rec.Body.String(), "nothing was written: the caller still answers")
}
