package relay

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// These tests drive the fast path (ServeConn) the way clients reach it: over
// loopback TCP, through an httpfwd.ConnServer in front of the net/http server,
// as the relay binary serves clients. Raw connections (net.Dial) pin every
// exchange of a test to one connection and show the bytes on the wire.

// connTimeout bounds every wait: reaching it means the test failed.
const connTimeout = 10 * time.Second

// connFixture is newFixture's stack with the parts these tests need at hand:
// the ConnServer (Shutdown), and a count of connections the fast path handed
// to net/http, which tells which path served an exchange.
type connFixture struct {
	addr     string // host:port of the client listener
	url      string // http://addr
	agents   *pipeAgents
	h        *Handler
	fast     *httpfwd.ConnServer
	handoffs atomic.Int64
}

func newConnFixture(t *testing.T, agentHandler http.Handler) *connFixture {
	t.Helper()
	ln := &pipeListener{ch: make(chan net.Conn), done: make(chan struct{})}
	agents := &pipeAgents{servers: map[string][]string{"dc1": {"notes", "wiki"}}, ln: ln}
	agentSrv := &http.Server{Handler: agentHandler}
	agentServed := make(chan struct{})
	go func() {
		defer close(agentServed)
		_ = agentSrv.Serve(ln)
	}()

	h, err := NewHandler(Config{
		Agents:      closingAgents{agents},
		KnownAgents: []string{"dc1", "dc2"},
		Clients: []Client{
			{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"dc1/*", "dc2/*"}},
			{Name: "wikionly", TokenSHA256: hash("wiki-token"), Allow: []string{"*/wiki"}},
			// A token per 1,000 s: none comes back while a test runs.
			{Name: "throttled", TokenSHA256: hash("slow-token"), Allow: []string{"dc1/*"}, Rate: 0.001, Burst: 2},
		},
		AllowedOrigins: []string{"https://app.example.com"},
	})
	require.NoError(t, err)
	f := &connFixture{agents: agents, h: h}
	f.addr, f.fast = startFront(t, h, func(ctx context.Context, c net.Conn) net.Conn {
		rest := h.ServeConn(ctx, c)
		if rest != nil {
			f.handoffs.Add(1)
		}
		return rest
	})
	f.url = "http://" + f.addr
	// Registered last, so it runs first: an exchange a failed test left
	// waiting on the agent ends, so closing the front cannot hang.
	t.Cleanup(func() {
		_ = agentSrv.Close()
		<-agentServed
	})
	return f
}

// startFront serves h as the relay binary serves clients — the fast path
// on a listener of its own, handing the rest to net/http — until the test
// ends (then h is closed too), and returns the listener's address and the
// fast path's server. serve, if set, stands in for h.ServeConn.
func startFront(t testing.TB, h *Handler, serve httpfwd.ServeConnFunc) (string, *httpfwd.ConnServer) {
	t.Helper()
	if serve == nil {
		serve = h.ServeConn
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	fast := httpfwd.NewConnServer(serve, ln.Addr())
	front := httptest.NewUnstartedServer(h)
	front.Listener = fast.Handoff()
	front.Start()
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = fast.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = fast.Close()
		<-served
		front.Close()
		h.Close()
	})
	return ln.Addr().String(), fast
}

// closingAgents is pipeAgents whose Dial fails once the agent's server is
// closed, instead of waiting for it.
type closingAgents struct{ *pipeAgents }

func (a closingAgents) Dial(ctx context.Context, agent string) (net.Conn, error) {
	if online, _ := a.Offers(agent, ""); !online {
		return nil, errors.New("offline")
	}
	c1, c2 := net.Pipe()
	select {
	case a.ln.ch <- c2:
		return c1, nil
	case <-a.ln.done:
		_, _ = c1.Close(), c2.Close()
		return nil, net.ErrClosed
	case <-ctx.Done():
		_, _ = c1.Close(), c2.Close()
		return nil, ctx.Err()
	}
}

// client returns an http.Client of the test's own (no redirects followed),
// whose idle connections are closed when the test ends.
func (f *connFixture) client(t *testing.T) *http.Client {
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
}

