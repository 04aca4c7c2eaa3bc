package httpfwd

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// failingListener fails its first n Accepts with EMFILE, as a listener
// does while the process is out of descriptors, then accepts for real.
type failingListener struct {
	net.Listener
	fail  atomic.Int32
	calls atomic.Int32
}

func (l *failingListener) Accept() (net.Conn, error) {
	l.calls.Add(1)
	if l.fail.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// echoServe answers every line with itself until the client closes.
func echoServe(_ context.Context, c net.Conn) net.Conn {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return nil
		}
		if _, err := io.WriteString(c, line); err != nil {
			return nil
		}
	}
}

func startConnServer(t *testing.T, ln net.Listener, setup func(*ConnServer)) *ConnServer {
	t.Helper()
	cs := NewConnServer(echoServe, ln.Addr())
	setup(cs)
	done := make(chan error, 1)
	go func() { done <- cs.Serve(ln) }()
	t.Cleanup(func() {
		require.NoError(t, cs.Close())
		select {
		case err := <-done:
			require.ErrorIs(t, err, http.ErrServerClosed)
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return cs
}

func echoOnce(t *testing.T, addr string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, "ping\n")
	require.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "ping\n", line)
}

// TestConnServerSurvivesAcceptErrors: a failed accept (EMFILE) used to
// end Serve, leaving the process up and serving nothing; now it backs off
// and accepts again.
func TestConnServerSurvivesAcceptErrors(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ln := &failingListener{Listener: inner}
	ln.fail.Store(5)
	cs := startConnServer(t, ln, func(*ConnServer) {})
	echoOnce(t, inner.Addr().String())
	require.EqualValues(t, 5, cs.Stats().AcceptErrors.Load())
	require.GreaterOrEqual(t, ln.calls.Load(), int32(6))
}

// TestConnServerMaxConns: connections over MaxConns get the Busy answer
// and are counted; once one closes, a new one is served.
func TestConnServerMaxConns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	busy := "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
	cs := startConnServer(t, ln, func(cs *ConnServer) {
		cs.MaxConns = 2
		cs.Busy = []byte(busy)
	})
	addr := ln.Addr().String()
	var held []net.Conn
	for range 2 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		held = append(held, c)
	}
	require.Eventually(t, func() bool { return cs.Open() == 2 }, 10*time.Second, 5*time.Millisecond)
	for i := range 3 {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		b, err := io.ReadAll(c)
		require.NoError(t, err, "refused connection %d", i)
		require.Equal(t, busy, string(b))
		c.Close()
	}
	require.EqualValues(t, 3, cs.Stats().Refused.Load())
	require.EqualValues(t, 2, cs.Open())

	held[0].Close()
	require.Eventually(t, func() bool { return cs.Open() == 1 }, 10*time.Second, 5*time.Millisecond)
	echoOnce(t, addr)
	require.EqualValues(t, 3, cs.Stats().Refused.Load())
}
