package httpfwd

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFastPathInspect: an exchange's Inspect sees the whole body before
// it goes out; the exchange it returns answers with that body and the
// upstream sees nothing, nil forwards it; the connection carries the next
// exchange either way.
func TestFastPathInspect(t *testing.T) {
	var upstream atomic.Int32
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		upstream.Add(1)
		_, _ = io.WriteString(w, "upstream got "+string(b))
	}))
	t.Cleanup(up.Close)
	addr := up.Listener.Addr().String()
	fwd := New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, Options{})
	t.Cleanup(fwd.Close)
	inspect := func(_ *Head, body []byte) *Exchange {
		if string(body) != "refuse me" {
			return nil
		}
		return &Exchange{Serve: func(_ context.Context, w http.ResponseWriter, _ *Head, b []byte) {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write(append([]byte("inspected "), b...))
		}}
	}
	fast := &FastPath{
		IdleTimeout: time.Minute, HeaderTimeout: time.Minute,
		BadRequest: func(reason string) []byte { return []byte(reason) },
		Route: func(h *Head, out []byte) *Exchange {
			m, _, _, _ := h.RequestLine()
			out = append(append(out, m...), " /mcp HTTP/1.1\r\nHost: "+addr+"\r\n"...)
			return &Exchange{Fwd: fwd, Req: RawRequest{Head: out}, Inspect: inspect,
				Failed: func(error) (int, string, []byte) { return http.StatusBadGateway, "", nil }}
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	cs := NewConnServer(fast.ServeConn, ln.Addr())
	served := make(chan struct{})
	go func() { defer close(served); _ = cs.Serve(ln) }()
	t.Cleanup(func() { cs.Close(); <-served })
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	br := bufio.NewReader(c)
	exchange := func(body string) (int, string) {
		_, err := io.WriteString(c, "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n"+body)
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		b, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, string(b)
	}
	for range 2 {
		status, body := exchange("refuse me")
		require.Equal(t, http.StatusForbidden, status)
		require.Equal(t, "inspected refuse me", body)
		status, body = exchange("pass me")
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, "upstream got pass me", body)
	}
	require.Equal(t, int32(2), upstream.Load())
}
