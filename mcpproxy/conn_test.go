//go:build unix

package mcpproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// These tests drive the agent's fast path (ServeConn) through newBridge,
// which serves like the agent: URL servers' exchanges answered on the
// connection, the rest handed to net/http. An answer from the fast path
// carries no Date header (the upstreams here send none, and only net/http
// adds one), which tells the two paths apart.

const connWait = 10 * time.Second

// seenRequest is what a recording upstream was sent.
type seenRequest struct {
	method, host, path, query string
	header                    http.Header
	body                      string
}

// recUpstream is a plain HTTP upstream that records each request and
// answers with answer (by default a JSON echo of the body).
type recUpstream struct {
	srv  *httptest.Server
	seen chan seenRequest
}

func newRecUpstream(t *testing.T, answer func(w http.ResponseWriter, r *http.Request, body []byte)) *recUpstream {
	t.Helper()
	u := &recUpstream{seen: make(chan seenRequest, 100)}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("upstream reading the body: %v", err)
		}
		u.seen <- seenRequest{r.Method, r.Host, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), string(body)}
		w.Header()["Date"] = nil // so that only net/http's server adds one
		if answer != nil {
			answer(w, r, body)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":1,"result":{"echo":%q}}`, body)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func (u *recUpstream) next(t *testing.T) seenRequest {
	t.Helper()
	select {
	case s := <-u.seen:
		return s
	case <-time.After(connWait):
		t.Fatal("the upstream saw no request")
		panic("unreachable")
	}
}

// rawClient is a client connection whose bytes the test writes itself.
type rawClient struct {
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, b *bridge) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(b.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.SetDeadline(time.Now().Add(connWait)); err != nil {
		t.Fatal(err)
	}
	return &rawClient{c: c, br: bufio.NewReader(c)}
}

func (rc *rawClient) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(rc.c, s); err != nil {
		t.Fatal(err)
	}
}

// read reads one answer (to a request made with method) and its body.
func (rc *rawClient) read(t *testing.T, method string) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the answer's body: %v", err)
	}
	return resp, string(body)
}

// closed reports whether the server closed the connection (and sent
// nothing more).
func (rc *rawClient) closed(t *testing.T) bool {
	t.Helper()
	n, err := rc.br.Read(make([]byte, 1))
	if n > 0 {
		t.Fatalf("unexpected bytes after the answer")
	}
	return err == io.EOF
}

// countingClient is an HTTP client whose dials are counted.
func countingClient(t *testing.T) (*http.Client, *atomic.Int32) {
	t.Helper()
	var dials atomic.Int32
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: connWait}, &dials
}

