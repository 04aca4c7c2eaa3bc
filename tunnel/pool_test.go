package tunnel

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// TestForwarderOverStreams checks the relay's stream pool (httpfwd) on
// real tunnel streams, on each transport:
//   - a pooled stream the agent closed while it sat idle is not used: the
//     next exchange goes on a fresh stream and succeeds, sent once;
//   - an exchange whose stream the agent closes after reading the request
//     (without answering) is not sent again on another stream: it fails
//     with OutcomeUnknown, and the agent saw it once.
func TestForwarderOverStreams(t *testing.T) {
	for _, tt := range []struct{ transport, mux string }{
		{TransportQUIC, ""}, {TransportTCP, ""}, {TransportQUIC, MuxYamux},
	} {
		t.Run(tt.transport+"/"+tt.mux, func(t *testing.T) {
			ctx := testCtx(t)
			r := startRelay(t, ServerConfig{})
			cfg := agentConfig(t, r.Addr())
			cfg.Transport, cfg.Mux = tt.transport, tt.mux
			cfg.Logger, _ = newLog(t, "agent")
			sess, err := Connect(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			r.waitEvent(t, "lab up")

			// The agent answers "ok" to a POST /answer and keeps the
			// stream; to /close it answers and then closes the stream (a
			// peer ending an idle pooled stream); a POST /hangup it reads
			// and closes the stream without answering.
			var requests atomic.Int32
			var wg sync.WaitGroup
			defer wg.Wait()
			defer sess.Close()
			go func() {
				for {
					st, err := sess.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() {
						defer st.Close()
						br := bufio.NewReader(st)
						for {
							req, err := http.ReadRequest(br)
							if err != nil {
								return
							}
							_, _ = io.Copy(io.Discard, req.Body)
							requests.Add(1)
							if req.URL.Path == "/hangup" {
								return
							}
							if _, err := io.WriteString(st, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"); err != nil || req.URL.Path == "/close" {
								return
							}
						}
					})
				}
			}()

			var streams []net.Conn
			var mu sync.Mutex
			f := httpfwd.New(func(ctx context.Context) (net.Conn, error) {
				st, err := r.Dial(ctx, testAgent)
				if err == nil {
					mu.Lock()
					streams = append(streams, st)
					mu.Unlock()
				}
				return st, err
			}, httpfwd.Options{})
			defer f.Close()
			post := func(path string) (string, error) {
				var out bytes.Buffer
				err := f.ForwardRaw(ctx, &out, &httpfwd.RawRequest{
					Head:          []byte("POST " + path + " HTTP/1.1\r\nHost: lab\r\n"),
					ContentLength: 2, Body: []byte("{}"),
				})
				return out.String(), err
			}

			got, err := post("/close")
			if err != nil || !bytes.HasSuffix([]byte(got), []byte("ok")) {
				t.Fatalf("first exchange: %q, %v", got, err)
			}
			// Wait until the agent's close of the pooled stream has
			// reached the relay (the stream reads its end).
			mu.Lock()
			first := streams[0]
			mu.Unlock()
			waitFor(t, "the agent's close to reach the relay", func() bool { return closedByPeer(first) })
			got, err = post("/answer")
			if err != nil || !bytes.HasSuffix([]byte(got), []byte("ok")) {
				t.Fatalf("exchange after the pooled stream was closed: %q, %v", got, err)
			}
			if n := requests.Load(); n != 2 {
				t.Fatalf("the agent saw %d requests, want 2", n)
			}

			// On the stream the last exchange left in the pool.
			_, err = post("/hangup")
			var ue *httpfwd.UpstreamError
			if !errors.As(err, &ue) || !ue.OutcomeUnknown {
				t.Fatalf("hung-up exchange: %v, want an UpstreamError with OutcomeUnknown", err)
			}
			if n := requests.Load(); n != 3 {
				t.Fatalf("the agent saw %d requests, want 3: the hung-up one once", n)
			}
		})
	}
}

// closedByPeer reports, without blocking, whether a stream's peer has
// closed it: its context ended (QUIC), or a read finds its end.
func closedByPeer(st net.Conn) bool {
	if c, ok := st.(interface{ Context() context.Context }); ok {
		return c.Context().Err() != nil
	}
	_ = st.SetReadDeadline(time.Unix(1, 0))
	defer st.SetReadDeadline(time.Time{})
	_, err := st.Read(make([]byte, 1))
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}