// rawConn is a client connection spoken to in wire form.
type rawConn struct {
	t    *testing.T
	c    net.Conn
	br   *bufio.Reader
	host string
}

func (f *connFixture) dial(t *testing.T) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", f.addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(connTimeout)))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c), host: f.addr}
}

// request renders a request; Host and, with a body, Content-Length are
// added unless hdr has them.
func (rc *rawConn) request(method, target string, hdr []string, body string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\n", method, target)
	hasHost, hasLen := false, false
	for _, l := range hdr {
		name, _, _ := strings.Cut(l, ":")
		hasHost = hasHost || strings.EqualFold(name, "Host")
		hasLen = hasLen || strings.EqualFold(name, "Content-Length")
		b.WriteString(l + "\r\n")
	}
	if !hasHost {
		b.WriteString("Host: " + rc.host + "\r\n")
	}
	if body != "" && !hasLen {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	return b.String()
}

func (rc *rawConn) send(s string) {
	rc.t.Helper()
	_, err := io.WriteString(rc.c, s)
	require.NoError(rc.t, err)
}

// read reads one answer to a request made with method.
func (rc *rawConn) read(method string) (*http.Response, []byte) {
	rc.t.Helper()
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: method})
	require.NoError(rc.t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(rc.t, err)
	_ = resp.Body.Close()
	return resp, body
}

// do sends one request and reads its answer.
func (rc *rawConn) do(method, target string, hdr []string, body string) (*http.Response, []byte) {
	rc.t.Helper()
	rc.send(rc.request(method, target, hdr, body))
	return rc.read(method)
}

// requireClosed checks that the relay closed the connection (and sent
// nothing more).
func (rc *rawConn) requireClosed() {
	rc.t.Helper()
	b, err := rc.br.ReadByte()
	require.ErrorIs(rc.t, err, io.EOF, "connection still open (read %q)", b)
}

// requireErrorBody checks a JSON-RPC shaped refusal and returns it.
func requireErrorBody(t *testing.T, resp *http.Response, body []byte, status int, reason string) errorBody {
	t.Helper()
	require.Equal(t, status, resp.StatusCode, "body: %s", body)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var eb errorBody
	require.NoError(t, json.Unmarshal(body, &eb), "body is JSON: %s", body)
	require.Equal(t, "2.0", eb.JSONRPC)
	require.Equal(t, -32000, eb.Error.Code)
	require.Equal(t, reason, eb.Error.Data.Reason, "body: %s", body)
	require.NotEmpty(t, eb.Error.Message)
	return eb
}

// seenReq is what the agent received.
type seenReq struct {
	Method, Host, RequestURI string
	ContentLength            int64
	Header                   http.Header
	Body                     string
}

// recordingAgent answers every request with a JSON echo of it and, if seen
// is not nil, reports it there.
func recordingAgent(seen chan<- seenReq) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s := seenReq{Method: r.Method, Host: r.Host, RequestURI: r.RequestURI,
			ContentLength: r.ContentLength, Header: r.Header.Clone(), Body: string(body)}
		if seen != nil {
			seen <- s
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"path": r.URL.Path, "client": r.Header.Get(ClientHeader), "body": string(body),
		})
	})
}

func echoOf(t *testing.T, body []byte) map[string]string {
	t.Helper()
	var got map[string]string
	require.NoError(t, json.Unmarshal(body, &got), "body: %s", body)
	return got
}

func recv[T any](t *testing.T, ch <-chan T) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(connTimeout):
		t.Fatal("timed out")
		panic("unreachable")
	}
}

