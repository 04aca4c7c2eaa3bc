package relay

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/mcptun/mcptun/internal/authguard"
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
// to net/http, which serves that connection from then on. So every refusal
// comes from one place (serveMCP), and both paths word a failed forward
// with forwardFailed.

// ClientIdleTimeout closes a client connection idle between exchanges this
// long.
const ClientIdleTimeout = 2 * time.Minute

// ClientHeaderTimeout bounds reading a request head once it has begun,
// and the wait for the first one on a new connection.
const ClientHeaderTimeout = 10 * time.Second

// ClientBodyTimeout cuts a request body that makes no progress this long.
const ClientBodyTimeout = 30 * time.Second

// ClientWriteTimeout cuts a client that accepts no bytes of its answer
// this long.
const ClientWriteTimeout = 30 * time.Second

// TooManyConnections is the whole answer a client connection over
// http.max_connections gets (503, reason too_many_connections) before it
// is closed: see httpfwd.ConnServer.Busy.
func TooManyConnections(max int) []byte {
	body := errorJSON("too_many_connections",
		fmt.Sprintf("the relay has its maximum of %d client connections open; retry shortly", max))
	return fmt.Appendf(nil, "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"+
		"X-Content-Type-Options: nosniff\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// ServeConn serves the client connection c (an httpfwd.ServeConnFunc): it
// forwards the exchanges the relay admits and returns nil once c is done, or
// returns c, with what it read replayed, for the http.Server serving h.
func (h *Handler) ServeConn(ctx context.Context, c net.Conn) net.Conn {
	return h.fast.ServeConn(ctx, c)
}

func (h *Handler) newFastPath() *httpfwd.FastPath {
	return &httpfwd.FastPath{
		IdleTimeout:   h.limits.IdleTimeout,
		HeaderTimeout: h.limits.HeaderTimeout,
		BodyTimeout:   h.limits.BodyTimeout,
		WriteTimeout:  h.limits.WriteTimeout,
		StallAfter:    ClientStallAfter,
		BadRequest:    func(reason string) []byte { return errorJSON(reasonBadRequest, reason) },
		ErrorBody:     errorJSON,
		Cut: func(c net.Conn, reason string, err error) {
			h.cutLog.Log(h.log, slog.LevelDebug, "client cut", "reason", reason, "remote", c.RemoteAddr(), "err", err)
		},
		RouteConn: func(c net.Conn, head *httpfwd.Head, out []byte) *httpfwd.Exchange {
			rt, ok := h.fastRoute(authguard.AddrOf(c.RemoteAddr()), head)
			if !ok {
				return nil
			}
			return h.exchange(head, rt, out)
		},
	}
}

// route is an admitted exchange.
type route struct {
	adm           admission
	agent, server string
	method        []byte
	counted       bool // in h.inflight: Exchange.Done counts it out
	// obs is the exchange's observation (with Handler.obs), here so
	// that it costs no allocation of its own.
	obs observedExchange
}

// fastRoute admits an exchange the fast path takes, or reports false: then
// net/http serves it (and answers any refusal).
func (h *Handler) fastRoute(src netip.Addr, head *httpfwd.Head) (route, bool) {
	method, target, version, err := head.RequestLine()
	if err != nil || string(version) != "HTTP/1.1" || head.Chunked || head.OtherEncoding || head.ConnTokens > 0 {
		return route{}, false
	}
	var origin, auth, host, sid []byte
	hosts, sids := 0, 0
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
		case httpfwd.EqualFold(name, sessionHeader):
			sid = head.Value(f)
			sids++
		case httpfwd.EqualFold(name, "Expect"), httpfwd.EqualFold(name, "Upgrade"):
			return route{}, false
		}
	}
	if hosts != 1 || sids > 1 { // net/http's path refuses two session ids
		return route{}, false
	}
	path, _, _ := bytes.Cut(target, []byte("?"))
	agent, server, ok := splitMCPPath(path)
	if !ok {
		return route{}, false
	}
	adm, ref := h.admit(src, string(origin), string(auth), string(host), agent, server, string(sid))
	if ref != nil {
		return route{}, false
	}
	// GET streams are not counted in flight (see Handler.inflight); a
	// drain that began since admit sends the exchange to net/http, which
	// refuses it.
	counted := string(method) != http.MethodGet
	if counted && !h.inflight.Enter() {
		return route{}, false
	}
	return route{adm: adm, agent: agent, server: server, method: method, counted: counted}, true
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

// exchange builds the tunnel request for an admitted exchange.
func (h *Handler) exchange(head *httpfwd.Head, rt route, b []byte) *httpfwd.Exchange {
	b = append(b, rt.method...)
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
		if rt.adm.replica != "" && httpfwd.EqualFold(name, sessionHeader) {
			// The id the agent made, without the replica's tag.
			b = append(b, sessionHeader+": "...)
			b = append(b, rt.adm.sid...)
			b = append(b, "\r\n"...)
			continue
		}
		b = head.AppendField(b, f)
	}
	b = append(b, ClientHeader+": "...)
	b = append(b, rt.adm.client.Name...)
	b = append(b, "\r\n"...)
	if rt.adm.tools != "" {
		b = append(b, ToolsHeader+": "...)
		b = append(b, rt.adm.tools...)
		b = append(b, "\r\n"...)
	}
	var done func()
	if rt.counted {
		done = h.leave
	}
	var o *observedExchange
	if h.obs != nil {
		m := ""
		if string(rt.method) != http.MethodPost {
			m = mcpMethod(string(rt.method), nil)
		}
		o = &rt.obs
		h.observeInto(o, rt.agent, rt.server, m, rt.adm.peer != "")
		leave := done
		done = func() {
			if leave != nil {
				leave()
			}
			o.done()
		}
	}
	// The closures below hold rt for as long as the exchange lasts; the
	// method points into the head, whose memory a parked exchange gives
	// back (httpfwd.RawRequest.OnPark).
	rt.method = nil
	fwd, stalls := h.exchangePath(rt.agent, rt.adm)
	req := httpfwd.RawRequest{Head: b}
	if o != nil {
		req.OnHead = o.onHead
	}
	if rt.adm.replica != "" {
		req.PrefixField, req.Prefix = sessionHeader, []byte(rt.adm.replica+".")
	}
	acc, finished, peek := h.fastAccess(&rt)
	return &httpfwd.Exchange{
		Fwd:      fwd,
		Req:      req,
		Finished: finished,
		PeekBody: peek,
		Failed: func(err error) (int, string, []byte) {
			status, reason, msg := h.failed(rt.adm, rt.agent, rt.server, err)
			if acc != nil {
				acc.reason = reason
			}
			if o != nil {
				o.status, o.reason = status, reason
			}
			header := "Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
			if status == http.StatusServiceUnavailable {
				header += "Retry-After: " + unavailableRetryAfter + "\r\n"
			}
			return status, header, errorJSON(reason, msg)
		},
		CutShort: func(err error) {
			h.cutShort(rt.adm.client.Name, rt.agent, rt.server, err)
		},
		Done:   done,
		Stalls: stalls,
	}
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
