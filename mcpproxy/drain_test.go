package mcpproxy

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// After Drain the handler refuses new exchanges with 503 agent_draining,
// on both paths (the fast path and net/http's), while the exchange in
// progress gets its answer; Wait waits for it.
func TestDrain(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		if strings.Contains(string(body), `"slow"`) {
			entered <- struct{}{}
			<-release
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	})
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL})
	url := b.srv.URL + "/up/mcp"

	inFlight := make(chan string, 1)
	go func() {
		resp, err := b.srv.Client().Post(url, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"slow"}`))
		if err != nil {
			inFlight <- err.Error()
			return
		}
		defer resp.Body.Close()
		inFlight <- resp.Status
	}()
	<-entered
	if n := b.h.InFlight(); n != 1 {
		t.Fatalf("InFlight() = %d, want 1", n)
	}
	b.h.Drain()
	if !b.h.Draining() {
		t.Error("Draining() = false after Drain")
	}
	for _, tc := range []struct {
		name, method, path string
		hdr                []string
	}{
		{"url server, fast path", http.MethodPost, "/up/mcp", nil},
		{"url server, GET", http.MethodGet, "/up/mcp", nil},
		{"stdio server", http.MethodPost, "/ts/mcp", nil},
		{"handed to net/http (chunked)", http.MethodPost, "/up/mcp", []string{"Transfer-Encoding", "chunked"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, b.srv.URL+tc.path, strings.NewReader(initBody))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			if len(tc.hdr) > 0 {
				req.TransferEncoding = []string{"chunked"}
			}
			resp, err := b.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body := readBody(t, resp)
			var eb struct {
				Error struct {
					Data struct {
						Reason string `json:"reason"`
					} `json:"data"`
				} `json:"error"`
			}
			_ = json.Unmarshal([]byte(body), &eb)
			if resp.StatusCode != http.StatusServiceUnavailable || eb.Error.Data.Reason != "agent_draining" || resp.Header.Get("Retry-After") == "" {
				t.Errorf("%d %q (Retry-After %q), want 503 agent_draining with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := b.h.Wait(ctx); err == nil {
		t.Fatal("Wait returned with an exchange in progress")
	}
	close(release)
	if got := <-inFlight; got != "200 OK" {
		t.Fatalf("the exchange in progress: %s, want 200 OK", got)
	}
	ctx, cancel = context.WithTimeout(context.Background(), connWait)
	defer cancel()
	if err := b.h.Wait(ctx); err != nil {
		t.Fatalf("Wait after the last exchange: %v", err)
	}
}