// TestConnKeepAliveAndHandoff runs admitted exchanges on one connection
// (one by one and pipelined), then a refusal, which hands the connection to
// net/http, which goes on serving it.
func TestConnKeepAliveAndHandoff(t *testing.T) {
	f := newConnFixture(t, recordingAgent(nil))
	rc := f.dial(t)
	auth := "Authorization: Bearer ci-token"

	for i := range 3 {
		msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"ping"}`, i)
		resp, body := rc.do("POST", "/dc1/notes/mcp", []string{auth, "Content-Type: application/json"}, msg)
		require.Equal(t, 200, resp.StatusCode, "body: %s", body)
		require.False(t, resp.Close)
		got := echoOf(t, body)
		require.Equal(t, "/notes/mcp", got["path"])
		require.Equal(t, "ci", got["client"])
		require.Equal(t, msg, got["body"])
	}
	// Pipelined: the second head arrives with the first.
	rc.send(rc.request("POST", "/dc1/notes/mcp", []string{auth}, `{"n":"a"}`) +
		rc.request("GET", "/dc1/wiki/mcp", []string{auth}, ""))
	resp, body := rc.read("POST")
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, `{"n":"a"}`, echoOf(t, body)["body"])
	resp, body = rc.read("GET")
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "/wiki/mcp", echoOf(t, body)["path"])
	require.Zero(t, f.handoffs.Load(), "admitted exchanges stay on the fast path")

	resp, body = rc.do("POST", "/dc1/notes/mcp", []string{"Authorization: Bearer nope"}, `{}`)
	requireErrorBody(t, resp, body, http.StatusUnauthorized, "unauthorized")
	require.Equal(t, `Bearer realm="mcptun", error="invalid_token"`, resp.Header.Get("WWW-Authenticate"))
	require.False(t, resp.Close, "a refusal keeps the connection")
	require.EqualValues(t, 1, f.handoffs.Load(), "the refusal was net/http's")

	for i := range 2 {
		msg := fmt.Sprintf(`{"after":%d}`, i)
		resp, body := rc.do("POST", "/dc1/notes/mcp", []string{auth}, msg)
		require.Equal(t, 200, resp.StatusCode, "body: %s", body)
		require.Equal(t, msg, echoOf(t, body)["body"])
		require.Equal(t, "ci", echoOf(t, body)["client"])
	}
	resp, body = rc.do("POST", "/dc1/notes/mcp", nil, `{}`)
	requireErrorBody(t, resp, body, http.StatusUnauthorized, "unauthorized")
	require.Equal(t, `Bearer realm="mcptun"`, resp.Header.Get("WWW-Authenticate"))
	require.EqualValues(t, 1, f.handoffs.Load(), "a connection is handed over once")
}

// TestConnAgentSeesRewrittenHead checks what crosses the tunnel, on the fast
// path and on a connection handed to net/http for its Connection option:
// the same thing.
func TestConnAgentSeesRewrittenHead(t *testing.T) {
	seen := make(chan seenReq, 1)
	f := newConnFixture(t, recordingAgent(seen))
	hdr := []string{
		"Authorization: Bearer ci-token",
		"Cookie: session=1",
		"X-Mcptun-Client: forged",
		"cookie: other=2",
		"x-mcptun-client: forged-too",
		"Content-Type: application/json",
		"Mcp-Session-Id: s-1",
		"X-Custom:   spaced value  ",
		"Keep-Alive: timeout=5",
		"Proxy-Authorization: Basic eDp5",
		"Te: trailers",
	}
	const msg = `{"jsonrpc":"2.0","id":7,"method":"tools/list"}`
	check := func(t *testing.T, s seenReq) {
		t.Helper()
		require.Equal(t, "POST", s.Method)
		require.Equal(t, "dc1", s.Host, "Host is the agent's name")
		require.Equal(t, "/notes/mcp", s.RequestURI)
		require.Equal(t, []string{"ci"}, s.Header.Values(ClientHeader), "the relay names the client, once")
		require.Empty(t, s.Header.Values("Authorization"), "client credentials never reach the agent")
		require.Empty(t, s.Header.Values("Cookie"))
		for _, hop := range []string{"Connection", "Keep-Alive", "Proxy-Authorization", "Te", "X-Drop"} {
			require.Empty(t, s.Header.Values(hop), hop)
		}
		require.Equal(t, []string{"application/json"}, s.Header.Values("Content-Type"))
		require.Equal(t, []string{"s-1"}, s.Header.Values("Mcp-Session-Id"))
		require.Equal(t, []string{"spaced value"}, s.Header.Values("X-Custom"))
		require.EqualValues(t, len(msg), s.ContentLength)
		require.Equal(t, msg, s.Body)
	}

	t.Run("fast path", func(t *testing.T) {
		rc := f.dial(t)
		resp, body := rc.do("POST", "/dc1/notes/mcp?ignored=1", hdr, msg)
		require.Equal(t, 200, resp.StatusCode, "body: %s", body)
		check(t, recv(t, seen))
		require.Zero(t, f.handoffs.Load())
	})
	t.Run("connection option", func(t *testing.T) {
		rc := f.dial(t)
		resp, body := rc.do("POST", "/dc1/notes/mcp?ignored=1", append(hdr, "Connection: X-Drop", "X-Drop: 1"), msg)
		require.Equal(t, 200, resp.StatusCode, "body: %s", body)
		check(t, recv(t, seen))
		require.EqualValues(t, 1, f.handoffs.Load(), "Connection options are net/http's")
	})
}

// TestConnAdmitsAsNetHTTP checks that the fast path decides as net/http
// does when a deciding header comes twice: a request the net/http path
// refuses must not get through on the fast path.
func TestConnAdmitsAsNetHTTP(t *testing.T) {
	f := newConnFixture(t, recordingAgent(nil))
	for _, tc := range []struct {
		name string
		hdr  []string
	}{
		{"two tokens, first out of scope", []string{"Authorization: Bearer wiki-token", "Authorization: Bearer ci-token"}},
		{"two tokens, first in scope", []string{"Authorization: Bearer ci-token", "Authorization: Bearer wiki-token"}},
		{"two tokens, first invalid", []string{"Authorization: Bearer nope", "Authorization: Bearer ci-token"}},
		{"two origins, first foreign", []string{"Authorization: Bearer ci-token", "Origin: http://evil.example.com", "Origin: https://app.example.com"}},
		{"two origins, first allowed", []string{"Authorization: Bearer ci-token", "Origin: https://app.example.com", "Origin: http://evil.example.com"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			viaHTTP, bodyHTTP := f.dial(t).do("POST", "/dc1/notes/mcp", append(tc.hdr, "Connection: X-Force", "X-Force: 1"), `{}`)
			viaFast, bodyFast := f.dial(t).do("POST", "/dc1/notes/mcp", tc.hdr, `{}`)
			require.Equal(t, viaHTTP.StatusCode, viaFast.StatusCode, "net/http: %s\nfast path: %s", bodyHTTP, bodyFast)
			if viaHTTP.StatusCode != 200 {
				require.JSONEq(t, string(bodyHTTP), string(bodyFast))
			}
		})
	}
}

// TestConnOddPathsGoToNetHTTP checks that paths net/http's mux would clean
// or unescape are left to it, and answered as the Handler answers them
// without the fast path.
func TestConnOddPathsGoToNetHTTP(t *testing.T) {
	f := newConnFixture(t, recordingAgent(nil))
	// An agent announcing names that are dot segments or escapes (the
	// relay takes the names agents announce) must not make the fast path
	// take such paths literally.
	f.agents.mu.Lock()
	f.agents.servers["dc1"] = append(f.agents.servers["dc1"], ".", "..", "a%41", "%2E")
	f.agents.mu.Unlock()
	const here = "/dc1/notes/mcp"
	for _, tc := range []struct {
		target   string
		status   int
		location string // for redirects
		reason   string // for refusals
		path     string // reached the agent there
	}{
		{target: "/dc1/notes/./mcp", status: 307, location: here},
		{target: "/dc1/./notes/mcp", status: 307, location: here},
		{target: "/dc1/x/../notes/mcp", status: 307, location: here},
		{target: "//dc1/notes/mcp", status: 307, location: here},
		{target: "/dc1//notes/mcp", status: 307, location: here},
		{target: "/dc1/notes//mcp", status: 307, location: here},
		{target: "/dc1/./mcp", status: 307, location: "/dc1/mcp"},
		{target: "/dc1/../mcp", status: 307, location: "/mcp"},
		{target: "/dc1/notes/mcp/", status: 404, reason: "not_found"},
		{target: "/dc1%2Fnotes/mcp", status: 404, reason: "not_found"},
		{target: "/dc1/notes%2Fx/mcp", status: 404, reason: "unknown_server"},
		{target: "/dc1/a%41/mcp", status: 404, reason: "unknown_server"},
		{target: "/dc1/no%74es/mcp", status: 200, path: "/notes/mcp"},
		{target: "/dc1/%2E%2E/mcp", status: 200, path: "/../mcp"},
	} {
		t.Run(tc.target, func(t *testing.T) {
			req := httptest.NewRequest("POST", tc.target, strings.NewReader(`{}`))
			req.Header.Set("Authorization", "Bearer ci-token")
			want := httptest.NewRecorder()
			f.h.ServeHTTP(want, req)

			before := f.handoffs.Load()
			resp, body := f.dial(t).do("POST", tc.target, []string{"Authorization: Bearer ci-token"}, `{}`)
			require.Equal(t, before+1, f.handoffs.Load(), "served by net/http")
			require.Equal(t, want.Code, resp.StatusCode, "body: %s", body)
			require.Equal(t, want.Header().Get("Location"), resp.Header.Get("Location"))
			require.Equal(t, want.Body.String(), string(body))

			require.Equal(t, tc.status, resp.StatusCode, "body: %s", body)
			switch {
			case tc.location != "":
				require.Equal(t, tc.location, resp.Header.Get("Location"))
			case tc.reason != "":
				requireErrorBody(t, resp, body, tc.status, tc.reason)
			default:
				require.Equal(t, tc.path, echoOf(t, body)["path"])
			}
		})
	}
}

// TestConnMalformedHead checks that a head the fast path cannot parse gets
// a 400 with a JSON body saying why, and the connection is closed.
func TestConnMalformedHead(t *testing.T) {
	f := newConnFixture(t, recordingAgent(nil))
	const line = "POST /dc1/notes/mcp HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ci-token\r\n"
	for _, tc := range []struct {
		name, head, reason string
	}{
		{"folding", line + "X-A: 1\r\n  folded\r\n\r\n", "obsolete line folding"},
		{"space in name", line + "X A: 1\r\n\r\n", `invalid byte ' ' in header name`},
		{"no name", line + ": 1\r\n\r\n", "header line without a name"},
		{"no colon", line + "garbage\r\n\r\n", "header line without a name"},
		{"control byte", line + "X-A: a\x01b\r\n\r\n", `invalid byte '\x01' in value`},
		{"bad length", line + "Content-Length: 1x\r\n\r\n", `invalid Content-Length "1x"`},
		{"signed length", line + "Content-Length: +1\r\n\r\n", `invalid Content-Length "+1"`},
		{"two lengths", line + "Content-Length: 1\r\nContent-Length: 2\r\n\r\n", "conflicting Content-Length headers"},
		{"length and chunked", line + "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "both Transfer-Encoding and Content-Length"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rc := f.dial(t)
			rc.send(tc.head)
			resp, body := rc.read("POST")
			eb := requireErrorBody(t, resp, body, http.StatusBadRequest, "bad_request")
			require.Contains(t, eb.Error.Message, tc.reason)
			require.True(t, resp.Close, "Connection: close")
			rc.requireClosed()
		})
	}
	// After admitted exchanges too.
	rc := f.dial(t)
	resp, _ := rc.do("POST", "/dc1/notes/mcp", []string{"Authorization: Bearer ci-token"}, `{}`)
	require.Equal(t, 200, resp.StatusCode)
	rc.send(line + "X-A: 1\r\n folded\r\n\r\n")
	resp, body := rc.read("POST")
	requireErrorBody(t, resp, body, http.StatusBadRequest, "bad_request")
	rc.requireClosed()
	require.Zero(t, f.handoffs.Load())

	// A request line it cannot split goes to net/http, which refuses it
	// (in its own words) and closes as well.
	rc = f.dial(t)
	rc.send("GARBAGE\r\nHost: x\r\n\r\n")
	resp, _ = rc.read("GET")
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	rc.requireClosed()
}

// TestConnLargeBodyStreamed checks that a body too large to hold reaches
// the agent intact, and while the client is still sending it.
func TestConnLargeBodyStreamed(t *testing.T) {
	const size = 2 << 20
	data := make([]byte, size)
	rng := rand.NewChaCha8([32]byte{1})
	_, _ = rng.Read(data)
	started := make(chan struct{})
	var once sync.Once
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		if r.ContentLength > httpfwd.MaxHeldBody {
			if _, err := io.CopyN(h, r.Body, 64<<10); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			once.Do(func() { close(started) })
		}
		n, err := io.Copy(h, r.Body)
		if err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		if r.ContentLength > httpfwd.MaxHeldBody {
			n += 64 << 10
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"n": n, "cl": r.ContentLength, "sha": hex.EncodeToString(h.Sum(nil))})
	}))
	c := f.client(t)

	pr, pw := io.Pipe()
	writeErr := make(chan error, 1)
	go func() {
		// Half the body, then wait for the agent to be reading it: a relay
		// holding the whole body before forwarding never gets the rest.
		_, err := pw.Write(data[:size/2])
		if err == nil {
			select {
			case <-started:
				_, err = pw.Write(data[size/2:])
			case <-time.After(connTimeout):
				err = fmt.Errorf("the agent got nothing of the body while the client was sending it")
			}
		}
		_ = pw.CloseWithError(err)
		writeErr <- err
	}()
	req, err := http.NewRequest(http.MethodPost, f.url+"/dc1/notes/mcp", pr)
	require.NoError(t, err)
	req.ContentLength = size
	req.Header.Set("Authorization", "Bearer ci-token")
	reused := make(chan bool, 2)
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused <- i.Reused }}
	resp, err := c.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.NoError(t, <-writeErr)
	require.Equal(t, 200, resp.StatusCode, "body: %s", body)
	var got struct {
		N, CL int64
		SHA   string
	}
	require.NoError(t, json.Unmarshal(body, &got))
	sum := sha256.Sum256(data)
	require.Equal(t, int64(size), got.N)
	require.Equal(t, int64(size), got.CL)
	require.Equal(t, hex.EncodeToString(sum[:]), got.SHA)
	require.False(t, <-reused)

	// The connection carries the next exchange.
	req, err = http.NewRequest(http.MethodPost, f.url+"/dc1/notes/mcp", strings.NewReader("small"))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer ci-token")
	resp, err = c.Do(req.WithContext(httptrace.WithClientTrace(req.Context(), trace)))
	require.NoError(t, err)
	body, err = io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode, "body: %s", body)
	require.True(t, <-reused, "the client connection was kept")
	require.Zero(t, f.handoffs.Load())
}

// TestConnHeadAndHealthz checks that a HEAD answer carries its length but
// no body (so the next answer on the connection is read right), and that
// /healthz is served.
func TestConnHeadAndHealthz(t *testing.T) {
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", "42")
		if r.Method != http.MethodHead {
			_, _ = io.WriteString(w, `{"padding":"xxxxxxxxxxxxxxxxxxxxxxxxxxx"}`+"\n")
		}
	}))
	auth := []string{"Authorization: Bearer ci-token"}
	rc := f.dial(t)
	for i := range 2 {
		resp, body := rc.do("HEAD", "/dc1/notes/mcp", auth, "")
		require.Equal(t, 200, resp.StatusCode)
		require.EqualValues(t, 42, resp.ContentLength)
		require.Empty(t, body)
		resp, body = rc.do("GET", "/dc1/notes/mcp", auth, "")
		require.Equal(t, 200, resp.StatusCode)
		require.Len(t, body, 42)
		if i == 0 {
			require.Zero(t, f.handoffs.Load())
		}
		resp, body = rc.do("GET", "/healthz", nil, "")
		require.Equal(t, 200, resp.StatusCode)
		require.Equal(t, "ok\n", string(body))
		require.EqualValues(t, 1, f.handoffs.Load(), "/healthz is net/http's")
	}
	resp, err := f.client(t).Get(f.url + "/healthz")
	require.NoError(t, err)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "text/plain", resp.Header.Get("Content-Type"))
	require.Equal(t, "ok\n", string(body))
}

// TestConnClientLeavesStream checks that a client closing its connection
// during an SSE answer ends the exchange at the agent.
func TestConnClientLeavesStream(t *testing.T) {
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		t.Run(method, func(t *testing.T) {
			gone := make(chan struct{})
			f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body) // net/http watches the conn once the body is read
				w.Header().Set("Content-Type", "text/event-stream")
				_, _ = io.WriteString(w, "id: 0\ndata: {\"n\":0}\n\n")
				w.(http.Flusher).Flush()
				<-r.Context().Done()
				close(gone)
			}))
			var body io.Reader
			if method == http.MethodPost {
				body = strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`)
			}
			req, err := http.NewRequest(method, f.url+"/dc1/notes/mcp", body)
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer ci-token")
			req.Header.Set("Accept", "text/event-stream")
			resp, err := f.client(t).Do(req)
			require.NoError(t, err)
			require.Equal(t, 200, resp.StatusCode)
			require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
			line, err := bufio.NewReader(resp.Body).ReadString('\n')
			require.NoError(t, err)
			require.Equal(t, "id: 0\n", line)
			require.NoError(t, resp.Body.Close()) // mid-body: the transport closes the connection
			recv(t, (<-chan struct{})(gone))
			require.Zero(t, f.handoffs.Load())
		})
	}
}

