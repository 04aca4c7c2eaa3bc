package mcpproxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// httpServer reverse-proxies a server's endpoint to its Streamable HTTP
// upstream. The exchange passes through unchanged (status, headers, body,
// streaming) except for the headers named in rewrite.
type httpServer struct {
	name    string
	log     *slog.Logger
	target  *url.URL
	headers http.Header
	tr      *http.Transport
	rp      *httputil.ReverseProxy
}

func newHTTPServer(h *Handler, sc ServerConfig) (*httpServer, error) {
	target, err := url.Parse(sc.URL)
	if err != nil {
		return nil, fmt.Errorf("invalid URL: %w", err)
	}
	p := &httpServer{
		name:    sc.Name,
		log:     h.log.With("server", sc.Name),
		target:  target,
		headers: make(http.Header, len(sc.Headers)),
	}
	for k, v := range sc.Headers {
		p.headers.Set(k, v)
	}
	p.tr = &http.Transport{
		// Internal servers are reached directly: an HTTP_PROXY meant for the
		// agent's own outbound traffic must not see them.
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          100,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:      p.rewrite,
		Transport:    p.tr,
		ErrorHandler: p.errorHandler,
		ErrorLog:     slog.NewLogLogger(p.log.Handler(), slog.LevelWarn),
		// FlushInterval 0: ReverseProxy already flushes text/event-stream
		// and bodies of unknown length at once; -1 would split every JSON
		// answer into two writes.
	}
	return p, nil
}

func (p *httpServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.rp.ServeHTTP(w, r)
}

func (p *httpServer) rewrite(pr *httputil.ProxyRequest) {
	out := pr.Out
	out.URL.Scheme = p.target.Scheme
	out.URL.Host = p.target.Host
	out.URL.Path = p.target.Path
	out.URL.RawPath = p.target.RawPath
	if out.URL.Path == "" {
		out.URL.Path = "/"
	}
	switch q := pr.In.URL.RawQuery; {
	case p.target.RawQuery == "":
		out.URL.RawQuery = q
	case q == "":
		out.URL.RawQuery = p.target.RawQuery
	default:
		out.URL.RawQuery = p.target.RawQuery + "&" + q
	}
	out.Host = "" // the upstream's own host, from out.URL
	for k := range out.Header {
		// Relay-internal headers and the client's credentials stay on our
		// side: the upstream gets only the Authorization its config gives
		// it. (The relay already strips the client's; this is the agent not
		// trusting that.)
		if len(k) >= 9 && strings.EqualFold(k[:9], "X-Mcptun-") || strings.EqualFold(k, "Authorization") {
			delete(out.Header, k)
		}
	}
	for k, v := range p.headers {
		out.Header[k] = v
	}
}

func (p *httpServer) errorHandler(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil {
		p.log.Debug("client went away during upstream exchange", "err", err)
		return
	}
	p.log.Warn("upstream exchange failed", "method", r.Method, "err", err)
	// The reason, not the error text: it would show internal addresses to
	// the client.
	writeError(w, http.StatusBadGateway, nil, codeInternal,
		fmt.Sprintf("mcpproxy: upstream of server %q unreachable: %s", p.name, upstreamReason(err)))
}

func upstreamReason(err error) string {
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
	p.tr.CloseIdleConnections()
}
