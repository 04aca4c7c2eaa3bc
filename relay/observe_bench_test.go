package relay

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/metrics"
)

// BenchmarkRelayExchange measures one small MCP exchange through the
// relay's fast path (loopback client connection, in-memory agent), with
// the metrics observer off and on: what metrics cost per request.
// Run: go test -run '^$' -bench RelayExchange -benchtime 2000x -count 5 ./relay
func BenchmarkRelayExchange(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("metrics=%t", on), func(b *testing.B) {
			ln := &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
			agents := &pipeAgents{servers: map[string][]string{"dc1": {"notes"}}, ln: ln}
			answer := []byte(`{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"hi"}]}}`)
			agentSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(answer)
			})}
			served := make(chan struct{})
			go func() { defer close(served); _ = agentSrv.Serve(ln) }()
			cfg := Config{
				Agents:      agents,
				KnownAgents: []string{"dc1"},
				Clients:     []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/*"}}},
			}
			if on {
				cfg.Observer = metrics.NewRelay(prometheus.NewRegistry())
			}
			h, err := NewHandler(cfg)
			require.NoError(b, err)
			l, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(b, err)
			fast := httpfwd.NewConnServer(h.ServeConn, l.Addr())
			front := httptest.NewUnstartedServer(h)
			front.Listener = fast.Handoff()
			front.Start()
			frontDone := make(chan struct{})
			go func() { defer close(frontDone); _ = fast.Serve(l) }()
			defer func() {
				_ = fast.Close()
				<-frontDone
				front.Close()
				h.Close()
				_ = agentSrv.Close()
				<-served
			}()

			c, err := net.Dial("tcp", l.Addr().String())
			require.NoError(b, err)
			defer c.Close()
			br := bufio.NewReader(c)
			body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}`
			req := []byte(fmt.Sprintf("POST /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ci-token\r\n"+
				"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					b.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					b.Fatalf("status %d", resp.StatusCode)
				}
			}
			b.ReportMetric(float64(processCPU()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// processCPU is the user+system CPU time the process used so far, in ns:
// the relay, the in-memory agent and the client all run here.
func processCPU() int64 {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}
