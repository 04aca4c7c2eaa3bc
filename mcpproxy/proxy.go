package mcpproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"syscall"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// httpServer reverse-proxies a server's endpoint to its Streamable HTTP
// upstream. The exchange passes through unchanged (status, headers, body,
// streaming) except for the headers named in requestFor. It uses the same
// lean forwarder as the relay (internal/httpfwd): no per-connection
// goroutines, pooled buffers, whole request bodies sent before the answer is
// read.
type httpServer struct {
	name    string
	log     *slog.Logger
	target  *url.URL
	headers http.Header
	fwd     *httpfwd.Forwarder
	// dial opens a connection to the server as fwd does (upstream
	// networks checked, no proxy), for ProbeUpstream.
	dial func(context.Context) (net.Conn, error)

	// For the fast path (conn.go), in wire form: the path and query to
	// send, the configured header lines and their names.
	path        []byte
	headerLines []byte
	headerNames []string

	// Who owns which of the upstream's sessions (urlsession.go), and
	// sessionAnswer as a func value made once.
	sessions        *urlSessions
	onSessionAnswer func(*httpfwd.RawRequest, int, *httpfwd.Head)

	stats serverStats // see stats.go
	// policy is the server's Policy (nil: none); maxBody bounds what its
	// path holds in memory (Options.MaxMessageBytes).
	policy  *policy
	maxBody int64
	h       *Handler
	// onInspect is inspect as a func value made once, and full the
	// exchange it hands what the policy must look at closer.
	onInspect func(*httpfwd.Head, []byte) *httpfwd.Exchange
	full      *httpfwd.Exchange
}

// checkUpstreamURL refuses a URL whose host is an address outside
// Options.UpstreamNetworks (a name is checked when it is dialed).
func (h *Handler) checkUpstreamURL(target *url.URL, raw string) error {
	if ip, err := netip.ParseAddr(target.Hostname()); err == nil && len(h.opts.UpstreamNetworks) > 0 {
		if err := checkUpstreamAddr(netip.AddrPortFrom(ip, 0).String(), h.opts.UpstreamNetworks); err != nil {
			return fmt.Errorf("URL %q: %w", raw, err)
		}
	}
	return nil
}

func newHTTPServer(h *Handler, sc ServerConfig) (*httpServer, error) {
	target, err := url.Parse(sc.URL)
	if err != nil {
		return nil, fmt.Errorf("invalid URL: %w", err)
	}
	p := &httpServer{
		name:     sc.Name,
		log:      h.log.With("server", sc.Name),
		target:   target,
		headers:  make(http.Header, len(sc.Headers)),
		sessions: newURLSessions(),
		policy:   newPolicy(sc.Name, sc.Policy, h.pins, h.log),
		maxBody:  h.opts.MaxMessageBytes,
		h:        h,
	}
	p.onSessionAnswer = p.sessionAnswer
	p.onInspect = p.inspect
	p.full = &httpfwd.Exchange{Serve: p.serveFast}
	for k, v := range sc.Headers {
		p.headers.Set(k, v)
	}
	for k, vs := range p.headers {
		p.headerNames = append(p.headerNames, k)
		for _, v := range vs {
			p.headerLines = fmt.Appendf(p.headerLines, "%s: %s\r\n", k, v)
		}
	}
	p.path = []byte(target.EscapedPath())
	if len(p.path) == 0 {
		p.path = []byte("/")
	}
	if target.RawQuery != "" {
		p.path = append(append(p.path, '?'), target.RawQuery...)
	}
	if err := h.checkUpstreamURL(target, sc.URL); err != nil {
		return nil, err
	}
	addr := target.Host
	if target.Port() == "" {
		port := "80"
		if target.Scheme == "https" {
			port = "443"
		}
		addr = net.JoinHostPort(target.Hostname(), port)
	}
	// Internal servers are reached directly: an HTTP_PROXY meant for the
	// agent's own outbound traffic never sees them.
	dialer := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	if nets := h.opts.UpstreamNetworks; len(nets) > 0 {
		dialer.Control = func(_, address string, _ syscall.RawConn) error { return checkUpstreamAddr(address, nets) }
	}
	dial := func(ctx context.Context) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) }
	if target.Scheme == "https" {
		tlsDialer := &tls.Dialer{NetDialer: dialer, Config: &tls.Config{
			ServerName: target.Hostname(),
			NextProtos: []string{"http/1.1"},
			MinVersion: tls.VersionTLS12,
		}}
		dial = func(ctx context.Context) (net.Conn, error) { return tlsDialer.DialContext(ctx, "tcp", addr) }
	}
	p.fwd = httpfwd.New(dial, httpfwd.Options{MaxIdle: 256, IdleTimeout: upstreamIdleTimeout})
	p.dial = dial
	return p, nil
}

