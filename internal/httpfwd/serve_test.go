package httpfwd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// serveRig serves handler on the fast path (every exchange a Serve one)
// on loopback TCP.
type serveRig struct {
	addr   string
	panics atomic.Int32
}

func newServeRig(t *testing.T, handler http.Handler) *serveRig {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	rig := &serveRig{addr: ln.Addr().String()}
	fast := &FastPath{
		IdleTimeout: time.Minute, HeaderTimeout: time.Minute,
		BadRequest: func(reason string) []byte { return []byte(reason) },
		Route: func(h *Head, out []byte) *Exchange {
			return &Exchange{Serve: func(ctx context.Context, w http.ResponseWriter, h *Head, body []byte) {
				r, err := NewRequest(ctx, h, body)
				if err != nil {
					w.WriteHeader(http.StatusBadRequest)
					return
				}
				handler.ServeHTTP(w, r)
			}}
		},
		Logger: slog.New(panicCounter{&rig.panics}),
	}
	cs := NewConnServer(fast.ServeConn, ln.Addr())
	served := make(chan struct{})
	go func() { defer close(served); _ = cs.Serve(ln) }()
	t.Cleanup(func() { cs.Close(); <-served })
	return rig
}

type panicCounter struct{ n *atomic.Int32 }

func (p panicCounter) Enabled(context.Context, slog.Level) bool { return true }
func (p panicCounter) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panic") {
		p.n.Add(1)
	}
	return nil
}
func (p panicCounter) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p panicCounter) WithGroup(string) slog.Handler      { return p }

// exchangeRaw sends raw requests on one new connection and reads an answer
// to each. With wantClose it then checks that the server closed the
// connection (EOF, not the read timing out).
func exchangeRaw(t *testing.T, addr string, wantClose bool, reqs ...string) (answers []rawAnswer) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	br := bufio.NewReader(c)
	for _, req := range reqs {
		_, err := io.WriteString(c, req)
		require.NoError(t, err)
		resp, err := http.ReadResponse(br, nil)
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		resp.Body.Close()
		answers = append(answers, rawAnswer{resp, string(body)})
	}
	if wantClose {
		_, err = br.ReadByte()
		assert.ErrorIs(t, err, io.EOF, "the server did not close the connection")
	}
	return answers
}

type rawAnswer struct {
	*http.Response
	body string
}

// framing is how an answer was delimited.
func (a rawAnswer) framing() string {
	switch {
	case a.StatusCode == http.StatusNoContent || a.StatusCode == http.StatusNotModified:
		return "none"
	case slices.Contains(a.TransferEncoding, "chunked"):
		return "chunked"
	case a.ContentLength >= 0:
		return fmt.Sprintf("length %d", a.ContentLength)
	}
	return "none"
}