// TestConnAgentFails checks the answers when the agent goes away or its
// stream breaks before answering: the same as net/http's path gives.
func TestConnAgentFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		offline bool
		status  int
		reason  string
	}{
		// Mid-exchange, whatever broke, one answer: the request had gone
		// out, so its outcome is unknown (it is not sent again).
		{"agent goes offline", true, http.StatusBadGateway, "upstream_outcome_unknown"},
		{"stream breaks", false, http.StatusBadGateway, "upstream_outcome_unknown"},
	} {
		for _, path := range []string{"fast", "net/http"} {
			t.Run(tc.name+"/"+path, func(t *testing.T) {
				var f *connFixture
				f = newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if tc.offline {
						f.agents.mu.Lock()
						delete(f.agents.servers, "dc1")
						f.agents.mu.Unlock()
					}
					c, _, err := w.(http.Hijacker).Hijack()
					if err == nil {
						_ = c.Close()
					}
				}))
				hdr := []string{"Authorization: Bearer ci-token"}
				if path == "net/http" {
					hdr = append(hdr, "Connection: X-Force", "X-Force: 1")
				}
				rc := f.dial(t)
				resp, body := rc.do("POST", "/dc1/notes/mcp", hdr, `{}`)
				eb := requireErrorBody(t, resp, body, tc.status, tc.reason)
				require.Equal(t, "nosniff", resp.Header.Get("X-Content-Type-Options"))
				if tc.offline {
					require.Contains(t, eb.Error.Message, `agent "dc1" disconnected after the request was sent`)
				} else {
					require.Contains(t, eb.Error.Message, "the tunnel stream broke after the request was sent")
				}
				require.Contains(t, eb.Error.Message, "may or may not have been carried out")
				want := int64(0)
				if path == "net/http" {
					want = 1
				}
				require.Equal(t, want, f.handoffs.Load())

				// The connection goes on.
				resp, body = rc.do("POST", "/dc1/notes/mcp", hdr, `{}`)
				if tc.offline {
					requireErrorBody(t, resp, body, http.StatusServiceUnavailable, "agent_offline")
					require.Equal(t, "5", resp.Header.Get("Retry-After"))
					return
				}
				requireErrorBody(t, resp, body, tc.status, tc.reason)
				require.Equal(t, want, f.handoffs.Load())
			})
		}
	}
}

