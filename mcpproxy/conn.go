package mcpproxy

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/ratelimit"
)

// The fast path: exchanges are answered on the connection itself, without
// net/http's server. The relay writes plain HTTP/1.1 on every tunnel
// stream (httpfwd), so the agent reads the head in wire form. For a URL
// server it rewrites the few header lines that must change and passes the
// rest, body and answer included, through untouched. For a stdio server
// the bridge's ServeHTTP answers, given a request built from the head and
// a ResponseWriter on the connection (httpfwd.ServeFunc). Either way that
// skips what net/http's server spends per request: the response and chunk
// writers, the context tree, the background read goroutine started and
// stopped around every handler, and (for URL servers) the header map and
// Request objects too.
//
// Anything else — unknown paths, heads the fast path does not take
// (chunked or Expect bodies, upgrades, Connection options, heads it cannot
// parse), for stdio servers also methods other than POST, GET and DELETE,
// a Host line other than one and bodies over httpfwd.MaxHeldBody — makes
// ServeConn hand the connection, with the bytes it read replayed, to
// net/http: that stream is served there from then on.

// connIdleTimeout closes a connection idle between exchanges this long,
// like the agent's http.Server IdleTimeout: longer than the relay keeps a
// stream in its pool.
const connIdleTimeout = 5 * time.Minute

// connHeaderTimeout bounds reading a head once it has begun, like the
// agent's http.Server ReadHeaderTimeout.
const connHeaderTimeout = 30 * time.Second

// ServeConn serves the HTTP/1.1 exchanges on c that the fast path takes
// (an httpfwd.ServeConnFunc). It returns nil once c is done (and closed),
// or, when an exchange needs the full HTTP server, a connection for an
// http.Server serving h that replays what ServeConn read.
func (h *Handler) ServeConn(ctx context.Context, c net.Conn) net.Conn {
	return h.fast.ServeConn(ctx, c)
}

func (h *Handler) newFastPath() *httpfwd.FastPath {
	return &httpfwd.FastPath{
		IdleTimeout:   connIdleTimeout,
		HeaderTimeout: connHeaderTimeout,
		BadRequest: func(reason string) []byte {
			return errorBodyStatus(nil, http.StatusBadRequest, codeInvalidRequest, "mcpproxy: "+reason, nil)
		},
		Route:  h.route,
		Logger: h.log,
	}
}

// route takes an exchange for a URL server (forwarded) or a stdio server
// (answered on the connection by the bridge's ServeHTTP), counted in
// flight unless it is a GET stream; after Drain it refuses it.
func (h *Handler) route(head *httpfwd.Head, out []byte) *httpfwd.Exchange {
	if h.audit != nil && head.ContentLength > httpfwd.MaxHeldBody {
		// The fast path would stream the body past the audit: net/http's
		// path keeps it (up to audit.MaxBody).
		return nil
	}
	x := h.routeAdmitted(head, out)
	if x != nil && h.audit != nil {
		h.auditExchange(head, x)
	}
	return x
}

// routeAdmitted is route without the audit's hooks.
func (h *Handler) routeAdmitted(head *httpfwd.Head, out []byte) *httpfwd.Exchange {
	name, ok := fastServer(head)
	if !ok || h.isClosed() {
		return nil
	}
	m, _, _, _ := head.RequestLine()
	counted := string(m) != http.MethodGet
	if counted && !h.inflight.Enter() || !counted && h.inflight.Draining() {
		if head.ContentLength > httpfwd.MaxHeldBody {
			return nil // ServeHTTP refuses it
		}
		return &httpfwd.Exchange{Serve: func(_ context.Context, w http.ResponseWriter, _ *httpfwd.Head, _ []byte) {
			h.refuseDraining(w)
		}}
	}
	x := h.routeServer(name, head, out)
	if x != nil {
		// Not countRequest(string(name)): that would allocate.
		if s := statsOf(h.table().servers[string(name)]); s != nil {
			s.requests.Add(1)
		}
	}
	if counted {
		if x == nil {
			h.inflight.Leave()
		} else {
			x.Done = h.leave
		}
	}
	return x
}