// headers renders an answer's header lines other than framing and Date.
func (a rawAnswer) headers() string {
	var lines []string
	for k, vs := range a.Header {
		if k == "Date" || k == "Content-Length" {
			continue
		}
		lines = append(lines, k+": "+strings.Join(vs, ", "))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// The same handler answers the same requests alike on the fast path and
// behind net/http's server: status, header lines, body, and the request it
// sees (method, target, Host, headers, body).
func TestServeLikeNetHTTP(t *testing.T) {
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var hdr []string
		for k, vs := range r.Header {
			hdr = append(hdr, k+"="+strings.Join(vs, "|"))
		}
		slices.Sort(hdr)
		w.Header().Set("X-Seen", fmt.Sprintf("%s %s path=%q query=%q host=%q len=%d proto=%s body=%q hdr=%v",
			r.Method, r.RequestURI, r.URL.Path, r.URL.RawQuery, r.Host, r.ContentLength, r.Proto, body, hdr))
		switch r.URL.Query().Get("do") {
		case "json":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"ok":true}`))
		case "nothing":
		case "accepted":
			w.WriteHeader(http.StatusAccepted)
		case "nocontent":
			w.WriteHeader(http.StatusNoContent)
			if _, err := w.Write([]byte("x")); !errors.Is(err, http.ErrBodyNotAllowed) {
				w.Header().Set("X-Bad", "write after 204 did not fail")
			}
		case "twice":
			w.WriteHeader(http.StatusTeapot)
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write([]byte("short and stout"))
		case "sse":
			w.Header().Set("Content-Type", "text/event-stream")
			rc := http.NewResponseController(w)
			_ = rc.SetWriteDeadline(time.Now().Add(time.Minute))
			for i := range 3 {
				fmt.Fprintf(w, "id: %d\ndata: {}\n\n", i)
				_ = rc.Flush()
			}
		case "large":
			chunk := strings.Repeat("0123456789abcdef", 1<<10)
			for range 5 {
				_, _ = io.WriteString(w, chunk)
			}
		case "bigwrite":
			_, _ = w.Write([]byte(strings.Repeat("x", 3*serveBuffer)))
			_, _ = w.Write([]byte("tail"))
		case "crlf":
			w.Header().Set("X-Split", "a\r\nInjected: yes")
			w.Header()["Bad Name"] = []string{"v"}
		}
	})
	net := httptest.NewServer(handler)
	t.Cleanup(net.Close)
	fast := newServeRig(t, handler)

	reqs := []struct {
		name, req string
		framing   string // on the fast path
	}{
		{"json", "POST /mcp?do=json HTTP/1.1\r\nHost: h\r\ncontent-type: application/json\r\nMCP-Protocol-Version: 2025-11-25\r\nX-Custom-thing: 1\r\nAccept: a\r\nAccept: b\r\nContent-Length: 5\r\n\r\nhello", "length 11"},
		{"nothing", "GET /a%20b/mcp?do=nothing&x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", "length 0"},
		{"accepted", "POST /mcp?do=accepted HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}", "length 0"},
		{"nocontent", "DELETE /mcp?do=nocontent HTTP/1.1\r\nHost: h\r\n\r\n", "none"},
		{"twice", "GET /mcp?do=twice HTTP/1.1\r\nHost: h\r\n\r\n", "length 15"},
		{"sse", "GET /mcp?do=sse HTTP/1.1\r\nHost: h\r\nAccept: text/event-stream\r\n\r\n", "chunked"},
		{"large", "GET /mcp?do=large HTTP/1.1\r\nHost: h\r\n\r\n", "chunked"},
		{"bigwrite", "GET /mcp?do=bigwrite HTTP/1.1\r\nHost: h\r\n\r\n", "chunked"},
		{"crlf", "GET /mcp?do=crlf HTTP/1.1\r\nHost: h\r\n\r\n", "length 0"},
	}
	for _, tc := range reqs {
		t.Run(tc.name, func(t *testing.T) {
			want := exchangeRaw(t, net.Listener.Addr().String(), false, tc.req)
			got := exchangeRaw(t, fast.addr, false, tc.req)
			assert.Equal(t, want[0].StatusCode, got[0].StatusCode, "status")
			assert.Equal(t, want[0].headers(), got[0].headers(), "header lines")
			assert.Equal(t, want[0].body, got[0].body, "body")
			assert.Equal(t, tc.framing, got[0].framing(), "framing")
			assert.Nil(t, got[0].Header["Injected"], "a header value ended the head")
		})
	}
}

// Exchanges follow each other on one connection; a handler's Connection:
// close, a request's, or a panic end it; a panic is logged.
func TestServeConnectionReuse(t *testing.T) {
	rig := newServeRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/panic":
			_, _ = io.WriteString(w, "partial")
			w.(http.Flusher).Flush()
			panic("handler bug")
		case "/close":
			w.Header().Set("Connection", "close")
		}
		_, _ = io.WriteString(w, r.URL.Path)
	}))
	get := func(path string, extra ...string) string {
		return "GET " + path + " HTTP/1.1\r\nHost: h\r\n" + strings.Join(extra, "") + "\r\n"
	}

	// Connection: close from the client, then from the handler.
	answers := exchangeRaw(t, rig.addr, true, get("/1"), get("/2"), get("/3", "Connection: close\r\n"))
	require.Len(t, answers, 3)
	for i, a := range answers {
		assert.Equal(t, fmt.Sprintf("/%d", i+1), a.body)
	}
	exchangeRaw(t, rig.addr, true, get("/a"), get("/close"))

	c, err := net.Dial("tcp", rig.addr)
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.SetDeadline(time.Now().Add(10*time.Second)))
	_, err = io.WriteString(c, get("/panic"))
	require.NoError(t, err)
	all, err := io.ReadAll(c)
	require.NoError(t, err, "the connection was not closed after the panic")
	// The answer began (chunked) and was cut short: no final chunk.
	assert.Contains(t, string(all), "partial")
	assert.NotContains(t, string(all), "0\r\n\r\n")
	assert.Equal(t, int32(1), rig.panics.Load(), "panic not logged")

	answers = exchangeRaw(t, rig.addr, false, get("/after"))
	assert.Equal(t, "/after", answers[0].body, "the server did not go on after a panic")
}

// A client that leaves during a long exchange ends the request's context.
func TestServeClientLeaves(t *testing.T) {
	done := make(chan error, 1)
	started := make(chan struct{})
	rig := newServeRig(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		w.(http.Flusher).Flush()
		close(started)
		select {
		case <-r.Context().Done():
			done <- nil
		case <-time.After(10 * time.Second):
			done <- errors.New("the request's context did not end")
		}
	}))
	c, err := net.Dial("tcp", rig.addr)
	require.NoError(t, err)
	_, err = io.WriteString(c, "GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
	require.NoError(t, err)
	<-started
	require.NoError(t, c.Close())
	require.NoError(t, <-done)
}

func TestNewRequestRefusesBadTarget(t *testing.T) {
	h := new(Head)
	require.NoError(t, ReadHead(bufio.NewReader(strings.NewReader("GET *x HTTP/1.1\r\nHost: h\r\n\r\n")), h))
	_, err := NewRequest(context.Background(), h, nil)
	assert.ErrorContains(t, err, `request target "*x"`)
}

func TestCanonicalKey(t *testing.T) {
	for _, name := range []string{"accept", "MCP-PROTOCOL-VERSION", "last-event-id", "x-custom-THING", "Content-Type", "traceparent"} {
		assert.Equal(t, http.CanonicalHeaderKey(name), canonicalKey([]byte(name)), name)
	}
	for _, k := range commonKeys {
		assert.Equal(t, http.CanonicalHeaderKey(k), k, "commonKeys must be canonical")
	}
}

// NewRequest sees a head as net/http's server does: for every head both
// accept, the same method, target, URL, Host and header.
func FuzzNewRequest(f *testing.F) {
	for _, s := range []string{
		"POST /ts/mcp?x=1 HTTP/1.1\r\nHost: h\r\nAccept: a\r\naccept: b\r\nContent-Length: 0\r\n\r\n",
		"GET //x/mcp HTTP/1.1\r\nHost: [::1]:80\r\nmcp-session-id: 1\r\n\r\n",
		"GET http://other/ts/mcp HTTP/1.1\r\nHost: h\r\nX-A: \t v \r\n\r\n",
		"DELETE /a%2Fb/mcp HTTP/1.1\r\nHost: h\r\n\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		h := new(Head)
		if ReadHead(bufio.NewReader(strings.NewReader(raw)), h) != nil {
			return
		}
		got, err := NewRequest(context.Background(), h, nil)
		want, werr := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
		if err != nil || werr != nil {
			return // one refuses: the fast path hands such heads to net/http
		}
		if got.Method != want.Method || got.RequestURI != want.RequestURI || got.URL.String() != want.URL.String() || got.Host != want.Host {
			t.Fatalf("request line: got %s %s %s host %q, want %s %s %s host %q",
				got.Method, got.RequestURI, got.URL, got.Host, want.Method, want.RequestURI, want.URL, want.Host)
		}
		if !reflect.DeepEqual(got.Header, want.Header) {
			t.Fatalf("header: got %v, want %v", got.Header, want.Header)
		}
	})
}
