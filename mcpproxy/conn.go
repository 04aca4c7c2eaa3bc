package mcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// The fast path: exchanges for URL servers are answered on the connection
// itself, without net/http's server. The relay writes plain HTTP/1.1 on
// every tunnel stream (httpfwd), so the agent reads the head in wire form,
// rewrites the few header lines that must change and passes the rest, body
// and answer included, through untouched. That skips what net/http's
// server spends per request and a pass-through proxy does not need: the
// header map, the Request and response objects, the context tree, and the
// background read goroutine started and stopped around every handler.
//
// Anything else — stdio servers, unknown paths, heads the fast path does
// not take (chunked or Expect bodies, upgrades, Connection options, heads
// it cannot parse) — makes ServeConn hand the connection, with the bytes
// it read replayed, to net/http: that stream is served there from then on.

// connIdleTimeout closes a connection idle between exchanges this long,
// like the agent's http.Server IdleTimeout: longer than the relay keeps a
// stream in its pool.
const connIdleTimeout = 5 * time.Minute

var (
	connReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	connWriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	outHeadPool    = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}
)

// ServeConn serves the HTTP/1.1 exchanges on c that are for URL servers.
// It returns nil once c is done (and closed), or, when an exchange needs
// the full HTTP server, a connection for an http.Server serving h that
// replays what ServeConn read; ServeConn no longer touches c then.
func (h *Handler) ServeConn(c net.Conn) (rest net.Conn) {
	br := connReaderPool.Get().(*bufio.Reader)
	br.Reset(c)
	head := new(httpfwd.Head)
	defer func() {
		if rest == nil {
			_ = c.Close()
			br.Reset(nil)
			connReaderPool.Put(br)
		}
	}()
	for {
		_ = c.SetReadDeadline(time.Now().Add(connIdleTimeout))
		err := httpfwd.ReadHead(br, head)
		_ = c.SetReadDeadline(time.Time{})
		var he *httpfwd.HeadError
		switch {
		case errors.As(err, &he):
			badRequest(c, he)
			return nil
		case err != nil:
			return nil
		}
		srv, ok := h.fastServer(head)
		if !ok {
			return replay(c, head, br)
		}
		if !h.serveFast(c, br, head, srv) || head.Close {
			return nil
		}
		if cap(head.Raw) > 64<<10 {
			head = new(httpfwd.Head) // do not keep a rare huge head's buffer
		}
	}
}

