package tunnel

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"io"
	"sync"
	"testing"
	"time"
)

// BenchmarkStream measures what one HTTP exchange costs the tunnel: open a
// stream to the agent, send a small request, read the answer to EOF. The
// "reused" variant is a ping-pong on one open stream (what pooled streams
// cost). Run: go test -run '^$' -bench Stream ./tunnel
func BenchmarkStream(b *testing.B) {
	for _, tc := range []struct{ name, transport, mux string }{
		{"quic", TransportQUIC, ""},
		{"tcp+yamux", TransportTCP, ""},
		{"quic+yamux", TransportQUIC, MuxYamux},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cert, pin, _ := testCert(b)
			srv, err := Listen(context.Background(), ServerConfig{
				Listen:    "127.0.0.1:0",
				TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}},
				Agents:    []AgentCredential{{Name: testAgent, TokenSHA256: sha256.Sum256([]byte(testToken))}},
			})
			if err != nil {
				b.Fatal(err)
			}
			defer srv.Close()
			tlsCfg, err := ClientTLS("127.0.0.1", "", pin)
			if err != nil {
				b.Fatal(err)
			}
			c, err := NewClient(ClientConfig{Name: testAgent, Address: srv.Addr(), Token: testToken, TLSConfig: tlsCfg,
				Transport: tc.transport, Mux: tc.mux})
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Go(func() { _ = c.Run(ctx) })
			wg.Go(func() { serveEcho(c.Listener(), "") })
			defer func() { cancel(); c.Listener().Close(); wg.Wait() }()
			wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
			defer wcancel()
			if err := c.WaitConnected(wctx); err != nil {
				b.Fatal(err)
			}
			req := make([]byte, 512)
			buf := make([]byte, 4096)

			b.Run("open+exchange", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					st, err := srv.Dial(ctx, testAgent)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := st.Write(req); err != nil {
						b.Fatal(err)
					}
					if err := st.CloseWrite(); err != nil {
						b.Fatal(err)
					}
					if _, err := io.CopyBuffer(io.Discard, st, buf); err != nil {
						b.Fatal(err)
					}
					st.Close()
				}
			})
			b.Run("reused", func(b *testing.B) {
				st, err := srv.Dial(ctx, testAgent)
				if err != nil {
					b.Fatal(err)
				}
				defer st.Close()
				b.ReportAllocs()
				for b.Loop() {
					if _, err := st.Write(req); err != nil {
						b.Fatal(err)
					}
					if _, err := io.ReadFull(st, buf[:len(req)]); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