// TestFastPathKeepAlive: exchanges for a URL server and for a stdio server
// follow each other on one client connection, all answered by the fast
// path; a method the bridge leaves to net/http is handed over.
func TestFastPathKeepAlive(t *testing.T) {
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		switch {
		case r.Method == http.MethodHead:
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Content-Length", "42")
		case r.Method == http.MethodGet:
			w.Header().Set("Content-Type", "text/event-stream")
			fmt.Fprint(w, "id: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n")
			w.(http.Flusher).Flush()
			fmt.Fprint(w, "id: 2\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}\n\n")
		default:
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":1,"result":{"echo":%q}}`, body)
		}
	})
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})
	client, dials := countingClient(t)
	upURL := b.srv.URL + "/up/mcp"

	fast := func(method, body string) (*http.Response, string) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, _ := http.NewRequest(method, upURL, rd)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		got := readBody(t, resp)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d %s", method, resp.StatusCode, got)
		}
		if resp.Header["Date"] != nil {
			t.Errorf("%s was answered by net/http, not the fast path", method)
		}
		if s := up.next(t); s.method != method || s.body != body {
			t.Errorf("upstream saw %s %q, want %s %q", s.method, s.body, method, body)
		}
		return resp, got
	}
	for i := 0; i < 3; i++ {
		body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"ping"}`, i)
		if _, got := fast(http.MethodPost, body); !strings.Contains(got, `\"id\":`+fmt.Sprint(i)) {
			t.Fatalf("POST %d: %s", i, got)
		}
	}
	if resp, got := fast(http.MethodGet, ""); strings.Count(got, "data: ") != 2 || resp.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("GET: %q %v", got, resp.Header)
	}

	// A stdio server's exchanges, on the same connection: answered there
	// too, by the bridge.
	stdio := func(method, sid, body string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest(method, b.url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if sid != "" {
			req.Header.Set("Mcp-Session-Id", sid)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("stdio %s: %v", method, err)
		}
		return resp, readBody(t, resp)
	}
	resp, got := stdio(http.MethodPost, "", initBody)
	if resp.StatusCode != http.StatusOK || !strings.Contains(got, "protocolVersion") {
		t.Fatalf("stdio initialize: %d %s", resp.StatusCode, got)
	}
	if resp.Header["Date"] != nil || resp.ContentLength != int64(len(got)) {
		t.Errorf("stdio initialize: answered by net/http (Date %v) or without a Content-Length (%d)", resp.Header["Date"], resp.ContentLength)
	}
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp, got := stdio(http.MethodPost, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`); resp.StatusCode != http.StatusOK || !strings.Contains(got, `"echo"`) {
		t.Fatalf("stdio tools/list: %d %s", resp.StatusCode, got)
	}

	if resp, got := fast(http.MethodHead, ""); resp.ContentLength != 42 || got != "" {
		t.Fatalf("HEAD: length %d body %q", resp.ContentLength, got)
	}
	fast(http.MethodPost, `{"jsonrpc":"2.0","id":"last","method":"ping"}`)
	// PUT is the bridge's to refuse, but net/http's to answer: the
	// connection goes over (and stays there).
	if resp, got := stdio(http.MethodPut, sid, "{}"); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header["Date"] == nil {
		t.Fatalf("stdio PUT: %d %v %s", resp.StatusCode, resp.Header, got)
	}
	if n := dials.Load(); n != 1 {
		t.Fatalf("%d client connections, want all exchanges on one", n)
	}
}

// TestFastPathRewritesHead: the upstream gets its own Host, the URL's path
// and query with the client's query after it, the configured headers in
// place of the client's (whatever their case), and none of the client's
// credentials, relay headers or hop-by-hop headers.
func TestFastPathRewritesHead(t *testing.T) {
	up := newRecUpstream(t, nil)
	b := newBridge(t, Options{}, ServerConfig{
		Name: "up", URL: up.srv.URL + "/base/mcp?tenant=a",
		Headers: map[string]string{"X-Internal": "configured"},
	})
	upHost := strings.TrimPrefix(up.srv.URL, "http://")
	body := `{"jsonrpc":"2.0","id":9007199254740993,"method":"ping"}`
	rc := dialRaw(t, b)
	rc.send(t, "POST /up/mcp?x=1&y=%2F HTTP/1.1\r\nHost: relay.example\r\nContent-Type: application/json\r\n"+
		"Authorization: Bearer client-token\r\nauthorization: Bearer again\r\nX-Mcptun-Client: alice\r\nx-mcptun-other: internal\r\n"+
		"x-internal: client-1\r\nX-INTERNAL: client-2\r\nX-Keep: kept\r\nKeep-Alive: timeout=5\r\nProxy-Authorization: Basic x\r\nTE: trailers\r\n"+
		fmt.Sprintf("Content-Length: %d\r\n\r\n%s", len(body), body))
	resp, got := rc.read(t, http.MethodPost)
	if resp.StatusCode != http.StatusOK || resp.Header["Date"] != nil {
		t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, got)
	}
	s := up.next(t)
	if s.host != upHost {
		t.Errorf("upstream Host %q, want %q", s.host, upHost)
	}
	if s.path != "/base/mcp" || s.query != "tenant=a&x=1&y=%2F" {
		t.Errorf("upstream URL %s?%s", s.path, s.query)
	}
	if s.body != body {
		t.Errorf("upstream body %q", s.body)
	}
	if v := s.header.Values("X-Internal"); len(v) != 1 || v[0] != "configured" {
		t.Errorf("upstream X-Internal %q, want only the configured value", v)
	}
	if s.header.Get("X-Keep") != "kept" || s.header.Get("Content-Type") != "application/json" {
		t.Errorf("end-to-end headers lost: %v", s.header)
	}
	for k := range s.header {
		switch lk := strings.ToLower(k); {
		case lk == "authorization", strings.HasPrefix(lk, "x-mcptun-"), lk == "keep-alive", lk == "proxy-authorization", lk == "te":
			t.Errorf("%s reached the upstream: %q", k, s.header[k])
		}
	}

	// Connection options: the headers they name stay behind (this head is
	// net/http's to serve).
	rc = dialRaw(t, b)
	rc.send(t, "POST /up/mcp HTTP/1.1\r\nHost: relay.example\r\nConnection: X-Drop\r\nX-Drop: 1\r\nX-Keep: kept\r\n"+
		"Authorization: Bearer client-token\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
	if resp, got := rc.read(t, http.MethodPost); resp.StatusCode != http.StatusOK {
		t.Fatalf("%d %s", resp.StatusCode, got)
	}
	s = up.next(t)
	if s.header.Get("X-Drop") != "" || s.header.Get("Authorization") != "" || s.header.Get("X-Keep") != "kept" || s.host != upHost {
		t.Errorf("upstream saw Host %q headers %v", s.host, s.header)
	}
}

// TestFastPathHandsOffBodies: a chunked request body and Expect:
// 100-continue are net/http's to serve; both still reach the upstream.
func TestFastPathHandsOffBodies(t *testing.T) {
	up := newRecUpstream(t, nil)
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})

	t.Run("chunked", func(t *testing.T) {
		rc := dialRaw(t, b)
		rc.send(t, "POST /up/mcp HTTP/1.1\r\nHost: relay.example\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"+
			"5\r\n{\"a\":\r\n3;ext=1\r\n\"b\"\r\n1\r\n}\r\n0\r\n\r\n")
		resp, got := rc.read(t, http.MethodPost)
		if resp.StatusCode != http.StatusOK || !strings.Contains(got, `{\"a\":\"b\"}`) {
			t.Fatalf("%d %s", resp.StatusCode, got)
		}
		if s := up.next(t); s.body != `{"a":"b"}` {
			t.Fatalf("upstream body %q", s.body)
		}
	})
	t.Run("expect 100-continue", func(t *testing.T) {
		rc := dialRaw(t, b)
		rc.send(t, "POST /up/mcp HTTP/1.1\r\nHost: relay.example\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n")
		// The body follows only once the server asked for it.
		interim, err := http.ReadResponse(rc.br, &http.Request{Method: http.MethodPost})
		if err != nil || interim.StatusCode != http.StatusContinue {
			t.Fatalf("before the body: %v %v", interim, err)
		}
		rc.send(t, `{"a":"b"}`)
		resp, got := rc.read(t, http.MethodPost)
		if resp.StatusCode != http.StatusOK || !strings.Contains(got, `{\"a\":\"b\"}`) {
			t.Fatalf("%d %s", resp.StatusCode, got)
		}
		if s := up.next(t); s.body != `{"a":"b"}` {
			t.Fatalf("upstream body %q", s.body)
		}
	})
}

