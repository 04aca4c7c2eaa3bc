//go:build unix

package mcpproxy

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestDocumentedDefaults pins the defaults the README and the package
// documentation promise, as literal values: changing a constant must
// change this test (and the documentation with it).
func TestDocumentedDefaults(t *testing.T) {
	h, err := NewHandler([]ServerConfig{{Name: "ts", Command: []string{testServerBin}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.Close() })
	srv := h.table().servers["ts"].(*stdioServer)
	for _, c := range []struct {
		name      string
		got, want any
	}{
		{"replay buffer events (README: 1024 events)", replayMaxEvents, 1024},
		{"replay buffer bytes (README: 8 MiB)", replayMaxBytes, 8 * 1024 * 1024},
		{"message limit (README: 64 MiB)", h.opts.MaxMessageBytes, int64(64 * 1024 * 1024)},
		{"keep-alive comments (README: every 20 s)", h.opts.KeepAlive, 20 * time.Second},
		{"idle timeout (README: 2m)", h.opts.IdleTimeout, 2 * time.Minute},
		{"write timeout (README: 1 minute)", h.opts.WriteTimeout, time.Minute},
		{"kill grace (2 s)", h.opts.KillGrace, 2 * time.Second},
		{"limits (README: 256, 32, 1024, 128)", srv.lim, Limits{Sessions: 256, SessionsPerClient: 32, ConcurrentRequests: 1024, ConcurrentRequestsPerClient: 128}},
		{"per-client limits at most the server's", Limits{Sessions: 10, ConcurrentRequests: 20}.withDefaults(256),
			Limits{Sessions: 10, SessionsPerClient: 10, ConcurrentRequests: 20, ConcurrentRequestsPerClient: 20}},
	} {
		if c.got != c.want {
			t.Errorf("%s: %v, documented %v", c.name, c.got, c.want)
		}
	}
}

// TestReplayBufferBoundaries: with no client connected, the buffer keeps
// exactly 1024 events and exactly 8 MiB; one more event or byte evicts
// the oldest.
func TestReplayBufferBoundaries(t *testing.T) {
	s := bareSession(t, &logSink{})
	st := s.standalone // no client connected
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range 1024 {
		s.appendLocked(st, &event{data: []byte(fmt.Sprint(i))})
	}
	if len(s.events) != 1024 || string(s.events[0].data) != "0" {
		t.Fatalf("1024 events: %d kept, oldest %s", len(s.events), s.events[0].data)
	}
	s.appendLocked(st, &event{data: []byte("1024")})
	if len(s.events) != 1024 || string(s.events[0].data) != "1" {
		t.Fatalf("1025th event: %d kept, oldest %s", len(s.events), s.events[0].data)
	}

	s2 := bareSession(t, &logSink{})
	s2.mu.Lock()
	defer s2.mu.Unlock()
	const part = 1 << 20
	for range 8 {
		s2.appendLocked(s2.standalone, &event{data: make([]byte, part)})
	}
	if len(s2.events) != 8 || s2.bufBytes != 8<<20 {
		t.Fatalf("8 MiB: %d events, %d bytes kept", len(s2.events), s2.bufBytes)
	}
	s2.appendLocked(s2.standalone, &event{data: []byte("x")})
	if len(s2.events) != 8 || s2.bufBytes != 7<<20+1 {
		t.Fatalf("8 MiB + 1 byte: %d events, %d bytes kept", len(s2.events), s2.bufBytes)
	}
}

// TestMessageLimitBoundary: a request body of exactly 64 MiB is read (and
// judged on its content), one byte more is 413.
func TestMessageLimitBoundary(t *testing.T) {
	if testing.Short() {
		t.Skip("sends 128 MiB")
	}
	b := newBridge(t, Options{})
	const limit = 64 << 20
	head, tail := `{"jsonrpc":"2.0","method":"notifications/x","params":{"pad":"`, `"}}`
	body := head + strings.Repeat("x", limit-len(head)-len(tail)) + tail
	if code, out := b.status(t, http.MethodPost, "", body); code != http.StatusBadRequest || !strings.Contains(out, "missing Mcp-Session-Id") {
		t.Fatalf("a message of exactly 64 MiB: %d %.200s", code, out)
	}
	body = head + strings.Repeat("x", limit+1-len(head)-len(tail)) + tail
	if code, out := b.status(t, http.MethodPost, "", body); code != http.StatusRequestEntityTooLarge || !strings.Contains(out, "67108864") {
		t.Fatalf("a message of 64 MiB + 1: %d %.200s", code, out)
	}
}