// routeServer is route for an admitted exchange for server name.
func (h *Handler) routeServer(name []byte, head *httpfwd.Head, out []byte) *httpfwd.Exchange {
	// An exchange route takes is counted against the server's rate limit
	// here; one it declines, by ServeHTTP (never both).
	tab := h.table()
	limit := tab.limits[string(name)]
	switch srv := tab.servers[string(name)].(type) {
	case *httpServer:
		policed := srv.policy != nil || headNarrowed(head)
		if policed && !servable(head) {
			// The policy reads bodies whole: one the fast path does not
			// hold goes to net/http's path.
			return nil
		}
		if limit != nil && !policed {
			// A refusal is answered on the connection, which takes only
			// bodies it can read whole.
			if head.ContentLength > httpfwd.MaxHeldBody {
				return nil
			}
			if wait, ok := limit.Take(); !ok {
				return h.overLimit(string(name), limit, wait)
			}
		}
		m, target, _, _ := head.RequestLine()
		// Not m itself in the closure: it points into the head, whose
		// memory a parked exchange gives back.
		method := httpfwd.MethodString(m)
		req := httpfwd.RawRequest{Head: srv.appendHead(out, head, m, target)}
		if x, handOff := srv.checkSession(head, method, &req); x != nil || handOff {
			return x
		}
		var inspect func(*httpfwd.Head, []byte) *httpfwd.Exchange
		if policed {
			// The policy sees the body first (and takes from the rate
			// limit what it lets through: httpServer.inspect).
			inspect = srv.onInspect
		}
		return &httpfwd.Exchange{
			Inspect: inspect,
			Fwd:     srv.fwd,
			Req:     req,
			Failed: func(err error) (int, string, []byte) {
				status, code, reason, msg := srv.failed(method, err)
				srv.stats.failed(msg)
				return status, "Content-Type: application/json\r\nCache-Control: no-store\r\n",
					errorBodyStatus(nil, status, code, msg, map[string]string{"reason": reason})
			},
			CutShort: func(err error) { srv.log.Debug("upstream exchange ended early", "err", err) },
		}
	case *stdioServer:
		if !servable(head) {
			return nil
		}
		// Counted by the bridge, once it has nothing to refuse the
		// exchange for (stdioServer.admit).
		return &httpfwd.Exchange{Serve: srv.serveFast}
	}
	return nil
}

// overLimit is an exchange that answers 429 on the connection.
func (h *Handler) overLimit(name string, limit *ratelimit.Limiter, wait time.Duration) *httpfwd.Exchange {
	return &httpfwd.Exchange{Serve: func(_ context.Context, w http.ResponseWriter, _ *httpfwd.Head, _ []byte) {
		h.refuseOverLimit(w, name, limit, wait)
	}}
}

// fastServer returns the name of the server a head is for, if the fast
// path takes the exchange.
func fastServer(head *httpfwd.Head) ([]byte, bool) {
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
	return bytes.CutSuffix(name, []byte("/mcp"))
}

// servable reports whether the bridge can answer a head on the fast path:
// what net/http's server would refuse before calling the handler (a Host
// line other than exactly one), methods it answers differently (HEAD) and
// bodies not read into memory whole go to net/http.
func servable(head *httpfwd.Head) bool {
	if head.ContentLength > httpfwd.MaxHeldBody {
		return false
	}
	switch m, _, _, _ := head.RequestLine(); string(m) {
	case http.MethodPost, http.MethodGet, http.MethodDelete:
	default:
		return false
	}
	hosts := 0
	for _, f := range head.Fields {
		if httpfwd.EqualFold(head.Name(f), "Host") {
			hosts++
		}
	}
	return hosts == 1
}

// serveFast answers an exchange for a stdio server on the fast path.
func (srv *stdioServer) serveFast(ctx context.Context, w http.ResponseWriter, head *httpfwd.Head, body []byte) {
	r, err := httpfwd.NewRequest(ctx, head, body)
	if err != nil {
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: "+err.Error())
		return
	}
	srv.ServeHTTP(w, r)
}

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