// TestFastPathMalformedHead: a head that cannot be parsed gets a 400 with
// a JSON-RPC error and the connection ends; nothing reaches the upstream.
func TestFastPathMalformedHead(t *testing.T) {
	up := newRecUpstream(t, nil)
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})
	for name, head := range map[string]string{
		"space in name":        "POST /up/mcp HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\nContent-Length: 2\r\n\r\n{}",
		"conflicting lengths":  "POST /up/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
		"length and chunked":   "POST /up/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"obs-fold":             "POST /up/mcp HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  2\r\nContent-Length: 2\r\n\r\n{}",
		"stdio server, NUL":    "POST /ts/mcp HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
		"second head on conn":  "POST /up/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}POST /up/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: +2\r\n\r\n{}",
		"request line garbage": "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n: x\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			rc := dialRaw(t, b)
			rc.send(t, head)
			if strings.HasPrefix(name, "second") {
				if resp, got := rc.read(t, http.MethodPost); resp.StatusCode != http.StatusOK {
					t.Fatalf("first exchange: %d %s", resp.StatusCode, got)
				}
				up.next(t)
			}
			resp, got := rc.read(t, http.MethodPost)
			if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Content-Type") != "application/json" {
				t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, got)
			}
			var e struct {
				ID    json.RawMessage `json:"id"`
				Error struct {
					Code    int    `json:"code"`
					Message string `json:"message"`
				} `json:"error"`
			}
			if err := json.Unmarshal([]byte(got), &e); err != nil || e.Error.Code != -32600 || e.Error.Message == "" || string(e.ID) != "null" {
				t.Fatalf("400 body %s (%v)", got, err)
			}
			if !rc.closed(t) {
				t.Fatal("the connection stays open after a malformed head")
			}
			// Nothing reached the upstream, proven by order: a marker
			// sent afterwards on a new connection must be the next
			// request the upstream sees.
			marker := fmt.Sprintf(`{"marker":%q}`, name)
			mc := dialRaw(t, b)
			mc.send(t, fmt.Sprintf("POST /up/mcp HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(marker), marker))
			if resp, got := mc.read(t, http.MethodPost); resp.StatusCode != http.StatusOK {
				t.Fatalf("marker exchange: %d %s", resp.StatusCode, got)
			}
			if s := up.next(t); s.body != marker {
				t.Fatalf("the upstream saw %+v before the marker", s)
			}
		})
	}
}