// ProbeUpstream says whether the url: server named name can be reached:
// a connection opened (and for https, its TLS handshake done) the way
// exchanges open theirs — inside Options.UpstreamNetworks, never through
// a proxy — and closed again; no request is sent. nil for a server that
// is not a url: one.
func (h *Handler) ProbeUpstream(ctx context.Context, name string) error {
	p, ok := h.table().servers[name].(*httpServer)
	if !ok {
		return nil
	}
	c, err := p.dial(ctx)
	if err != nil {
		return err
	}
	return c.Close()
}

// upstreamIdleTimeout drops a pooled connection to a url: server idle this
// long. Many servers close idle connections after 5 s (Node's
// keepAliveTimeout: measured 6.0 s on Node 20; uvicorn, Apache); a shorter
// limit keeps us from picking one they are closing, and a POST that fails
// on one is not sent again (httpfwd).
const upstreamIdleTimeout = 4 * time.Second

func (p *httpServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.serve(w, r)
}

// serve is ServeHTTP: session ownership, then the exchange forwarded,
// under the server's policy if it has one.
func (p *httpServer) serve(w http.ResponseWriter, r *http.Request) {
	if sids := r.Header.Values(headerSession); len(sids) > 1 {
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: more than one Mcp-Session-Id header")
		return
	}
	sid, client := r.Header.Get(headerSession), clientOf(r)
	sw := &sessionWriter{ResponseWriter: w, p: p, client: client, sid: sid, method: r.Method}
	if sid != "" {
		state, owner := p.sessions.lookup([]byte(sid), []byte(client), time.Now())
		if state == sessionForeign {
			p.foreignSession(w, client, owner)
			return
		}
		sw.unknown = state == sessionUnknown
	}
	if v, ok := p.policyExchange(r.Header); ok {
		p.servePolicy(sw, r, v)
		return
	}
	p.forward(sw, r)
}

// forward sends the exchange upstream and answers with what comes back.
func (p *httpServer) forward(w http.ResponseWriter, r *http.Request) {
	err := p.fwd.Forward(w, r, p.requestFor(r))
	if err == nil {
		return
	}
	var ue *httpfwd.UpstreamError
	if errors.As(err, &ue) {
		p.errorHandler(w, r, err)
		return
	}
	// The answer had begun; it is cut short.
	p.log.Debug("upstream exchange cut short", "err", err)
}

// OutsideNetworksError is a URL server's address outside
// Options.UpstreamNetworks: the agent did not connect.
type OutsideNetworksError struct {
	Addr netip.Addr
}

func (e *OutsideNetworksError) Error() string {
	return fmt.Sprintf("upstream address %s is outside upstream_networks", e.Addr)
}

// checkUpstreamAddr is the dialer's check, after name resolution and
// before connecting, that address (ip:port) is within nets.
func checkUpstreamAddr(address string, nets []netip.Prefix) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("upstream address %q: %w", address, err)
	}
	ip := ap.Addr().Unmap()
	for _, n := range nets {
		if n.Contains(ip) {
			return nil
		}
	}
	return &OutsideNetworksError{Addr: ip}
}

