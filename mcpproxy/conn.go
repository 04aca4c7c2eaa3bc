package mcpproxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
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

// connHeaderTimeout bounds reading a head once it has begun, like the
// agent's http.Server ReadHeaderTimeout.
const connHeaderTimeout = 30 * time.Second

var (
	connReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	connWriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	outHeadPool    = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}
)

// ServeConn serves the HTTP/1.1 exchanges on c that are for URL servers.
// It returns nil once c is done (and closed), or, when an exchange needs
// the full HTTP server, a connection for an http.Server serving h that
// replays what ServeConn read; ServeConn no longer touches c then.
// ctx ends when the server shuts down: ServeConn stops between exchanges.
// It has the type of an httpfwd.ServeConnFunc.
func (h *Handler) ServeConn(ctx context.Context, c net.Conn) (rest net.Conn) {
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
		err := httpfwd.WaitHead(ctx, c, br, head, connIdleTimeout, connHeaderTimeout)
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
			return httpfwd.Replay(c, head, br)
		}
		if !h.serveFast(ctx, c, br, head, srv) || head.Close {
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
	_ = httpfwd.WriteAnswer(bufio.NewWriter(c), http.StatusBadRequest, "Content-Type: application/json\r\nConnection: close\r\n", body)
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
func (h *Handler) serveFast(sctx context.Context, c net.Conn, br *bufio.Reader, head *httpfwd.Head, srv *httpServer) bool {
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
	release, err := req.ReadBody(br, req.ContentLength)
	if err != nil {
		return false
	}
	defer release()
	ctx, stop := httpfwd.WatchClient(httpfwd.Closing(sctx), c, br, watchAfter, req.BodyRead)
	bw := connWriterPool.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() { bw.Reset(nil); connWriterPool.Put(bw) }()
	err = srv.fwd.ForwardRaw(ctx, bw, &req)
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
	werr := httpfwd.WriteAnswer(bw, http.StatusBadGateway, "Content-Type: application/json\r\nCache-Control: no-store\r\n", body)
	// With a body left partly unread the connection's state is unknown.
	return werr == nil && req.BodyRead()
}

// watchAfter is how long an exchange runs before a tunnel stream without a
// context of its own (yamux) is watched for the client leaving.
const watchAfter = 50 * time.Millisecond

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
		if p.dropsHeader(name) {
			continue
		}
		b = head.AppendField(b, f)
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