// TestFastPathUpstreamDown: an upstream that cannot be reached gives a 502
// with a JSON-RPC error naming the server, and the connection carries on.
func TestFastPathUpstreamDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	b := newBridge(t, Options{}, ServerConfig{Name: "gone-server", URL: "http://" + addr + "/mcp"})
	rc := dialRaw(t, b)
	for i := 0; i < 2; i++ {
		rc.send(t, "POST /gone-server/mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
		resp, got := rc.read(t, http.MethodPost)
		if resp.StatusCode != http.StatusBadGateway || resp.Header.Get("Content-Type") != "application/json" || resp.Header["Date"] != nil {
			t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, got)
		}
		var e struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal([]byte(got), &e); err != nil || e.Error.Code != -32603 ||
			!strings.Contains(e.Error.Message, `"gone-server"`) || !strings.Contains(e.Error.Message, "connection refused") ||
			strings.Contains(got, addr) {
			t.Fatalf("502 body %s (%v)", got, err)
		}
	}
}

// TestFastPathClientGoneEndsStream: a client that closes its connection
// during an open SSE stream ends the upstream's request.
func TestFastPathClientGoneEndsStream(t *testing.T) {
	gone := make(chan struct{})
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(gone)
	})
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})
	rc := dialRaw(t, b)
	rc.send(t, "GET /up/mcp HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nMcp-Session-Id: s\r\n\r\n")
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: http.MethodGet})
	if err != nil || resp.StatusCode != http.StatusOK || resp.Header["Date"] != nil {
		t.Fatalf("stream head: %v %v", resp, err)
	}
	up.next(t)
	_ = rc.c.Close()
	select {
	case <-gone:
	case <-time.After(connWait):
		up.srv.CloseClientConnections() // unblock the exchange for the cleanup
		t.Fatal("the upstream request outlived the client's connection")
	}
}

// TestFastPathHEAD: a HEAD answer's framing headers pass, no body follows,
// and the connection stays in step for the next exchange.
func TestFastPathHEAD(t *testing.T) {
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		if r.Method == http.MethodHead {
			w.Header().Set("Content-Length", "1234")
			return
		}
		fmt.Fprint(w, `{"after":"head"}`)
	})
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})
	rc := dialRaw(t, b)
	rc.send(t, "HEAD /up/mcp?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, got := rc.read(t, http.MethodHead)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != 1234 || got != "" || resp.Header["Date"] != nil {
		t.Fatalf("HEAD: %d length %d %q %v", resp.StatusCode, resp.ContentLength, got, resp.Header)
	}
	if s := up.next(t); s.method != http.MethodHead || s.query != "q=1" {
		t.Fatalf("upstream saw %s ?%s", s.method, s.query)
	}
	rc.send(t, "GET /up/mcp HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, got := rc.read(t, http.MethodGet); resp.StatusCode != http.StatusOK || got != `{"after":"head"}` {
		t.Fatalf("after HEAD: %d %q", resp.StatusCode, got)
	}
}

