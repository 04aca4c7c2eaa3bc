package httpfwd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// waitLimit bounds every wait in these tests: a failure shows as a
// timeout, never as a hung test.
const waitLimit = 10 * time.Second

// rawFwd is a Forwarder to addr that counts its dials.
type rawFwd struct {
	*Forwarder
	dials atomic.Int32
}

func newRawFwd(t *testing.T, addr string) *rawFwd {
	t.Helper()
	f := &rawFwd{}
	f.Forwarder = New(func(ctx context.Context) (net.Conn, error) {
		f.dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}, Options{})
	t.Cleanup(f.Close)
	return f
}

func (f *rawFwd) idleConns() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.idle)
}

// newHTTPUpstream is an httptest upstream; the Forwarder is closed before it.
func newHTTPUpstream(t *testing.T, h http.HandlerFunc) (*httptest.Server, *rawFwd) {
	t.Helper()
	up := httptest.NewServer(h)
	t.Cleanup(func() {
		// Ends exchanges a failed test left open, so Close does not wait.
		up.CloseClientConnections()
		up.Close()
	})
	return up, newRawFwd(t, up.Listener.Addr().String())
}

// rawHead builds a request head in the form RawRequest.Head takes.
func rawHead(method, target string, lines ...string) []byte {
	var b strings.Builder
	b.WriteString(method + " " + target + " HTTP/1.1\r\nHost: upstream.test\r\n")
	for _, l := range lines {
		b.WriteString(l + "\r\n")
	}
	return []byte(b.String())
}

// landed is what ForwardRaw wrote to dst, parsed as a client would.
type landed struct {
	resp *http.Response
	body string
	raw  string
}

// exchange runs ForwardRaw into a buffer and parses what landed there; the
// framing must account for every byte.
func exchange(t *testing.T, f *rawFwd, req *RawRequest) (landed, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var out bytes.Buffer
	err := f.ForwardRaw(ctx, &out, req)
	if err != nil {
		return landed{raw: out.String()}, err
	}
	l := landed{raw: out.String()}
	method, _, _ := strings.Cut(string(req.Head), " ")
	br := bufio.NewReader(&out)
	resp, err := http.ReadResponse(br, &http.Request{Method: method})
	require.NoError(t, err, "answer %q", l.raw)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err, "answer %q", l.raw)
	require.Zero(t, br.Buffered()+out.Len(), "bytes beyond the answer's framing in %q", l.raw)
	l.resp, l.body = resp, string(body)
	return l, nil
}

// rawUpstream is a TCP listener whose connections are served by a function
// writing whatever bytes a test chooses.
type rawUpstream struct {
	ln       net.Listener
	accepted atomic.Int32
	requests atomic.Int32
	mu       sync.Mutex
	conns    []net.Conn
	wg       sync.WaitGroup
}

// newRawUpstream serves each connection with serve (its n-th request is
// answered by answer(n) on that connection, n from 0); close ends the
// connection after the answer.
func newRawUpstream(t *testing.T, answer func(n int) (resp string, close bool)) (*rawUpstream, *rawFwd) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	u := &rawUpstream{ln: ln}
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u.accepted.Add(1)
			u.mu.Lock()
			u.conns = append(u.conns, c)
			u.mu.Unlock()
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				defer c.Close()
				br := bufio.NewReader(c)
				for n := 0; ; n++ {
					req, err := http.ReadRequest(br)
					if err != nil {
						return
					}
					if _, err := io.Copy(io.Discard, req.Body); err != nil {
						return
					}
					u.requests.Add(1)
					resp, closeAfter := answer(n)
					if _, err := io.WriteString(c, resp); err != nil || closeAfter {
						return
					}
				}
			}()
		}
	}()
	f := newRawFwd(t, ln.Addr().String())
	// Registered after the Forwarder's: runs before it.
	t.Cleanup(func() {
		_ = ln.Close()
		u.mu.Lock()
		for _, c := range u.conns {
			_ = c.Close()
		}
		u.mu.Unlock()
		u.wg.Wait()
	})
	return u, f
}

func always(resp string, close bool) func(int) (string, bool) {
	return func(int) (string, bool) { return resp, close }
}

