package httpfwd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcptun/mcptun/internal/devcert"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// countingConn counts the read deadlines set on a connection.
type countingConn struct {
	net.Conn
	deadlines *atomic.Int32
}

func (c countingConn) SetReadDeadline(t time.Time) error {
	c.deadlines.Add(1)
	return c.Conn.SetReadDeadline(t)
}

// SyscallConn passes the socket on, so the fast path can watch it with its
// hupWatcher.
func (c countingConn) SyscallConn() (syscall.RawConn, error) {
	sc, ok := c.Conn.(syscall.Conn)
	if !ok {
		return nil, errors.New("not a socket")
	}
	return sc.SyscallConn()
}

type countingListener struct {
	net.Listener
	deadlines atomic.Int32
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return countingConn{c, &l.deadlines}, nil
}

// fastRig is a client connection → FastPath on a ConnServer → Forwarder →
// upstream, all real TCP on loopback.
type fastRig struct {
	cs   *ConnServer
	ln   *countingListener
	conn net.Conn
	br   *bufio.Reader
}

func newFastRig(t *testing.T, upstream http.Handler, idle time.Duration) *fastRig {
	t.Helper()
	return newFastRigTLS(t, upstream, idle, nil)
}

// newFastRigTLS is newFastRig with the client speaking TLS to the fast
// path (as to a relay with http.cert_file) when cert is set.
func newFastRigTLS(t *testing.T, upstream http.Handler, idle time.Duration, cert *tls.Certificate) *fastRig {
	t.Helper()
	up := httptest.NewServer(upstream)
	t.Cleanup(up.Close)
	addr := up.Listener.Addr().String()
	fwd := New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, Options{})
	t.Cleanup(fwd.Close)
	fast := &FastPath{
		IdleTimeout: idle, HeaderTimeout: time.Minute,
		BadRequest: func(reason string) []byte { return []byte(reason) },
		Route: func(h *Head, out []byte) *Exchange {
			m, _, _, _ := h.RequestLine()
			out = append(append(out, m...), " /mcp HTTP/1.1\r\nHost: "+addr+"\r\n"...)
			return &Exchange{Fwd: fwd, Req: RawRequest{Head: out},
				Failed: func(error) (int, string, []byte) { return http.StatusBadGateway, "", nil }}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	r := &fastRig{ln: &countingListener{Listener: ln}}
	cs := NewConnServer(fast.ServeConn, ln.Addr())
	r.cs = cs
	served := make(chan struct{})
	var serveLn net.Listener = r.ln
	if cert != nil {
		serveLn = tls.NewListener(r.ln, &tls.Config{Certificates: []tls.Certificate{*cert}})
	}
	go func() { defer close(served); _ = cs.Serve(serveLn) }()
	t.Cleanup(func() { cs.Close(); <-served })
	if cert != nil {
		r.conn, err = tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	} else {
		r.conn, err = net.Dial("tcp", ln.Addr().String())
	}
	require.NoError(t, err)
	t.Cleanup(func() { r.conn.Close() })
	r.br = bufio.NewReader(r.conn)
	return r
}

func (r *fastRig) answer(t *testing.T) (*http.Response, string) {
	t.Helper()
	require.NoError(t, r.conn.SetReadDeadline(time.Now().Add(10*time.Second)))
	resp, err := http.ReadResponse(r.br, nil)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	resp.Body.Close()
	return resp, string(b)
}

func echoUpstream(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(b)
}

// An exchange whose head and body arrive whole costs one read deadline (the
// idle wait's), not one per phase.
func TestFastPathOneDeadlinePerExchange(t *testing.T) {
	r := newFastRig(t, http.HandlerFunc(echoUpstream), time.Minute)
	const n = 5
	for i := range n {
		body := fmt.Sprintf(`{"i":%d}`, i)
		_, err := fmt.Fprintf(r.conn, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		require.NoError(t, err)
		resp, got := r.answer(t)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, body, got)
	}
	// n exchanges, and perhaps the wait for the next head.
	assert.LessOrEqual(t, r.ln.deadlines.Load(), int32(n+1))
}

// The idle deadline left in place after a whole head must not cut a body
// that arrives later than it.
func TestFastPathSlowBodyOutlivesIdleTimeout(t *testing.T) {
	const idle = 100 * time.Millisecond
	r := newFastRig(t, http.HandlerFunc(echoUpstream), idle)
	_, err := io.WriteString(r.conn, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n01234")
	require.NoError(t, err)
	time.Sleep(3 * idle) // the point: the idle timeout passes mid-body
	_, err = io.WriteString(r.conn, "56789")
	require.NoError(t, err)
	resp, got := r.answer(t)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "0123456789", got)
}

// An exchange that outlasts the idle timeout is still watched: the client
// leaving ends the upstream request.
func TestFastPathWatchOutlivesIdleTimeout(t *testing.T) {
	t.Run("tcp", func(t *testing.T) { testWatchOutlivesIdleTimeout(t, nil) })
	// A TLS client's socket is watched under its TLS layer: its
	// close_notify and FIN wake the watch, whose read sees the end.
	t.Run("tls", func(t *testing.T) {
		cert, _, err := devcert.Certificate("127.0.0.1")
		require.NoError(t, err)
		testWatchOutlivesIdleTimeout(t, &cert)
	})
}

func testWatchOutlivesIdleTimeout(t *testing.T, cert *tls.Certificate) {
	const idle = 100 * time.Millisecond
	started, ended := make(chan struct{}), make(chan struct{})
	r := newFastRigTLS(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		close(started)
		select {
		case <-req.Context().Done():
			close(ended)
		case <-time.After(10 * time.Second):
		}
	}), idle, cert)
	sent := time.Now()
	_, err := io.WriteString(r.conn, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}")
	require.NoError(t, err)
	<-started
	line, err := r.br.ReadString('\n')
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(line, "HTTP/1.1 200"), line)
	// The point is time: the exchange outlives the head's idle deadline.
	// Where the hupWatcher runs (Linux), the client's socket must be
	// registered with it by then.
	require.Eventually(t, func() bool {
		n := r.cs.hup.watching()
		return time.Since(sent) > 3*idle && (n < 0 || n == 1)
	}, 5*time.Second, time.Millisecond, "the waiting client's socket is not watched by the hupWatcher")
	require.NoError(t, r.conn.Close())
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the upstream request did not end when the client left")
	}
}

