//go:build unix

package mcpproxy

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

// as sends a request as the client the relay named.
func as(client string) []string { return []string{ClientHeader, client} }

// initializeAs starts a session for client and returns its id.
func (b *bridge) initializeAs(t *testing.T, client string) string {
	t.Helper()
	resp := b.do(t, http.MethodPost, "", initBody, as(client)...)
	body := readBody(t, resp)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || sid == "" {
		t.Fatalf("initialize as %q: %d session %q body %s", client, resp.StatusCode, sid, body)
	}
	if code, got := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","method":"notifications/initialized"}`, as(client)...); code != http.StatusAccepted {
		t.Fatalf("initialized as %q: %d %s", client, code, got)
	}
	return sid
}

// reasonOf returns error.data.reason of a refusal's body.
func reasonOf(t *testing.T, body string) string {
	t.Helper()
	var e struct {
		Error struct {
			Data struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		t.Fatalf("refusal body %q: %v", body, err)
	}
	return e.Error.Data.Reason
}

// TestSessionsBelongToTheirClient: a session id is useless to any client
// but the one that initialized it. Another client (or one without an
// identity) gets exactly the 404 of a session that never existed, for
// POST, GET with Last-Event-ID and DELETE, and the owner's session, its
// request in flight and its replay buffer are untouched.
func TestSessionsBelongToTheirClient(t *testing.T) {
	b := newBridge(t, Options{})
	sid := b.initializeAs(t, "alice")

	// A request of alice's whose stream she leaves after its first event:
	// its result will wait in the replay buffer.
	resp := b.do(t, http.MethodPost, sid,
		`{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"progress","arguments":{"steps":1},"_meta":{"progressToken":"p"}}}`, as("alice")...)
	if resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("progress call: %d %s", resp.StatusCode, readBody(t, resp))
	}
	first := newSSEReader(resp.Body).nextData(t)
	resp.Body.Close()
	if !strings.Contains(first.data, "notifications/progress") {
		t.Fatalf("first event: %+v", first)
	}

	const ghost = "0123456789abcdef0123456789abcdef" // no such session
	echo := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}`
	for _, c := range []struct {
		name, method, body string
		hdr                []string
	}{
		{"POST request", http.MethodPost, echo, nil},
		{"POST notification", http.MethodPost, `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`, nil},
		{"GET resume", http.MethodGet, "", []string{"Last-Event-ID", first.id}},
		{"GET stream", http.MethodGet, "", nil},
		{"DELETE", http.MethodDelete, "", nil},
	} {
		for _, who := range []string{"bob", ""} {
			t.Run(fmt.Sprintf("%s by %q", c.name, who), func(t *testing.T) {
				wantCode, want := b.status(t, c.method, ghost, c.body, append(as(who), c.hdr...)...)
				resp := b.do(t, c.method, sid, c.body, append(as(who), c.hdr...)...)
				if resp.StatusCode != http.StatusNotFound {
					resp.Body.Close() // a stream would not end
					t.Fatalf("another client's session: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
				}
				if got := readBody(t, resp); wantCode != http.StatusNotFound || got != want {
					t.Fatalf("another client's session: %s\nunknown session: %d %s", got, wantCode, want)
				}
			})
		}
	}

	// Alice's session is intact: her stream resumes where she left it and
	// gets the result once the call ends.
	var get *http.Response
	eventually(t, 5*time.Second, "the owner's resume (once her first connection is seen gone)", func() bool {
		get = b.do(t, http.MethodGet, sid, "", append(as("alice"), "Last-Event-ID", first.id)...)
		if get.StatusCode == http.StatusConflict {
			readBody(t, get)
			return false
		}
		return true
	})
	defer get.Body.Close()
	if get.StatusCode != http.StatusOK {
		t.Fatalf("owner's resume: %d %s", get.StatusCode, readBody(t, get))
	}
	code, out := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"release","arguments":{}}}`, as("alice")...)
	if code != http.StatusOK || !strings.Contains(out, "released") {
		t.Fatalf("owner's call: %d %s", code, out)
	}
	if ev := newSSEReader(get.Body).nextData(t); !strings.Contains(ev.data, `"id":5`) || !strings.Contains(ev.data, "progress done") {
		t.Fatalf("owner's resumed stream: %+v", ev)
	}
	if code, out := b.status(t, http.MethodDelete, sid, "", as("alice")...); code != http.StatusNoContent {
		t.Fatalf("owner's DELETE: %d %s", code, out)
	}
}