func TestForwardRawJSON(t *testing.T) {
	type seen struct{ host, uri, ctype, cl, body string }
	got := make(chan seen, 10)
	up, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got <- seen{r.Host, r.RequestURI, r.Header.Get("Content-Type"), r.Header.Get("Content-Length"), string(b)}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Mcp-Session-Id", "s1")
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":1,"result":{"echo":%s}}`, b)
	})
	_ = up
	for i := 0; i < 3; i++ {
		body := fmt.Sprintf(`{"n":%d}`, i)
		l, err := exchange(t, f, &RawRequest{
			Head:          rawHead("POST", "/mcp?x=1", "Content-Type: application/json", "Accept: application/json, text/event-stream"),
			ContentLength: int64(len(body)), Body: []byte(body),
		})
		require.NoError(t, err)
		want := `{"jsonrpc":"2.0","id":1,"result":{"echo":` + body + `}}`
		require.Equal(t, 200, l.resp.StatusCode)
		require.Equal(t, want, l.body)
		require.Equal(t, int64(len(want)), l.resp.ContentLength)
		require.Empty(t, l.resp.TransferEncoding, "a known length is passed on as it is")
		require.Equal(t, 1, strings.Count(l.raw, "Content-Length:"), l.raw)
		require.Equal(t, "application/json", l.resp.Header.Get("Content-Type"))
		require.Equal(t, "s1", l.resp.Header.Get("Mcp-Session-Id"))
		require.Empty(t, l.resp.Header.Get("X-Accel-Buffering"), "only streams get X-Accel-Buffering")
		s := <-got
		require.Equal(t, seen{"upstream.test", "/mcp?x=1", "application/json", fmt.Sprint(len(body)), body}, s)
	}
	require.Equal(t, int32(1), f.dials.Load(), "the exchanges share one pooled connection")
}

func TestForwardRawChunkedAnswer(t *testing.T) {
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "first half, ")
		w.(http.Flusher).Flush() // from here on the answer is chunked
		io.WriteString(w, strings.Repeat("x", 10000))
		io.WriteString(w, ", second half")
	})
	for i := 0; i < 2; i++ {
		l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/mcp"), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, []string{"chunked"}, l.resp.TransferEncoding)
		require.Equal(t, 1, strings.Count(strings.ToLower(l.raw), "transfer-encoding"), "upstream's framing header replaced, not doubled")
		require.Equal(t, "first half, "+strings.Repeat("x", 10000)+", second half", l.body)
	}
	require.Equal(t, int32(1), f.dials.Load(), "a chunked answer read to its end leaves the connection reusable")
}

// pipeClient runs ForwardRaw into one end of a pipe, as on a client
// connection, and returns the other end (with a read deadline) and the
// exchange's result.
func pipeClient(t *testing.T, ctx context.Context, f *rawFwd, req *RawRequest) (net.Conn, <-chan error) {
	t.Helper()
	client, server := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		err := f.ForwardRaw(ctx, server, req)
		_ = server.Close()
		errc <- err
	}()
	require.NoError(t, client.SetReadDeadline(time.Now().Add(waitLimit)))
	t.Cleanup(func() { _ = client.Close() })
	return client, errc
}

func wait[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// TestForwardRawSSEEventByEvent: each event is readable by the client
// before the upstream has produced the next.
func TestForwardRawSSEEventByEvent(t *testing.T) {
	next := make(chan struct{})
	var once sync.Once
	release := func() { once.Do(func() { close(next) }) }
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "id: 1\ndata: {\"first\":true}\n\n")
		w.(http.Flusher).Flush()
		select {
		case <-next:
		case <-r.Context().Done():
			return
		}
		fmt.Fprint(w, "id: 2\ndata: {\"second\":true}\n\n")
	})
	t.Cleanup(release) // before the upstream closes
	client, errc := pipeClient(t, context.Background(), f, &RawRequest{Head: rawHead("GET", "/mcp", "Accept: text/event-stream"), ContentLength: -1})
	br := bufio.NewReader(client)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	require.NoError(t, err, "the head arrives with the first event")
	require.Equal(t, []string{"no"}, resp.Header["X-Accel-Buffering"])
	events := bufio.NewReader(resp.Body)
	for _, want := range []string{"id: 1\n", "data: {\"first\":true}\n", "\n"} {
		line, err := events.ReadString('\n')
		require.NoError(t, err, "the first event reaches the client while the upstream waits")
		require.Equal(t, want, line)
	}
	release()
	rest, err := io.ReadAll(events)
	require.NoError(t, err)
	require.Equal(t, "id: 2\ndata: {\"second\":true}\n\n", string(rest))
	require.NoError(t, wait(t, errc, "ForwardRaw"))
	require.Equal(t, 1, f.idleConns(), "an SSE answer read to its end leaves the connection reusable")
}