// A watch timer of an earlier exchange that fires late starts the next
// exchange's watch early; that exchange's own timer must then leave the
// watch be. (It once parked the reader a second time: the relay crashed
// with a nil dereference under load, when callbacks ran late.)
func TestStartWatchStaleTimer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server, err := ln.Accept()
	require.NoError(t, err)
	hup := newHupWatcher()
	defer hup.stop()
	cs := newConnState(context.WithValue(context.Background(), hupKey{}, hup), server, time.Minute, time.Minute)
	defer func() {
		server.Close()
		cs.releaseReader()
		cs.close()
	}()

	ctx := cs.beginExchange(nil)
	cs.startWatch() // the late timer of the exchange before
	cs.startWatch() // this exchange's own
	if n := hup.watching(); n >= 0 {
		assert.Equal(t, 1, n, "one registration for one socket")
	}
	assert.False(t, cs.endExchange(), "the client is still there")
	require.NoError(t, ctx.Err())
	if n := hup.watching(); n >= 0 {
		assert.Zero(t, n)
	}

	// The connection goes on, and its next exchange still sees the
	// client leave.
	ctx = cs.beginExchange(nil)
	cs.startWatch()
	cs.startWatch()
	require.NoError(t, client.Close())
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the client's leaving was not seen")
	}
	assert.True(t, cs.endExchange())
}

func TestHeadBuffered(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"GET / HTTP/1.1\r\nHost: h\r\n\r\n", true},
		{"GET / HTTP/1.1\nHost: h\n\n", true},
		{"GET / HTTP/1.1\r\n\r\nbody", true},
		{"GET / HTTP/1.1\r\nHost: h\r\n", false},
		{"GET / HTTP/1.1\r\nHost: h\r\n\r", false},
		{"\r\n\r\n", false}, // empty lines before a request are skipped
		{"\r\n\r\nGET / HTTP/1.1\r\n", false},
		{"\r\n\r\nGET / HTTP/1.1\r\n\r\n", true},
		{"", false},
	} {
		br := bufio.NewReader(strings.NewReader(tc.in))
		_, _ = br.Peek(1)
		assert.Equal(t, tc.want, headBuffered(br), "%q", tc.in)
	}
}

// A request pipelined behind one that lasts arrives while the watch holds
// the connection with its reader given back: the byte the watch read must
// be the first the next head is read from.
func TestFastPathPipelinedDuringWatch(t *testing.T) {
	release := make(chan struct{})
	r := newFastRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			http.Error(w, "method "+req.Method, http.StatusMethodNotAllowed)
			return
		}
		b, _ := io.ReadAll(req.Body)
		if string(b) == "slow" {
			select {
			case <-release:
			case <-time.After(10 * time.Second):
			}
		}
		_, _ = w.Write(b)
	}), time.Minute)
	_, err := io.WriteString(r.conn, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nslow")
	require.NoError(t, err)
	if r.cs.hup.watching() >= 0 {
		// The point: the watch has begun (watchAfter after the head).
		require.Eventually(t, func() bool { return r.cs.hup.watching() == 1 }, 5*time.Second, time.Millisecond,
			"the waiting client's socket is not watched by the hupWatcher")
	} else {
		// Without the hupWatcher the watch is a goroutine nothing can see
		// start; its timer is what is waited for.
		time.Sleep(3 * watchAfter)
	}
	_, err = io.WriteString(r.conn, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nnext")
	require.NoError(t, err)
	if r.cs.hup.watching() >= 0 {
		// The pipelined bytes wake the hupWatcher, which hands the
		// connection to a goroutine that reads the first byte and keeps it.
		require.Eventually(t, func() bool { return r.cs.hup.watching() == 0 }, 5*time.Second, time.Millisecond)
	}
	close(release)
	for _, want := range []string{"slow", "next"} {
		resp, got := r.answer(t)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, want, got)
	}
}

// A GET stream parks (and gives back its request's memory, see
// connState.shed); the exchanges after it on the same connection are read
// and forwarded as before.
func TestFastPathNextExchangeAfterParkedStream(t *testing.T) {
	streams := make(chan chan string, 1)
	r := newFastRig(t, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet {
			echoUpstream(w, req)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for s := range <-streams {
			fmt.Fprint(w, s)
			w.(http.Flusher).Flush()
		}
	}), time.Minute)
	for round := range 3 {
		events := make(chan string)
		streams <- events
		_, err := io.WriteString(r.conn, "GET /x HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n")
		require.NoError(t, err)
		// A GET's reader parks at once; each event wakes it.
		events <- "data: 0\n\n"
		events <- "data: 1\n\n"
		close(events)
		resp, got := r.answer(t)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "data: 0\n\ndata: 1\n\n", got)

		body := fmt.Sprintf(`{"round":%d}`, round)
		_, err = fmt.Fprintf(r.conn, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		require.NoError(t, err)
		resp, got = r.answer(t)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, body, got)
	}
}