// TestConnShutdown checks ConnServer.Shutdown on the fast path: an idle
// connection is closed at once, an exchange under way is finished first.
func TestConnShutdown(t *testing.T) {
	arrived, release := make(chan struct{}), make(chan struct{})
	// answered is set once the blocked exchange's handler has written its
	// answer; Shutdown must not return before.
	var answered atomic.Bool
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Block") != "" {
			arrived <- struct{}{}
			<-release
			defer answered.Store(true)
		}
		_, _ = io.WriteString(w, "done "+r.Header.Get("X-Block"))
	}))
	auth := "Authorization: Bearer ci-token"
	idle := f.dial(t)
	resp, body := idle.do("POST", "/dc1/notes/mcp", []string{auth}, `{}`)
	require.Equal(t, 200, resp.StatusCode, "body: %s", body)

	busy := f.dial(t)
	busy.send(busy.request("POST", "/dc1/notes/mcp", []string{auth, "X-Block: 1"}, `{}`))
	recv(t, (<-chan struct{})(arrived))

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), connTimeout)
		defer cancel()
		err := f.fast.Shutdown(ctx)
		// Checked where Shutdown returns, so an early return is caught
		// however soon or late it comes, not only within a test's glance.
		if err == nil && !answered.Load() {
			err = errors.New("Shutdown returned with an exchange under way")
		}
		shutdown <- err
	}()
	idle.requireClosed()
	_, err := net.Dial("tcp", f.addr)
	require.Error(t, err, "no longer accepting")

	close(release)
	resp, body = busy.read("POST")
	require.Equal(t, 200, resp.StatusCode)
	require.Equal(t, "done 1", string(body))
	busy.requireClosed()
	require.NoError(t, recv(t, (<-chan error)(shutdown)))
	require.Zero(t, f.handoffs.Load())
}