// TestForwardRawParksLongStream: a chunked answer older than parkAfter
// gives its reader back while it waits (conn.park); the chunk that wakes
// it, even a one-byte one, reaches the client at once and intact.
func TestForwardRawParksLongStream(t *testing.T) {
	next := make(chan string)
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: 1\n\n")
		w.(http.Flusher).Flush()
		for {
			select {
			case s, ok := <-next:
				if !ok {
					return
				}
				fmt.Fprint(w, s)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	})
	var once sync.Once
	finish := func() { once.Do(func() { close(next) }) }
	t.Cleanup(finish)
	req := &RawRequest{Head: rawHead("GET", "/mcp", "Accept: text/event-stream"), ContentLength: -1}
	var parks atomic.Int32
	var headKept atomic.Bool
	req.OnPark = func() {
		parks.Add(1)
		headKept.Store(req.Head != nil)
	}
	client, errc := pipeClient(t, context.Background(), f, req)
	br := bufio.NewReader(client)
	resp, err := http.ReadResponse(br, &http.Request{Method: "GET"})
	require.NoError(t, err)
	body := bufio.NewReader(resp.Body)
	read := func(want string) {
		t.Helper()
		got := make([]byte, len(want))
		_, err := io.ReadFull(body, got)
		require.NoError(t, err)
		require.Equal(t, want, string(got))
	}
	read("data: 1\n\n")
	time.Sleep(parkAfter + 100*time.Millisecond) // the point: the answer grows old
	next <- "data: 2\n\n"                        // copied, then the reader parks
	read("data: 2\n\n")
	next <- "x" // a one-byte chunk wakes it
	read("x")
	next <- "\n\n"
	read("\n\n")
	finish()
	rest, err := io.ReadAll(body)
	require.NoError(t, err)
	require.Empty(t, rest)
	require.NoError(t, wait(t, errc, "ForwardRaw"))
	require.Equal(t, 1, f.idleConns(), "the parked connection is reusable")
	f.mu.Lock()
	parked := f.idle[0].pre.r != nil
	f.mu.Unlock()
	require.True(t, parked, "the reader was parked while the answer waited")
	require.Equal(t, int32(1), parks.Load(), "OnPark calls: want one, at the first park")
	require.False(t, headKept.Load(), "the request's head was still set when OnPark was called")
}

func TestPrefixReader(t *testing.T) {
	p := &prefixReader{b: 'a', has: true, err: io.ErrUnexpectedEOF, r: strings.NewReader("bc")}
	buf := make([]byte, 4)
	n, err := p.Read(buf[:0])
	require.Zero(t, n)
	require.NoError(t, err)
	n, err = p.Read(buf)
	require.Equal(t, "a", string(buf[:n]))
	require.NoError(t, err)
	_, err = p.Read(buf)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF, "the error met with the byte comes next")
	n, err = p.Read(buf)
	require.Equal(t, "bc", string(buf[:n]))
	require.NoError(t, err)
}

func TestForwardRawAccelBuffering(t *testing.T) {
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", r.URL.Query().Get("ct"))
		if v := r.URL.Query().Get("accel"); v != "" {
			w.Header().Set("X-Accel-Buffering", v)
		}
		fmt.Fprint(w, "data: x\n\n")
	})
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"ct=text/event-stream", []string{"no"}},
		{"ct=text/event-stream%3B+charset=utf-8", []string{"no"}},
		{"ct=TEXT/EVENT-STREAM", []string{"no"}},
		{"ct=text/event-stream&accel=yes", []string{"yes"}},
		{"ct=text/event-stream&accel=no", []string{"no"}},
		{"ct=application/json", nil},
		{"ct=text/event", nil},
	} {
		l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/mcp?"+tc.query), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, tc.want, l.resp.Header["X-Accel-Buffering"], tc.query)
		require.Equal(t, "data: x\n\n", l.body)
	}
}

