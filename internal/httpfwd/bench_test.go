package httpfwd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
)

// BenchmarkForward compares one small JSON exchange made directly, through
// this package (Forward behind net/http's server, and the fast path:
// ForwardRaw on a ConnServer), and through httputil.ReverseProxy (what it
// replaces), all on loopback TCP. Run: go test -run '^$' -bench Forward ./internal/httpfwd
func BenchmarkForward(b *testing.B) {
	const body = `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(b)
	}))
	defer upstream.Close()
	addr := upstream.Listener.Addr().String()
	fwd := New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, Options{})
	defer fwd.Close()
	viaFwd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = fwd.Forward(w, r, Request{Host: addr, RequestURI: "/mcp"})
	}))
	defer viaFwd.Close()
	target, _ := url.Parse(upstream.URL)
	rp := &httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }}
	viaRP := httptest.NewServer(rp)
	defer viaRP.Close()

	// The fast path relay and agent use: heads read in wire form, the
	// exchange passed on with ForwardRaw, no net/http server.
	rawLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	fast := &FastPath{
		IdleTimeout: time.Minute, HeaderTimeout: time.Minute,
		BadRequest: func(reason string) []byte { return []byte(reason) },
		Route: func(h *Head, out []byte) *Exchange {
			out = append(out, "POST /mcp HTTP/1.1\r\nHost: "+addr+"\r\nContent-Type: application/json\r\n"...)
			return &Exchange{Fwd: fwd, Req: RawRequest{Head: out},
				Failed: func(error) (int, string, []byte) { return http.StatusBadGateway, "", nil }}
		},
	}
	raw := NewConnServer(fast.ServeConn, rawLn.Addr())
	go func() { _ = raw.Serve(rawLn) }()
	defer raw.Close()

	// The same with the relay's client limits on: a write deadline per
	// write, a body timeout, the stall watch of a budget.
	limLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	budget := NewStallBudget(32)
	limited := *fast
	limited.BodyTimeout, limited.WriteTimeout, limited.StallAfter = 30*time.Second, 30*time.Second, time.Second
	limited.Route = func(h *Head, out []byte) *Exchange {
		x := fast.Route(h, out)
		x.Stalls = budget
		return x
	}
	lim := NewConnServer(limited.ServeConn, limLn.Addr())
	lim.MaxConns = 10000
	go func() { _ = lim.Serve(limLn) }()
	defer lim.Close()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	for _, tc := range []struct{ name, url string }{
		{"direct", upstream.URL}, {"httpfwd", viaFwd.URL}, {"httpfwd-raw", "http://" + rawLn.Addr().String()},
		{"httpfwd-raw-limits", "http://" + limLn.Addr().String()}, {"reverseproxy", viaRP.URL},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := client.Post(tc.url, "application/json", strings.NewReader(body))
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

// BenchmarkSSEFraming measures re-framing an SSE answer on the fast path:
// 64 events of about 200 bytes, each its own chunk upstream, copied as
// chunks with a flush per event (copyChunked), and the same events
// written by a served handler (responseWriter, a flush per event).
// Run: go test -run '^$' -bench SSEFraming ./internal/httpfwd
func BenchmarkSSEFraming(b *testing.B) {
	event := "id: 1\nevent: message\ndata: " + `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p-1","progress":50,"total":100,"message":"` + strings.Repeat("x", 64) + `"}}` + "\n\n"
	var chunked strings.Builder
	for range 64 {
		fmt.Fprintf(&chunked, "%x\r\n%s\r\n", len(event), event)
	}
	chunked.WriteString("0\r\n\r\n")
	in := chunked.String()
	b.Run("copy-chunked", func(b *testing.B) {
		b.SetBytes(int64(64 * len(event)))
		b.ReportAllocs()
		src := bufio.NewReader(strings.NewReader(in))
		dst := &answerWriter{w: io.Discard}
		for b.Loop() {
			src.Reset(strings.NewReader(in))
			if err := copyChunked(dst, src, nil, time.Time{}, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("served-handler", func(b *testing.B) {
		b.SetBytes(int64(64 * len(event)))
		b.ReportAllocs()
		c := discardConn{}
		ev := []byte(event)
		for b.Loop() {
			w := &responseWriter{c: c}
			w.Header().Set("Content-Type", "text/event-stream")
			for range 64 {
				_, _ = w.Write(ev)
				_ = w.FlushError()
			}
			if err := w.finish(true); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// discardConn is a net.Conn that takes every write.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error)      { return len(p), nil }
func (discardConn) SetWriteDeadline(time.Time) error { return nil }