// requestFor says what goes upstream: the configured URL's path, the
// client's query appended to the URL's own, the upstream's own Host, and the
// configured headers in place of the client's credentials and every
// relay-internal X-Mcptun-* header (the relay strips the client's
// Authorization already; this is the agent not trusting that).
func (p *httpServer) requestFor(r *http.Request) httpfwd.Request {
	path := p.target.EscapedPath()
	if path == "" {
		path = "/"
	}
	switch q := r.URL.RawQuery; {
	case p.target.RawQuery == "":
		if q != "" {
			path += "?" + q
		}
	case q == "":
		path += "?" + p.target.RawQuery
	default:
		path += "?" + p.target.RawQuery + "&" + q
	}
	del := []string{"Authorization"}
	for k := range r.Header {
		if len(k) >= 9 && strings.EqualFold(k[:9], "X-Mcptun-") {
			del = append(del, k)
		}
	}
	return httpfwd.Request{Host: p.target.Host, RequestURI: path, SetHeader: p.headers, DelHeader: del}
}

func (p *httpServer) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		p.log.Debug("client went away during upstream exchange", "err", err)
		return
	}
	status, code, reason, msg := p.failed(r.Method, err)
	p.stats.failed(msg)
	writeErrorData(w, status, nil, code, msg, map[string]string{"reason": reason})
}

// failed logs an exchange that failed before the upstream answered and
// says what the client is told: the request's outcome is unknown once it
// went out (it is never sent twice, see httpfwd), the upstream was not
// reached before that, or the client's own body was broken or too big.
// The message gives the reason, not the error text: that would show
// internal addresses to the client.
func (p *httpServer) failed(method string, err error) (status, code int, reason, msg string) {
	var ue *httpfwd.UpstreamError
	errors.As(err, &ue)
	var tooBig *http.MaxBytesError
	switch {
	case ue != nil && ue.Body && errors.As(err, &tooBig):
		p.log.Info("request body over the limit", "method", method, "limit", tooBig.Limit)
		return http.StatusRequestEntityTooLarge, codeInvalidRequest, reasonBodyTooLarge,
			fmt.Sprintf("mcpproxy: request body over %d bytes", tooBig.Limit)
	case ue != nil && ue.Body:
		p.log.Info("bad request body", "method", method, "err", err)
		return http.StatusBadRequest, codeInvalidRequest, reasonBadRequest,
			fmt.Sprintf("mcpproxy: reading the request body failed: %s", bodyReason(ue.Err))
	case ue != nil && ue.OutcomeUnknown:
		p.log.Warn("upstream connection broke after the request was sent; not sent again", "method", method, "err", err)
		return http.StatusBadGateway, codeInternal, reasonOutcomeUnknown,
			fmt.Sprintf("mcpproxy: the connection to the upstream of server %q broke after the request was sent and before an answer (%s): it may or may not have been carried out, and was not sent again",
				p.name, upstreamReason(err))
	}
	p.log.Warn("upstream exchange failed", "method", method, "err", err)
	return http.StatusBadGateway, codeInternal, reasonUpstreamUnreachable,
		fmt.Sprintf("mcpproxy: upstream of server %q unreachable: %s", p.name, upstreamReason(err))
}

// bodyReason words a failure to read the client's body without echoing
// more of it than the framing error says.
func bodyReason(err error) string {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return "it ended early"
	}
	return err.Error()
}

func upstreamReason(err error) string {
	var outside *OutsideNetworksError
	if errors.As(err, &outside) {
		return outside.Error()
	}
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var netErr net.Error
	var opErr *net.OpError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.EPIPE):
		return "connection closed by the upstream"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return "host unreachable"
	case errors.As(err, &dnsErr):
		return "name resolution failed"
	case errors.As(err, &certErr), errors.As(err, &unknownAuth), errors.As(err, &hostErr):
		return "TLS certificate verification failed"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return "timed out"
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "connection failed"
	}
	return "request failed"
}

func (p *httpServer) close() {
	p.fwd.Close()
}