// TestConnShutdownDuringUpload checks that Shutdown lets an exchange whose
// request body is still arriving finish, as it does one waiting for its
// answer.
func TestConnShutdownDuringUpload(t *testing.T) {
	const size = 2 << 20
	data := bytes.Repeat([]byte("0123456789abcdef"), size/16)
	reading := make(chan struct{})
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := io.CopyN(io.Discard, r.Body, 64<<10); err != nil {
			return
		}
		close(reading)
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n+64<<10)
	}))
	auth := []string{"Authorization: Bearer ci-token"}
	idle := f.dial(t)
	resp, body := idle.do("POST", "/dc1/notes/mcp", auth, `{}`)
	require.Equal(t, 200, resp.StatusCode, "body: %s", body)
	rc := f.dial(t)
	full := rc.request("POST", "/dc1/notes/mcp", auth, string(data))
	rc.send(full[:len(full)-size/2])
	recv(t, (<-chan struct{})(reading))

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), connTimeout)
		defer cancel()
		shutdown <- f.fast.Shutdown(ctx)
	}()
	idle.requireClosed() // Shutdown is under way
	rc.send(full[len(full)-size/2:])
	resp, body = rc.read("POST")
	require.Equal(t, 200, resp.StatusCode, "body: %s", body)
	require.Equal(t, fmt.Sprint(size), string(body))
	require.NoError(t, recv(t, (<-chan error)(shutdown)))
}

// TestConnCloseEndsQuietStream checks that ConnServer.Close ends an SSE
// answer that is waiting for its next event even when the client's
// connection is no longer being watched (the client sent its next request
// already: pipelined).
func TestConnCloseEndsQuietStream(t *testing.T) {
	gone := make(chan struct{})
	f := newConnFixture(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: {}\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(gone)
	}))
	rc := f.dial(t)
	auth := []string{"Authorization: Bearer ci-token"}
	rc.send(rc.request("POST", "/dc1/notes/mcp", auth, `{}`) + rc.request("GET", "/dc1/wiki/mcp", auth, ""))
	resp, err := http.ReadResponse(rc.br, &http.Request{Method: "POST"})
	require.NoError(t, err)
	require.Equal(t, 200, resp.StatusCode)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "data: {}\n", line)

	closed := make(chan error, 1)
	go func() { closed <- f.fast.Close() }()
	require.NoError(t, recv(t, (<-chan error)(closed)))
	recv(t, (<-chan struct{})(gone))
}
