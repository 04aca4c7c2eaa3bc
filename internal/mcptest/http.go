package mcptest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/mark3labs/mcp-go/server"
)

// EndpointPath is where the fixture serves Streamable HTTP.
const EndpointPath = "/mcp"

// maxBodyBytes bounds one POSTed JSON-RPC message.
const maxBodyBytes = 16 << 20

// HTTPConfig configures NewHTTPHandler. The zero value accepts only loopback
// Host and Origin values, which is what a local server must do against DNS
// rebinding.
type HTTPConfig struct {
	// AllowedHosts are Host header values accepted besides loopback names
	// (localhost, 127.0.0.0/8, ::1, any port); each is a host or host:port,
	// compared case-insensitively. A tunnel test whose agent preserves the
	// client's Host adds the relay's here.
	AllowedHosts []string
	// AllowedOrigins are Origin header values accepted besides loopback
	// origins, as scheme://host[:port]. Requests without Origin (non-browser
	// clients) are never refused for it.
	AllowedOrigins []string
	// Logger receives mcp-go's transport logs and refusals; nil discards.
	Logger *slog.Logger
	// HangUp, if set, is asked about every POST body: for one it picks
	// the request is served in full (a tool call runs) and the connection
	// closed instead of answering, as an upstream that dies between
	// acting and answering.
	HangUp func(body []byte) bool
}

// NewHTTPHandler serves s over Streamable HTTP at EndpointPath (other paths
// get 404): sessions for the 2025 protocol era (unknown or deleted sessions
// get 404, so clients re-initialize), the standalone GET stream, and
// stateless 2026-07-28 requests through mcp-go's own handler. See
// transport.go for why the 2025 era is not mcp-go's handler too.
//
// It refuses, with 403 and a JSON-RPC error body, any request whose Host or
// Origin is neither loopback nor allowed by cfg (DNS-rebinding protection).
func NewHTTPHandler(s *server.MCPServer, cfg HTTPConfig) http.Handler {
	h, _ := newHandler(s, cfg)
	return h
}

func newHandler(s *server.MCPServer, cfg HTTPConfig) (http.Handler, *streamable) {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	t := newStreamable(s, logger)
	g := &guard{
		next:    t,
		hosts:   lowerAll(cfg.AllowedHosts),
		origins: lowerAll(cfg.AllowedOrigins),
		logger:  logger,
		hangUp:  cfg.HangUp,
	}
	mux := http.NewServeMux()
	mux.Handle(EndpointPath, g)
	return mux, t
}

func lowerAll(in []string) []string {
	out := make([]string, len(in))
	for i, s := range in {
		out[i] = strings.ToLower(strings.TrimSuffix(s, "/"))
	}
	return out
}

type guard struct {
	next    http.Handler
	hosts   []string
	origins []string
	logger  *slog.Logger
	hangUp  func(body []byte) bool
}

func (g *guard) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := g.check(r); err != nil {
		g.logger.Warn("mcptest: refused request", "method", r.Method, "host", r.Host, "origin", r.Header.Get("Origin"), "err", err)
		writeJSONRPCError(w, http.StatusForbidden, "Forbidden: "+err.Error())
		return
	}
	r = r.WithContext(withLogger(r.Context(), g.logger))
	if r.Method == http.MethodPost && r.Body != nil {
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				writeJSONRPCError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body exceeds %d bytes", tooBig.Limit))
				return
			}
			writeJSONRPCError(w, http.StatusBadRequest, "reading request body: "+err.Error())
			return
		}
		r = r.WithContext(context.WithValue(r.Context(), rawMessageKey{}, body))
		r.Body = io.NopCloser(bytes.NewReader(body))
		if g.hangUp != nil && g.hangUp(body) {
			hangUp(g.next, w, r)
			return
		}
	}
	g.next.ServeHTTP(w, r)
}

