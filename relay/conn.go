package relay

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// The fast path: a client's exchange that the relay admits is forwarded
// in wire form, without net/http's server. The head is parsed just enough to
// decide (Origin, Authorization, Host, the path) and to rewrite the few
// lines that change; body and answer pass through (httpfwd.ForwardRaw). That
// skips what net/http's server spends per request and a pass-through proxy
// does not need: header maps, Request and response objects, the context
// tree, and the background read goroutine around every handler (a client
// leaving is watched for only in exchanges that last, see
// httpfwd.WatchClient).
//
// Everything else — refusals, /healthz, paths with escapes or dot segments,
// heads the fast path does not take (chunked or Expect bodies, upgrades,
// Connection options, HTTP/1.0) — is handed, with the bytes read replayed,
// to net/http, which serves that connection from then on. So every answer
// the relay makes by itself comes from one place (serveMCP).

// ClientIdleTimeout closes a client connection idle between exchanges this
// long.
const ClientIdleTimeout = 2 * time.Minute

// ClientHeaderTimeout bounds reading a request head once it has begun.
const ClientHeaderTimeout = 10 * time.Second

// watchAfter is how long an exchange runs before the client's connection
// is watched for the client leaving.
const watchAfter = 50 * time.Millisecond

var (
	connReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	connWriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	outHeadPool    = sync.Pool{New: func() any { b := make([]byte, 0, 1<<10); return &b }}
)

// ServeConn serves the client connection c (an httpfwd.ServeConnFunc): it
// forwards the exchanges the relay admits and returns nil once c is done, or
// returns c, with what it read replayed, for the http.Server serving h.
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
		err := httpfwd.WaitHead(ctx, c, br, head, ClientIdleTimeout, ClientHeaderTimeout)
		var he *httpfwd.HeadError
		switch {
		case errors.As(err, &he):
			_ = httpfwd.WriteAnswer(bufio.NewWriter(c), http.StatusBadRequest,
				"Content-Type: application/json\r\nConnection: close\r\n", errorJSON("bad_request", "bad request: "+he.Reason))
			return nil
		case err != nil:
			return nil
		}
		rt, ok := h.fastRoute(head)
		if !ok {
			return httpfwd.Replay(c, head, br)
		}
		if !h.forwardFast(ctx, c, br, head, rt) || head.Close {
			return nil
		}
		if cap(head.Raw) > 64<<10 {
			head = new(httpfwd.Head) // do not keep a rare huge head's buffer
		}
	}
}

// route is an admitted exchange.
type route struct {
	client        *Client
	agent, server string
	method        []byte
}

// fastRoute admits an exchange the fast path takes, or reports false: then
// net/http serves it (and answers any refusal).
func (h *Handler) fastRoute(head *httpfwd.Head) (route, bool) {
	method, target, version, err := head.RequestLine()
	if err != nil || string(version) != "HTTP/1.1" || head.Chunked || head.OtherEncoding || head.ConnTokens > 0 {
		return route{}, false
	}
	var origin, auth, host []byte
	hosts := 0
	for _, f := range head.Fields {
		name := head.Name(f)
		switch {
		case httpfwd.EqualFold(name, "Host"):
			host = head.Value(f)
			hosts++
		// A repeated Authorization or Origin counts by its first line, as
		// in net/http's Header.Get (serveMCP): both paths must decide alike.
		case httpfwd.EqualFold(name, "Authorization"):
			if auth == nil {
				auth = head.Value(f)
			}
		case httpfwd.EqualFold(name, "Origin"):
			if origin == nil {
				origin = head.Value(f)
			}
		case httpfwd.EqualFold(name, "Expect"), httpfwd.EqualFold(name, "Upgrade"):
			return route{}, false
		}
	}
	if hosts != 1 {
		return route{}, false
	}
	path, _, _ := bytes.Cut(target, []byte("?"))
	agent, server, ok := splitMCPPath(path)
	if !ok {
		return route{}, false
	}
	client, ref := h.admit(string(origin), string(auth), string(host), agent, server)
	if ref != nil {
		return route{}, false
	}
	return route{client: client, agent: agent, server: server, method: method}, true
}

// splitMCPPath matches /{agent}/{server}/mcp with plain segments; anything
// net/http's mux would clean or unescape first is left to it.
func splitMCPPath(path []byte) (agent, server string, ok bool) {
	rest, ok := bytes.CutPrefix(path, []byte("/"))
	if !ok || bytes.IndexByte(path, '%') >= 0 {
		return "", "", false
	}
	a, rest, ok1 := bytes.Cut(rest, []byte("/"))
	s, rest, ok2 := bytes.Cut(rest, []byte("/"))
	if !ok1 || !ok2 || string(rest) != "mcp" || !plainSegment(a) || !plainSegment(s) {
		return "", "", false
	}
	return string(a), string(s), true
}

func plainSegment(s []byte) bool {
	return len(s) > 0 && string(s) != "." && string(s) != ".."
}

// forwardFast forwards one admitted exchange; it reports whether c can
// carry another.
func (h *Handler) forwardFast(sctx context.Context, c net.Conn, br *bufio.Reader, head *httpfwd.Head, rt route) bool {
	out := outHeadPool.Get().(*[]byte)
	defer outHeadPool.Put(out)
	b := append((*out)[:0], rt.method...)
	b = append(b, " /"...)
	b = append(b, rt.server...)
	b = append(b, "/mcp HTTP/1.1\r\nHost: "...)
	b = append(b, rt.agent...)
	b = append(b, "\r\n"...)
	for _, f := range head.Fields {
		name := head.Name(f)
		if httpfwd.IsHopByHop(name) || httpfwd.EqualFold(name, "Host") || droppedHeader(name) {
			continue
		}
		b = head.AppendField(b, f)
	}
	b = append(b, ClientHeader+": "...)
	b = append(b, rt.client.Name...)
	b = append(b, "\r\n"...)
	*out = b
	req := httpfwd.RawRequest{Head: b, NoResponseBody: string(rt.method) == http.MethodHead}
	n := head.ContentLength
	if n < 0 && (string(rt.method) == http.MethodPost || string(rt.method) == http.MethodPut || string(rt.method) == http.MethodPatch) {
		n = 0
	}
	release, err := req.ReadBody(br, n)
	if err != nil {
		return false
	}
	defer release()
	ctx, stop := httpfwd.WatchClient(httpfwd.Closing(sctx), c, br, watchAfter, req.BodyRead)
	bw := connWriterPool.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() { bw.Reset(nil); connWriterPool.Put(bw) }()
	err = h.forwarder(rt.agent).ForwardRaw(ctx, bw, &req)
	gone := stop()
	var ue *httpfwd.UpstreamError
	switch {
	case err == nil:
		return !gone
	case gone:
		return false // nobody is left to answer
	case !errors.As(err, &ue):
		h.log.Debug("forward cut short", "client", rt.client.Name, "agent", rt.agent, "server", rt.server, "err", err)
		return false
	}
	status, reason, msg := h.forwardFailed(rt.client.Name, rt.agent, rt.server, err)
	werr := httpfwd.WriteAnswer(bw, status, "Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n", errorJSON(reason, msg))
	// With a body left partly unread the connection's state is unknown.
	return werr == nil && req.BodyRead()
}

// droppedHeader reports the client headers that never cross the tunnel.
func droppedHeader(name []byte) bool {
	for _, d := range dropHeaders {
		if httpfwd.EqualFold(name, d) {
			return true
		}
	}
	return false
}