// TestForwardRawCloseDelimited: an answer the upstream ends by closing is
// chunked for the client, and its connection is not pooled.
func TestForwardRawCloseDelimited(t *testing.T) {
	u, f := newRawUpstream(t, always("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nhello, "+strings.Repeat("y", 5000)+" world", true))
	for i := 1; i <= 2; i++ {
		l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, []string{"chunked"}, l.resp.TransferEncoding)
		require.Equal(t, "hello, "+strings.Repeat("y", 5000)+" world", l.body)
		require.True(t, strings.HasSuffix(l.raw, "\r\n0\r\n\r\n"), "ends with the last chunk")
		require.Zero(t, f.idleConns(), "a connection the upstream closed is not pooled")
		require.Equal(t, int32(i), f.dials.Load())
		require.Equal(t, int32(i), u.accepted.Load())
	}
}

// TestForwardRawHTTP10Upstream: an HTTP/1.0 answer reaches the client as
// an HTTP/1.1 one (the framing written is 1.1's: a 1.0 client would take
// the chunk lines for body), and the connection is not reused.
func TestForwardRawHTTP10Upstream(t *testing.T) {
	t.Run("close-delimited", func(t *testing.T) {
		_, f := newRawUpstream(t, always("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"ok\":true}", true))
		l, err := exchange(t, f, &RawRequest{Head: rawHead("POST", "/"), ContentLength: 2, Body: []byte("{}")})
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(l.raw, "HTTP/1.1 200 OK\r\n"), l.raw)
		require.Equal(t, `{"ok":true}`, l.body)
	})
	t.Run("content-length", func(t *testing.T) {
		u, f := newRawUpstream(t, always("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", false))
		for i := 1; i <= 2; i++ {
			l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
			require.NoError(t, err)
			require.True(t, strings.HasPrefix(l.raw, "HTTP/1.1 200 OK\r\n"), l.raw)
			require.Equal(t, "ok", l.body)
			require.Equal(t, int32(i), u.accepted.Load(), "an HTTP/1.0 connection is not reused")
		}
	})
}

func TestForwardRawHEAD(t *testing.T) {
	t.Run("content-length", func(t *testing.T) {
		_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			if r.Method == http.MethodHead {
				w.Header().Set("Content-Length", "42")
				return
			}
			fmt.Fprint(w, "after")
		})
		l, err := exchange(t, f, &RawRequest{Head: rawHead("HEAD", "/mcp"), ContentLength: -1, NoResponseBody: true})
		require.NoError(t, err)
		require.Equal(t, 200, l.resp.StatusCode)
		require.Equal(t, int64(42), l.resp.ContentLength, "the length a GET would have is passed on")
		require.Empty(t, l.body)
		require.True(t, strings.HasSuffix(l.raw, "Content-Length: 42\r\n\r\n"), "nothing after the head: %q", l.raw)
		l, err = exchange(t, f, &RawRequest{Head: rawHead("GET", "/mcp"), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, "after", l.body)
		require.Equal(t, int32(1), f.dials.Load(), "the connection stays usable after a HEAD")
	})
	t.Run("chunked", func(t *testing.T) {
		u, f := newRawUpstream(t, func(n int) (string, bool) {
			if n == 0 {
				return "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n", false
			}
			return "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext", false
		})
		l, err := exchange(t, f, &RawRequest{Head: rawHead("HEAD", "/mcp"), ContentLength: -1, NoResponseBody: true})
		require.NoError(t, err)
		require.Equal(t, []string{"chunked"}, l.resp.TransferEncoding)
		require.Empty(t, l.body)
		l, err = exchange(t, f, &RawRequest{Head: rawHead("GET", "/mcp"), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, "next", l.body, "no body was read after the HEAD answer")
		require.Equal(t, int32(1), u.accepted.Load())
	})
}

func TestForwardRawNoContent(t *testing.T) {
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.Header().Set("Mcp-Session-Id", "s")
			w.WriteHeader(http.StatusNoContent)
		case "/304":
			w.Header().Set("ETag", `"v1"`)
			w.WriteHeader(http.StatusNotModified)
		default:
			fmt.Fprint(w, "after")
		}
	})
	for _, code := range []int{204, 304} {
		l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", fmt.Sprint("/", code)), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, code, l.resp.StatusCode)
		require.Empty(t, l.body)
		require.NotContains(t, strings.ToLower(l.raw), "transfer-encoding")
		require.True(t, strings.HasSuffix(l.raw, "\r\n\r\n"), l.raw)
	}
	l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
	require.NoError(t, err)
	require.Equal(t, "after", l.body)
	require.Equal(t, int32(1), f.dials.Load())
}