// TestFastPathClientGoneAfterStreamedBody: a body too big to hold is
// streamed upstream; once it has been sent, the client's connection is
// watched like any other, so a client that leaves while the upstream
// thinks ends the upstream request.
func TestFastPathClientGoneAfterStreamedBody(t *testing.T) {
	gone := make(chan struct{})
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, _ []byte) {
		<-r.Context().Done()
		close(gone)
	})
	b := newBridge(t, Options{}, ServerConfig{Name: "up", URL: up.srv.URL + "/mcp"})
	rc := dialRaw(t, b)
	body := strings.Repeat("x", 2<<20)
	rc.send(t, fmt.Sprintf("POST /up/mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body))
	if s := up.next(t); len(s.body) != len(body) {
		t.Fatalf("upstream got %d body bytes, want %d", len(s.body), len(body))
	}
	_ = rc.c.Close()
	select {
	case <-gone:
	case <-time.After(connWait):
		up.srv.CloseClientConnections()
		t.Fatal("the upstream request outlived the client's connection")
	}
}

// A server's rate limit holds on the fast path and on net/http's alike,
// with one allowance for both: an exchange is counted where it is served.
// Over it the agent answers 429 itself and the server sees nothing; other
// servers are not slowed.
func TestServerRateLimit(t *testing.T) {
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	})
	// A token per 1,000 s: none comes back while the test runs.
	b := newBridge(t, Options{},
		ServerConfig{Name: "up", URL: up.srv.URL + "/mcp", Rate: 0.001, Burst: 2},
		ServerConfig{Name: "lim", Command: []string{testServerBin}, Rate: 0.001, Burst: 1})
	// A connection per request: one the fast path handed over stays with
	// net/http.
	tr := &http.Transport{DisableKeepAlives: true}
	t.Cleanup(tr.CloseIdleConnections)
	send := func(server string, body io.Reader) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, b.srv.URL+"/"+server+"/mcp", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp, readBody(t, resp)
	}
	byNetHTTP := func(resp *http.Response) bool { return resp.Header["Date"] != nil }
	ping := func() io.Reader { return strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`) }
	overLimit := func(resp *http.Response, body, server string) {
		t.Helper()
		if resp.StatusCode != http.StatusTooManyRequests {
			t.Fatalf("%s: %d %s, want 429", server, resp.StatusCode, body)
		}
		if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 998 || ra > 1000 {
			t.Errorf("Retry-After %q, want ~1000", resp.Header.Get("Retry-After"))
		}
		if !strings.Contains(body, `"reason":"rate_limited"`) || !strings.Contains(body, `server \"`+server+`\" is over its rate limit of 0.001 requests/s`) {
			t.Errorf("body %s", body)
		}
	}

	resp, body := send("up", ping())
	if resp.StatusCode != http.StatusOK || byNetHTTP(resp) {
		t.Fatalf("first: %d (net/http: %v) %s", resp.StatusCode, byNetHTTP(resp), body)
	}
	// A body of unknown length goes chunked: net/http's, and counted there.
	resp, body = send("up", io.MultiReader(ping()))
	if resp.StatusCode != http.StatusOK || !byNetHTTP(resp) {
		t.Fatalf("second: %d (net/http: %v) %s", resp.StatusCode, byNetHTTP(resp), body)
	}
	resp, body = send("up", ping())
	overLimit(resp, body, "up")
	if byNetHTTP(resp) {
		t.Error("the fast path's refusal was net/http's")
	}
	resp, body = send("up", io.MultiReader(ping()))
	overLimit(resp, body, "up")
	if n := len(up.seen); n != 2 {
		t.Errorf("the upstream saw %d requests, want the 2 allowed", n)
	}

	resp, body = send("lim", strings.NewReader(initBody))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stdio first: %d %s", resp.StatusCode, body)
	}
	resp, body = send("lim", strings.NewReader(initBody))
	overLimit(resp, body, "lim")
	if resp, body = send("ts", strings.NewReader(initBody)); resp.StatusCode != http.StatusOK {
		t.Fatalf("a server without a limit: %d %s", resp.StatusCode, body)
	}
}

// With UpstreamNetworks, a URL server is dialed only at addresses inside
// them, checked on what its name resolved to: outside, 502 naming the
// address, on the fast path and on net/http's, and the upstream sees
// nothing. An address literal outside them is refused up front.
func TestUpstreamNetworks(t *testing.T) {
	up := newRecUpstream(t, func(w http.ResponseWriter, r *http.Request, body []byte) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprint(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
	})
	_, port, err := net.SplitHostPort(strings.TrimPrefix(up.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	byName := "http://localhost:" + port + "/mcp" // resolved when dialed
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	elsewhere := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}

	post := func(t *testing.T, nets []netip.Prefix, body io.Reader) (int, string) {
		t.Helper()
		b := newBridge(t, Options{UpstreamNetworks: nets}, ServerConfig{Name: "up", URL: byName})
		tr := &http.Transport{DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodPost, b.srv.URL+"/up/mcp", body)
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, readBody(t, resp)
	}
	ping := func() io.Reader { return strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"ping"}`) }

	if code, body := post(t, loopback, ping()); code != http.StatusOK {
		t.Fatalf("inside: %d %s", code, body)
	}
	up.next(t)
	for name, body := range map[string]io.Reader{"fast path": ping(), "net/http": io.MultiReader(ping())} {
		code, got := post(t, elsewhere, body)
		if code != http.StatusBadGateway || !strings.Contains(got, "is outside upstream_networks") {
			t.Errorf("%s, outside: %d %s", name, code, got)
		}
	}
	if n := len(up.seen); n != 0 {
		t.Errorf("the upstream saw %d requests from outside the networks", n)
	}

	_, err = NewHandler([]ServerConfig{{Name: "up", URL: up.srv.URL + "/mcp"}}, Options{UpstreamNetworks: elsewhere})
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1 is outside upstream_networks") {
		t.Errorf("an address literal outside: %v", err)
	}
}
