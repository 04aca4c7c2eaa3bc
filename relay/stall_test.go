package relay

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// lockedBuf is a log sink for a handler's concurrent writes.
type lockedBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// floodAgent answers a GET with an SSE stream it fills as fast as the
// relay takes it, until the exchange ends; anything else with "ok".
func floodAgent() http.Handler {
	chunk := "data: " + strings.Repeat("x", 64<<10) + "\n\n"
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			_, _ = w.Write([]byte("ok"))
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		rc := http.NewResponseController(w)
		for r.Context().Err() == nil {
			if _, err := w.Write([]byte(chunk)); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	})
}

// stallStack is a relay front (fast path and net/http) before floodAgent,
// with a stall budget of 2 and a write timeout far beyond the test.
func stallStack(t *testing.T) (h *Handler, addr string, log *lockedBuf) {
	t.Helper()
	ln := &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
	agents := &pipeAgents{servers: map[string][]string{"dc1": {"notes"}}, ln: ln}
	agentSrv := &http.Server{Handler: floodAgent()}
	agentServed := make(chan struct{})
	go func() {
		defer close(agentServed)
		_ = agentSrv.Serve(ln)
	}()
	log = &lockedBuf{}
	h, err := NewHandler(Config{
		Agents:             closingAgents{agents},
		KnownAgents:        []string{"dc1"},
		Clients:            []Client{{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/*"}}},
		Logger:             slog.New(slog.NewTextHandler(log, nil)),
		Limits:             Limits{WriteTimeout: time.Hour},
		MaxStalledPerAgent: 2,
	})
	require.NoError(t, err)
	addr, _ = startFront(t, h, nil)
	t.Cleanup(func() { // before the front's: see newConnFixture
		_ = agentSrv.Close()
		<-agentServed
	})
	return h, addr, log
}

// stalledClient opens a GET stream and reads none of it, with a receive
// buffer as small as the kernel allows.
func stalledClient(t *testing.T, addr, extraHeader string) net.Conn {
	t.Helper()
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
	}}
	c, err := d.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	_, err = fmt.Fprintf(c, "GET /dc1/notes/mcp HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer ci-token\r\n"+
		"Accept: text/event-stream\r\n%s\r\n", extraHeader)
	require.NoError(t, err)
	return c
}

// TestStallBudget: of the clients of one agent that read nothing, at most
// MaxStalledPerAgent wait for the write timeout; one more is cut at once
// (logged, reason backlog), on the fast path and on net/http's alike
// (Connection: keep-alive sends an exchange there), and exchanges of
// clients that read go on.
func TestStallBudget(t *testing.T) {
	const netHTTP = "Connection: keep-alive\r\n"
	for _, tc := range []struct {
		name string
		hdrs []string // the last one's client is cut
	}{
		{"fast path cut", []string{"", netHTTP, ""}},
		{"net/http cut", []string{"", "", netHTTP}},
	} {
		t.Run(tc.name, func(t *testing.T) { testStallBudget(t, tc.hdrs) })
	}
}

func testStallBudget(t *testing.T, hdrs []string) {
	h, addr, log := stallStack(t)
	_, budget := h.agentPath("dc1", "")
	var conns []net.Conn
	for i, hdr := range hdrs {
		conns = append(conns, stalledClient(t, addr, hdr))
		want := min(i+1, 2)
		require.Eventually(t, func() bool { return budget.Stalled() == int64(want) && budget.Cuts() == uint64(i+1-want) },
			connTimeout, 10*time.Millisecond, "after %d stalled clients: %d stalled, %d cut", i+1, budget.Stalled(), budget.Cuts())
	}
	require.Eventually(t, func() bool {
		return strings.Contains(log.String(), `msg="slow client cut" reason=backlog client=ci agent=dc1`)
	},
		connTimeout, 10*time.Millisecond, "no log line for the cut:\n%s", log)

	// A client that reads is served meanwhile.
	req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, "http://"+addr+"/dc1/notes/mcp", strings.NewReader("{}"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer ci-token")
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: connTimeout}).Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// Clients that leave give their places back.
	for _, c := range conns {
		_ = c.Close()
	}
	require.Eventually(t, func() bool { return budget.Stalled() == 0 }, connTimeout, 10*time.Millisecond)
}