func TestForwardRawInterimAnswersSkipped(t *testing.T) {
	t.Run("103 Early Hints", func(t *testing.T) {
		_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"final":true}`)
		})
		l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
		require.NoError(t, err)
		require.True(t, strings.HasPrefix(l.raw, "HTTP/1.1 200 OK\r\n"), l.raw)
		require.NotContains(t, l.raw, "103")
		require.NotContains(t, l.raw, "Link")
		require.Equal(t, `{"final":true}`, l.body)
	})
	t.Run("100 and 102", func(t *testing.T) {
		u, f := newRawUpstream(t, always("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\nX-Interim: 1\r\n\r\n"+
			"HTTP/1.1 201 Created\r\nContent-Length: 4\r\n\r\ndone", false))
		for i := 0; i < 2; i++ {
			l, err := exchange(t, f, &RawRequest{Head: rawHead("POST", "/"), ContentLength: 2, Body: []byte("{}")})
			require.NoError(t, err)
			require.Equal(t, 201, l.resp.StatusCode)
			require.NotContains(t, l.raw, "X-Interim")
			require.Equal(t, "done", l.body)
		}
		require.Equal(t, int32(1), u.accepted.Load())
	})
	t.Run("endless 1xx", func(t *testing.T) {
		_, f := newRawUpstream(t, always(strings.Repeat("HTTP/1.1 102 Processing\r\n\r\n", maxInterim+1)+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false))
		_, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
		var ue *UpstreamError
		require.ErrorAs(t, err, &ue)
		require.ErrorIs(t, err, errTooManyInterim)
	})
}

// TestForwardRawHopByHopDropped: connection-level headers of the answer,
// and those its Connection header names, stay behind.
func TestForwardRawHopByHopDropped(t *testing.T) {
	u, f := newRawUpstream(t, always("HTTP/1.1 200 OK\r\nConnection: close, X-Foo\r\nX-Foo: bar\r\nx-foo: baz\r\nX-Keep: 1\r\n"+
		"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nContent-Type: application/json\r\n"+
		"Content-Length: 2\r\n\r\nok", false))
	l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
	require.NoError(t, err)
	require.Equal(t, "ok", l.body)
	require.Equal(t, "1", l.resp.Header.Get("X-Keep"))
	require.Equal(t, "application/json", l.resp.Header.Get("Content-Type"))
	for _, h := range []string{"x-foo", "connection", "keep-alive", "proxy-connection", "upgrade"} {
		require.NotContains(t, strings.ToLower(l.raw), h+":", "%s passed on in %q", h, l.raw)
	}
	require.Zero(t, f.idleConns(), "Connection: close: the connection is not pooled")
	_, err = exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
	require.NoError(t, err)
	require.Equal(t, int32(2), u.accepted.Load())
}

func TestForwardRawChunkExtensionsAndTrailersDropped(t *testing.T) {
	u, f := newRawUpstream(t, always("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"+
		"5;ext=1\r\nhello\r\n6 ; name=\"quoted;value\"\r\n world\r\nA\r\n, and more\r\n0;last\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n", false))
	for i := 0; i < 2; i++ {
		l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
		require.NoError(t, err)
		require.Equal(t, "hello world, and more", l.body)
		require.Empty(t, l.resp.Trailer)
		for _, s := range []string{"ext", "name=", "last", "X-Checksum", "X-Other", "Trailer"} {
			require.NotContains(t, l.raw, s)
		}
	}
	require.Equal(t, int32(1), u.accepted.Load(), "the trailer section was read: the connection stays in step")
}

// TestForwardRawBrokenBody: a body that breaks after the head went out is
// an error the caller cannot answer for (not an *UpstreamError), and the
// connection is dropped.
func TestForwardRawBrokenBody(t *testing.T) {
	for name, answer := range map[string]string{
		"malformed chunk size":     "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
		"negative chunk size":      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
		"chunk size overflow":      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
		"chunk longer than size":   "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n",
		"chunked cut short":        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
		"content-length cut short": "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello",
	} {
		t.Run(name, func(t *testing.T) {
			_, f := newRawUpstream(t, always(answer, true))
			l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
			require.Error(t, err)
			var ue *UpstreamError
			require.False(t, errors.As(err, &ue), "the head was sent: %v", err)
			require.True(t, strings.HasPrefix(l.raw, "HTTP/1.1 200 OK\r\n"), l.raw)
			require.Zero(t, f.idleConns())
		})
	}
}

// TestForwardRawBadHead: an answer whose head is broken is an
// *UpstreamError with nothing written: the caller still answers.
func TestForwardRawBadHead(t *testing.T) {
	for name, answer := range map[string]string{
		"garbage":                  "SSH-2.0-OpenSSH_9.6\r\n\r\n",
		"both framings":            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\nok",
		"unsupported encoding":     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
		"switching protocols":      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
		"obs-fold":                 "HTTP/1.1 200 OK\r\nX-A: 1\r\n 2\r\nContent-Length: 0\r\n\r\n",
		"closed without an answer": "",
	} {
		t.Run(name, func(t *testing.T) {
			_, f := newRawUpstream(t, always(answer, true))
			l, err := exchange(t, f, &RawRequest{Head: rawHead("GET", "/"), ContentLength: -1})
			var ue *UpstreamError
			require.ErrorAs(t, err, &ue)
			require.Equal(t, "read response", ue.Op)
			require.Empty(t, l.raw)
		})
	}
}

func TestForwardRawDialError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	f := newRawFwd(t, addr)
	l, err := exchange(t, f, &RawRequest{Head: rawHead("POST", "/"), ContentLength: 2, Body: []byte("{}")})
	var ue *UpstreamError
	require.ErrorAs(t, err, &ue)
	require.Equal(t, "dial", ue.Op)
	require.ErrorIs(t, err, syscall.ECONNREFUSED)
	require.Empty(t, l.raw, "nothing was written: the caller still answers")
}

// TestForwardRawRetriesDeadPooledConnection: the upstream closed an idle
// pooled connection; the request goes on a fresh one, seen dead before
// anything was sent (alive), so a streamed body too.
func TestForwardRawRetriesDeadPooledConnection(t *testing.T) {
	var calls atomic.Int32
	up, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		b, _ := io.ReadAll(r.Body)
		w.Write(b)
	})
	post := func(body string, streamed bool) (landed, error) {
		req := &RawRequest{Head: rawHead("POST", "/"), ContentLength: int64(len(body))}
		if streamed {
			req.BodyReader = strings.NewReader(body)
		} else {
			req.Body = []byte(body)
		}
		return exchange(t, f, req)
	}
	l, err := post(`{"n":1}`, false)
	require.NoError(t, err)
	require.Equal(t, `{"n":1}`, l.body)

	up.CloseClientConnections()
	l, err = post(`{"n":2}`, false)
	require.NoError(t, err, "a dead pooled connection is retried")
	require.Equal(t, `{"n":2}`, l.body)
	require.Equal(t, int32(2), calls.Load(), "each request reached the upstream once")
	require.Equal(t, int32(2), f.dials.Load())

	up.CloseClientConnections()
	l, err = post(`{"n":3}`, true)
	require.NoError(t, err, "a dead pooled connection is not used for a streamed body either")
	require.Equal(t, `{"n":3}`, l.body)
	require.Equal(t, int32(3), calls.Load())
	require.Equal(t, int32(3), f.dials.Load())
}

// TestForwardRawNoRetryOnceAnswered: a pooled connection on which the
// upstream began answering, then closed, is not retried: the upstream had
// the request, and a second copy could run it twice.
func TestForwardRawNoRetryOnceAnswered(t *testing.T) {
	for name, broken := range map[string]string{
		"head cut short":      "HTTP/1.1 200 OK\r\nContent-Le",
		"interim answer only": "HTTP/1.1 100 Continue\r\n\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			u, f := newRawUpstream(t, func(n int) (string, bool) {
				if n == 0 {
					return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
				}
				return broken, true
			})
			req := func() *RawRequest {
				return &RawRequest{Head: rawHead("POST", "/"), ContentLength: 2, Body: []byte("{}")}
			}
			_, err := exchange(t, f, req())
			require.NoError(t, err)
			_, err = exchange(t, f, req())
			var ue *UpstreamError
			require.ErrorAs(t, err, &ue)
			require.Equal(t, int32(2), u.requests.Load(), "the request was sent once")
			require.Equal(t, int32(1), u.accepted.Load())
		})
	}
}

// TestForwardRawStreamedBody: a body over MaxHeldBody is not held in
// memory but streamed from the client's reader, which keeps what follows.
func TestForwardRawStreamedBody(t *testing.T) {
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		h := sha256.New()
		n, err := io.Copy(h, r.Body)
		fmt.Fprintf(w, "%d %x %v", n, h.Sum(nil), err)
	})
	big := bytes.Repeat([]byte(`{"pad":"0123456789abcdef"}`), MaxHeldBody/10)
	require.Greater(t, len(big), MaxHeldBody)
	client := bufio.NewReader(io.MultiReader(bytes.NewReader(big), strings.NewReader("GET /next HTTP/1.1\r\n\r\n")))
	req := &RawRequest{Head: rawHead("POST", "/")}
	release, err := req.ReadBody(client, int64(len(big)))
	require.NoError(t, err)
	defer release()
	require.Nil(t, req.Body, "not held in memory")
	require.NotNil(t, req.BodyReader)
	l, err := exchange(t, f, req)
	require.NoError(t, err)
	sum := sha256.Sum256(big)
	require.Equal(t, fmt.Sprintf("%d %s <nil>", len(big), hex.EncodeToString(sum[:])), l.body)
	rest, _ := io.ReadAll(client)
	require.Equal(t, "GET /next HTTP/1.1\r\n\r\n", string(rest), "only the body was taken from the client")
}

// TestForwardRawCancelMidStream: cancelling the exchange's context (the
// client left) ends an open SSE stream: ForwardRaw returns, the upstream
// sees its connection close, and nothing is pooled.
func TestForwardRawCancelMidStream(t *testing.T) {
	upstreamGone := make(chan struct{})
	_, f := newHTTPUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
		close(upstreamGone)
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client, errc := pipeClient(t, ctx, f, &RawRequest{Head: rawHead("GET", "/mcp"), ContentLength: -1})
	resp, err := http.ReadResponse(bufio.NewReader(client), &http.Request{Method: "GET"})
	require.NoError(t, err)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Equal(t, "data: first\n", line)
	cancel()
	err = wait(t, errc, "ForwardRaw to return after cancel")
	require.Error(t, err)
	var ue *UpstreamError
	require.False(t, errors.As(err, &ue))
	wait(t, upstreamGone, "the upstream to see the connection close")
	require.Zero(t, f.idleConns())
}

// TestForwardNoRetryAfterInterim: Forward (the net/http side) does not send
// a request again either once the upstream answered with an interim head.
func TestForwardNoRetryAfterInterim(t *testing.T) {
	u, f := newRawUpstream(t, func(n int) (string, bool) {
		if n == 0 {
			return "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false
		}
		return "HTTP/1.1 100 Continue\r\n\r\n", true
	})
	forward := func() error {
		r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}"))
		return f.Forward(httptest.NewRecorder(), r, Request{Host: "up", RequestURI: "/"})
	}
	require.NoError(t, forward())
	err := forward()
	var ue *UpstreamError
	require.ErrorAs(t, err, &ue)
	require.Equal(t, opAfterInterim, ue.Op)
	require.Equal(t, int32(2), u.requests.Load(), "the request was sent once")
	require.Equal(t, int32(1), u.accepted.Load())
}

// FuzzCopyChunked: re-framing an upstream's chunked body never panics, and
// where it succeeds what it writes is a well-formed chunked body carrying
// the same bytes net/http's own chunked reader reads from the input.
func FuzzCopyChunked(f *testing.F) {
	for _, s := range []string{
		"5\r\nhello\r\n0\r\n\r\n",
		"3;ext=1\r\nabc\r\n0\r\nTrailer: x\r\n\r\n",
		"A\r\n0123456789\r\n0\r\n\r\n",
		"5\r\nhel\r\n",
		"fffffffffffffff\r\n",
		"0\r\n\r\n",
		"2\nok\n0\n\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		bw := bufio.NewWriter(&out)
		err := copyChunked(bw, bufio.NewReader(bytes.NewReader(in)), nil, time.Time{}, nil)
		if err != nil {
			return
		}
		got, rerr := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(out.Bytes())))
		if rerr != nil {
			t.Fatalf("our output %q is not a chunked body: %v", out.Bytes(), rerr)
		}
		want, werr := io.ReadAll(httputil.NewChunkedReader(bytes.NewReader(in)))
		if werr == nil && !bytes.Equal(got, want) {
			t.Fatalf("input %q: we carried %q, net/http reads %q", in, got, want)
		}
	})
}
