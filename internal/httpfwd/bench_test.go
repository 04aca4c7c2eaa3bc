package httpfwd

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
)

// BenchmarkForward compares one small JSON exchange made directly, through
// this package, and through httputil.ReverseProxy (what it replaces), all on
// loopback TCP. Run: go test -run '^$' -bench Forward ./internal/httpfwd
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

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	for _, tc := range []struct{ name, url string }{
		{"direct", upstream.URL}, {"httpfwd", viaFwd.URL}, {"reverseproxy", viaRP.URL},
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