// openStream opens client's GET stream on sid, which keeps the session
// busy (an HTTP request in progress) until closed.
func (b *bridge) openStream(t *testing.T, sid, client string) *http.Response {
	t.Helper()
	resp := b.do(t, http.MethodGet, sid, "", as(client)...)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET stream: %d %s", resp.StatusCode, readBody(t, resp))
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// TestSessionLimits: a client at its session limit whose sessions are all
// busy is refused (429 client_session_limit) while another client still
// gets a session; once its sessions are idle, its next session replaces
// its longest-idle one; the server's own limit refuses with 503
// session_limit.
func TestSessionLimits(t *testing.T) {
	b := newBridgeLimits(t, Options{}, Limits{Sessions: 4, SessionsPerClient: 2})
	a1, a2 := b.initializeAs(t, "alice"), b.initializeAs(t, "alice")
	s1, s2 := b.openStream(t, a1, "alice"), b.openStream(t, a2, "alice")

	resp := b.do(t, http.MethodPost, "", initBody, as("alice")...)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusTooManyRequests || reasonOf(t, body) != reasonClientSessionLimit ||
		!strings.Contains(body, "limits.sessions_per_client") || !strings.Contains(body, `"id":0`) {
		t.Fatalf("alice's third session: %d %s", resp.StatusCode, body)
	}
	b.initializeAs(t, "bob")

	// Idle now (first a1, then a2): alice's next session ends a1.
	s1.Body.Close()
	eventually(t, 5*time.Second, "a1 idle", func() bool { _, idle := b.session(t, a1).idleSince(); return idle })
	s2.Body.Close()
	eventually(t, 5*time.Second, "a2 idle", func() bool { _, idle := b.session(t, a2).idleSince(); return idle })
	a3 := b.initializeAs(t, "alice")
	if code, _ := b.status(t, http.MethodGet, a1, "", as("alice")...); code != http.StatusNotFound {
		t.Fatalf("alice's longest-idle session still there: GET %d", code)
	}
	for _, sid := range []string{a2, a3} {
		if code, out := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`, as("alice")...); code != http.StatusOK {
			t.Fatalf("alice's session %s: %d %s", sid[:8], code, out)
		}
	}
	if b.logs.find("session ended", "longest-idle") == "" {
		t.Fatal("the replaced session's end is not logged with its reason")
	}

	// bob, alice, alice, bob: the server is full for carol.
	b.openStream(t, b.initializeAs(t, "bob"), "bob")
	resp = b.do(t, http.MethodPost, "", initBody, as("carol")...)
	body = readBody(t, resp)
	if resp.StatusCode != http.StatusServiceUnavailable || reasonOf(t, body) != reasonSessionLimit || !strings.Contains(body, "limits.sessions") {
		t.Fatalf("carol on a full server: %d %s", resp.StatusCode, body)
	}
}

// session returns the live session with id sid.
func (b *bridge) session(t *testing.T, sid string) *session {
	t.Helper()
	for _, srv := range b.h.table().stdio {
		srv.mu.Lock()
		s := srv.sessions[sid]
		srv.mu.Unlock()
		if s != nil {
			return s
		}
	}
	t.Fatalf("no session %s", sid)
	return nil
}

// TestSessionFloodFromOneClient: concurrent initializes from one client
// (defect: 2,000 took all 256 sessions) leave it at most its share, and
// another client still gets a session.
func TestSessionFloodFromOneClient(t *testing.T) {
	b := newBridgeLimits(t, Options{}, Limits{Sessions: 8, SessionsPerClient: 3})
	var wg sync.WaitGroup
	codes := make(chan int, 24)
	for range cap(codes) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodPost, b.url, strings.NewReader(initBody))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			req.Header.Set(ClientHeader, "mallory")
			resp, err := b.srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			body := readBody(t, resp)
			if resp.StatusCode != http.StatusOK && reasonOf(t, body) != reasonClientSessionLimit {
				t.Errorf("flood: %d %s", resp.StatusCode, body)
			}
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	refused := 0
	for c := range codes {
		if c == http.StatusTooManyRequests {
			refused++
		}
	}
	srv := b.h.table().servers["ts"].(*stdioServer)
	srv.mu.Lock()
	held := srv.perClient["mallory"]
	srv.mu.Unlock()
	if held > 3 || refused == 0 {
		t.Fatalf("mallory holds %d sessions (limit 3), %d of her initializes refused", held, refused)
	}
	b.initializeAs(t, "alice")
}

// TestConcurrencyLimits: requests in flight are bounded per client (429
// client_concurrency_limit) and per server (503 concurrency_limit), with
// Retry-After; a request whose client hung up still counts until the
// child answers it, and answered requests free their places.
func TestConcurrencyLimits(t *testing.T) {
	b := newBridgeLimits(t, Options{}, Limits{ConcurrentRequests: 3, ConcurrentRequestsPerClient: 2})
	alice, bob := b.initializeAs(t, "alice"), b.initializeAs(t, "bob")
	progress := func(sid, client string, id int) *http.Response {
		t.Helper()
		resp := b.do(t, http.MethodPost, sid, fmt.Sprintf(
			`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"progress","arguments":{"steps":1},"_meta":{"progressToken":%d}}}`, id, id), as(client)...)
		if resp.Header.Get("Content-Type") != "text/event-stream" {
			t.Fatalf("progress as %s: %d %s", client, resp.StatusCode, readBody(t, resp))
		}
		newSSEReader(resp.Body).nextData(t) // the child is working on it
		return resp
	}
	refused := func(sid, client string, status int, reason string) {
		t.Helper()
		resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":99,"method":"ping"}`, as(client)...)
		body := readBody(t, resp)
		if resp.StatusCode != status || reasonOf(t, body) != reason || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, `"id":99`) {
			t.Fatalf("%s over the limit: %d %s (Retry-After %q)", client, resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
	}
	p1 := progress(alice, "alice", 1)
	p1.Body.Close() // hung up: the child still works on it
	p2 := progress(alice, "alice", 2)
	defer p2.Body.Close()
	refused(alice, "alice", http.StatusTooManyRequests, reasonClientConcurrencyLimit)
	p3 := progress(bob, "bob", 3)
	defer p3.Body.Close()
	refused(bob, "bob", http.StatusServiceUnavailable, reasonConcurrencyLimit)

	// Ending bob's session answers his request, which frees its place;
	// alice's request whose client hung up still counts.
	if code, out := b.status(t, http.MethodDelete, bob, "", as("bob")...); code != http.StatusNoContent {
		t.Fatalf("DELETE: %d %s", code, out)
	}
	refused(alice, "alice", http.StatusTooManyRequests, reasonClientConcurrencyLimit)
	bob = b.initializeAs(t, "bob")
	for i := range 3 { // one place left: each answered request frees it
		if code, out := b.status(t, http.MethodPost, bob, fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"ping"}`, 20+i), as("bob")...); code != http.StatusOK {
			t.Fatalf("bob's ping %d: %d %s", i, code, out)
		}
	}
}

const statelessMeta = `"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}`

// TestStatelessConcurrencyLimit: the stateless era's shared child counts
// each client's requests too.
func TestStatelessConcurrencyLimit(t *testing.T) {
	b := newBridgeLimits(t, Options{}, Limits{ConcurrentRequests: 4, ConcurrentRequestsPerClient: 1})
	held := b.do(t, http.MethodPost, "", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{`+statelessMeta+`,"progressToken":"k"},"name":"progress","arguments":{"steps":1}}}`,
		"Mcp-Protocol-Version", "2026-07-28", "Mcp-Method", "tools/call", "Mcp-Name", "progress", ClientHeader, "alice")
	defer held.Body.Close()
	if held.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("held call: %d %s", held.StatusCode, readBody(t, held))
	}
	newSSEReader(held.Body).nextData(t)
	echo := `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"_meta":{` + statelessMeta + `},"name":"echo","arguments":{"text":"x"}}}`
	hdr := []string{"Mcp-Protocol-Version", "2026-07-28", "Mcp-Method", "tools/call", "Mcp-Name", "echo"}
	code, body := b.status(t, http.MethodPost, "", echo, append(hdr, ClientHeader, "alice")...)
	if code != http.StatusTooManyRequests || reasonOf(t, body) != reasonClientConcurrencyLimit || !strings.Contains(body, `"id":2`) {
		t.Fatalf("alice's second stateless call: %d %s", code, body)
	}
	if code, body := b.status(t, http.MethodPost, "", echo, append(hdr, ClientHeader, "bob")...); code != http.StatusOK {
		t.Fatalf("bob's stateless call: %d %s", code, body)
	}
}