// badRequest answers a head that cannot be parsed and ends the connection,
// as net/http's server would.
func badRequest(c net.Conn, he *httpfwd.HeadError) {
	body := errorBody(nil, codeInvalidRequest, "mcpproxy: bad request: "+he.Reason, nil)
	_, _ = fmt.Fprintf(c, "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// fastServer returns the URL server a head is for, if the fast path takes
// the exchange.
func (h *Handler) fastServer(head *httpfwd.Head) (*httpServer, bool) {
	_, target, version, err := head.RequestLine()
	if err != nil || string(version) != "HTTP/1.1" || head.Chunked || head.OtherEncoding || head.ConnTokens > 0 {
		return nil, false
	}
	if _, ok := head.Get("Expect"); ok {
		return nil, false
	}
	if _, ok := head.Get("Upgrade"); ok {
		return nil, false
	}
	path, _, _ := bytes.Cut(target, []byte("?"))
	name, ok := bytes.CutPrefix(path, []byte("/"))
	if !ok {
		return nil, false
	}
	name, ok = bytes.CutSuffix(name, []byte("/mcp"))
	if !ok {
		return nil, false
	}
	srv, ok := h.servers[string(name)].(*httpServer)
	if !ok || h.isClosed() {
		return nil, false
	}
	return srv, true
}

// serveFast forwards one exchange; it reports whether c can carry another.
func (h *Handler) serveFast(c net.Conn, br *bufio.Reader, head *httpfwd.Head, srv *httpServer) bool {
	method, target, _, _ := head.RequestLine()
	out := outHeadPool.Get().(*[]byte)
	defer outHeadPool.Put(out)
	req := httpfwd.RawRequest{
		Head:           srv.appendHead((*out)[:0], head, method, target),
		ContentLength:  head.ContentLength,
		NoResponseBody: string(method) == http.MethodHead,
	}
	*out = req.Head
	if req.ContentLength < 0 && (string(method) == http.MethodPost || string(method) == http.MethodPut || string(method) == http.MethodPatch) {
		req.ContentLength = 0
	}
	// A body of the size MCP messages have is read whole, so the request
	// can be sent again if a pooled upstream connection was dead.
	const maxHeld = 1 << 20
	switch n := req.ContentLength; {
	case n > 0 && n <= maxHeld:
		bp := heldBodyPool.Get().(*[]byte)
		defer heldBodyPool.Put(bp)
		if int64(cap(*bp)) < n {
			*bp = make([]byte, n)
		}
		req.Body = (*bp)[:n]
		if _, err := io.ReadFull(br, req.Body); err != nil {
			return false
		}
	case n > maxHeld:
		req.BodyReader = br
	}
	ctx, stop := exchangeContext(c, br, req.BodyReader == nil)
	bw := connWriterPool.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() { bw.Reset(nil); connWriterPool.Put(bw) }()
	err := srv.fwd.ForwardRaw(ctx, bw, &req)
	gone := stop()
	var ue *httpfwd.UpstreamError
	switch {
	case err == nil:
		return !gone
	case gone || !errors.As(err, &ue):
		// The client left, or the answer had begun and is cut short.
		srv.log.Debug("upstream exchange ended early", "err", err)
		return false
	}
	srv.log.Warn("upstream exchange failed", "method", string(method), "err", err)
	body := errorBody(nil, codeInternal,
		fmt.Sprintf("mcpproxy: upstream of server %q unreachable: %s", srv.name, upstreamReason(err)), nil)
	fmt.Fprintf(bw, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n", len(body))
	bw.Write(body)
	if req.BodyReader != nil {
		// The body may be left unread: the connection's state is unknown.
		_ = bw.Flush()
		return false
	}
	return bw.Flush() == nil
}

var heldBodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// appendHead appends the upstream request head: the URL's path and query
// (the client's query after it), the upstream's Host, the client's header
// lines minus hop-by-hop ones, credentials, relay-internal X-Mcptun-* and
// the configured names, then the configured headers — the same rewrite
// requestFor describes for the net/http path.
func (p *httpServer) appendHead(b []byte, head *httpfwd.Head, method, target []byte) []byte {
	b = append(b, method...)
	b = append(b, ' ')
	b = append(b, p.path...)
	if _, q, ok := bytes.Cut(target, []byte("?")); ok && len(q) > 0 {
		if bytes.IndexByte(p.path, '?') >= 0 {
			b = append(b, '&')
		} else {
			b = append(b, '?')
		}
		b = append(b, q...)
	}
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = append(b, p.target.Host...)
	b = append(b, "\r\n"...)
	for _, f := range head.Fields {
		name := head.Name(f)
		if p.dropsHeader(name) || head.IsConnToken(name) {
			continue
		}
		b = append(b, head.Line(f)...)
	}
	return append(b, p.headerLines...)
}

// dropsHeader reports a client header that does not go upstream.
func (p *httpServer) dropsHeader(name []byte) bool {
	if httpfwd.IsHopByHop(name) || httpfwd.EqualFold(name, "Host") || httpfwd.EqualFold(name, "Authorization") ||
		len(name) >= 9 && httpfwd.EqualFold(name[:9], "X-Mcptun-") {
		return true
	}
	for _, k := range p.headerNames {
		if httpfwd.EqualFold(name, k) {
			return true
		}
	}
	return false
}

// exchangeContext is cancelled when the client leaves mid-exchange: from
// the stream's own context where the tunnel offers one (QUIC streams);
// otherwise (yamux) by a goroutine watching c for EOF, as net/http does, if
// c's input is all read (watch). stop ends the watch and reports whether
// the client left.
func exchangeContext(c net.Conn, br *bufio.Reader, watch bool) (context.Context, func() bool) {
	if cc, ok := c.(interface{ Context() context.Context }); ok {
		ctx := cc.Context()
		return ctx, func() bool { return ctx.Err() != nil }
	}
	if !watch {
		return context.Background(), func() bool { return false }
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		// A byte arriving is a pipelined request: it stays buffered.
		if _, err := br.Peek(1); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			cancel()
		}
	}()
	return ctx, func() bool {
		_ = c.SetReadDeadline(time.Unix(1, 0))
		<-done
		_ = c.SetReadDeadline(time.Time{})
		left := ctx.Err() != nil
		cancel()
		return left
	}
}

// replay returns c with the head already read, and whatever br holds,
// put back in front of its input.
func replay(c net.Conn, head *httpfwd.Head, br *bufio.Reader) net.Conn {
	read := make([]byte, 0, len(head.Raw)+2)
	read = append(append(read, head.Raw...), "\r\n"...)
	return &replayConn{Conn: c, r: io.MultiReader(bytes.NewReader(read), br)}
}

type replayConn struct {
	net.Conn
	r io.Reader
}

func (c *replayConn) Read(p []byte) (int, error) { return c.r.Read(p) }