func (g *guard) check(r *http.Request) error {
	if !isLoopbackHost(r.Host) && !slices.Contains(g.hosts, strings.ToLower(r.Host)) && !slices.Contains(g.hosts, strings.ToLower(hostOnly(r.Host))) {
		return fmt.Errorf("host %q is not allowed", r.Host)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return nil
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" {
		return fmt.Errorf("malformed origin %q", origin)
	}
	if isLoopbackHost(u.Host) || slices.Contains(g.origins, strings.ToLower(origin)) {
		return nil
	}
	return fmt.Errorf("origin %q is not allowed", origin)
}

func hostOnly(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return h
	}
	return hostport
}

// isLoopbackHost reports whether a Host value (host or host:port) names this
// machine's loopback interface.
func isLoopbackHost(hostport string) bool {
	h := strings.Trim(hostOnly(hostport), "[]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.IsLoopback()
}

func writeJSONRPCError(w http.ResponseWriter, status int, msg string) {
	body, _ := json.Marshal(map[string]any{
		"jsonrpc": "2.0",
		"id":      nil,
		"error":   map[string]any{"code": -32000, "message": msg},
	})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// HTTPServer is a running fixture over Streamable HTTP.
type HTTPServer struct {
	// URL is the MCP endpoint, e.g. http://127.0.0.1:PORT/mcp.
	URL string
	// Addr is the bound listener address.
	Addr net.Addr

	srv       *http.Server
	transport *streamable
	serveDone chan struct{}
	serveErr  error
	closeOnce sync.Once
	closeErr  error
}

// StartHTTP serves a new conformance fixture on addr (use "127.0.0.1:0" for
// a free port) until Close.
func StartHTTP(addr string, cfg HTTPConfig) (*HTTPServer, error) {
	return ServeHTTP(NewConformanceServer(), addr, cfg)
}

// ServeHTTP serves s on addr with NewHTTPHandler until Close.
func ServeHTTP(s *server.MCPServer, addr string, cfg HTTPConfig) (*HTTPServer, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("mcptest: listen %s: %w", addr, err)
	}
	h, t := newHandler(s, cfg)
	hs := &HTTPServer{
		URL:       "http://" + ln.Addr().String() + EndpointPath,
		Addr:      ln.Addr(),
		srv:       &http.Server{Handler: h},
		transport: t,
		serveDone: make(chan struct{}),
	}
	if cfg.Logger != nil {
		hs.srv.ErrorLog = slog.NewLogLogger(cfg.Logger.Handler(), slog.LevelWarn)
	}
	go func() {
		defer close(hs.serveDone)
		if err := hs.srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			hs.serveErr = err
		}
	}()
	return hs, nil
}

// Close stops the server at once: SSE streams never go idle, so a graceful
// shutdown would only wait for its deadline. Open connections are closed and
// their handlers return.
func (hs *HTTPServer) Close() error {
	hs.closeOnce.Do(func() {
		hs.transport.closeAll()
		err := hs.srv.Close()
		<-hs.serveDone
		hs.closeErr = errors.Join(err, hs.serveErr)
		if hs.closeErr != nil {
			hs.closeErr = fmt.Errorf("mcptest: close http server: %w", hs.closeErr)
		}
	})
	return hs.closeErr
}

// prefersSSE reports whether the client ranks text/event-stream above
// application/json in its Accept header (by q-value, then by order), as
// mcptun's stdio bridge decides it: such a client gets an SSE answer even
// when the response is the only message. Most SDK clients send
// "application/json, text/event-stream" and get plain JSON.
func prefersSSE(r *http.Request) bool {
	type rank struct {
		q   float64
		pos int
	}
	sse, js := rank{-1, -1}, rank{-1, -1}
	pos := 0
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
			if err != nil {
				continue
			}
			q := 1.0
			if s, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(s, 64); err == nil {
					q = f
				}
			}
			switch mt {
			case "text/event-stream":
				sse = rank{q, pos}
			case "application/json":
				js = rank{q, pos}
			}
			pos++
		}
	}
	switch {
	case sse.q <= 0:
		return false
	case js.q < 0:
		return true
	case sse.q != js.q:
		return sse.q > js.q
	}
	return sse.pos < js.pos
}
