package relay

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// The access line: one info-level line per exchange with a client,
// forwarded or refused, written where the exchange ends — Handler.ServeHTTP
// for net/http's path (every refusal is answered there), the fast path's
// Exchange.Finished for the exchanges it forwards. It never carries a
// token, an Authorization header or a body: the client's name as the
// relay verified it, what was asked for, and how it ended.
//
//	msg=access client=ci agent=dc1 server=wiki method=tools/call status=200 reason=""
//	  duration=1.2ms bytes_in=120 bytes_out=342 transport=quic path=fast
//
// method is the JSON-RPC method of a small body the fast path held in
// memory anyway (peekMethod, a bounded scan), "batch" for a batch;
// otherwise it is left out. reason is the error.data.reason of an answer
// the relay made itself. transport is the agent's tunnel transport, path
// which of the relay's two paths served the exchange.

// AgentTransports is implemented by an Agents that can say which
// transport (quic, tcp) an agent's tunnel uses, for the access line.
type AgentTransports interface {
	AgentTransport(agent string) string
}

// accessInfo is what the access line says of an exchange.
type accessInfo struct {
	client, agent, server, method, reason, path string
	status                                      int
	start                                       time.Time
	in, out                                     int64
}

const accessMsg = "access"

func (h *Handler) accessEnabled(ctx context.Context) bool {
	return h.log.Enabled(ctx, slog.LevelInfo)
}

func (h *Handler) logAccess(ctx context.Context, a *accessInfo) {
	attrs := make([]slog.Attr, 0, 12)
	attrs = append(attrs, slog.String("client", a.client), slog.String("agent", a.agent), slog.String("server", a.server))
	if a.method != "" {
		attrs = append(attrs, slog.String("method", a.method))
	}
	attrs = append(attrs, slog.Int("status", a.status))
	if a.reason != "" {
		attrs = append(attrs, slog.String("reason", a.reason))
	}
	attrs = append(attrs, slog.Duration("duration", time.Since(a.start)), slog.Int64("bytes_in", a.in), slog.Int64("bytes_out", a.out))
	if t := h.transports; t != nil && a.agent != "" {
		if tr := t.AgentTransport(a.agent); tr != "" {
			attrs = append(attrs, slog.String("transport", tr))
		}
	}
	attrs = append(attrs, slog.String("path", a.path))
	h.log.LogAttrs(ctx, slog.LevelInfo, accessMsg, attrs...)
}

// serveAccess is ServeHTTP with the access line.
func (h *Handler) serveAccess(w http.ResponseWriter, r *http.Request) {
	h.serveAccessOf(w, r, h.mux, "http")
}

// serveAccessOf serves r with next and writes its access line, path
// saying which way it came ("http": a client; "peer": forwarded by
// another relay of the fleet, whose own line has the client's side).
func (h *Handler) serveAccessOf(w http.ResponseWriter, r *http.Request, next http.Handler, path string) {
	a := &accessInfo{start: time.Now(), path: path}
	aw := &accessWriter{ResponseWriter: w, rc: http.NewResponseController(w), info: a}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		// On a copy: net/http's own request keeps its body, whose type
		// (an Expect: 100-continue reader) decides whether a connection
		// with an unread body may carry another request.
		r = r.WithContext(r.Context())
		r.Body = body
	}
	next.ServeHTTP(aw, r)
	a.agent, a.server = r.PathValue("agent"), r.PathValue("server")
	if path == "peer" && a.server != "" {
		a.agent = r.Host // a forwarded exchange names its agent as Host
	}
	if a.agent == "" {
		a.server = clip(r.URL.Path, 128)
	}
	a.status = aw.status
	if body != nil {
		a.in = body.n
	}
	a.out = aw.n
	h.logAccess(r.Context(), a)
}

// fastAccess returns the access line's record and the Exchange.Finished
// and PeekBody of a forwarded exchange on the fast path (all nil when
// info lines are not logged).
func (h *Handler) fastAccess(rt *route) (*accessInfo, func(httpfwd.Result), func([]byte)) {
	ctx := context.Background()
	if !h.accessEnabled(ctx) {
		return nil, nil, nil
	}
	a := &accessInfo{start: time.Now(), path: "fast", client: rt.adm.client.Name, agent: rt.agent, server: rt.server}
	return a, func(res httpfwd.Result) {
			a.status, a.in, a.out = res.Status, res.BytesIn, res.BytesOut
			h.logAccess(ctx, a)
		}, func(body []byte) {
			a.method = peekMethod(body)
		}
}

// accessWriter counts an answer on net/http's path.
type accessWriter struct {
	http.ResponseWriter
	rc     *http.ResponseController
	info   *accessInfo
	status int
	n      int64
}

func (w *accessWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *accessWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	return n, err
}

func (w *accessWriter) Flush()                      { _ = w.rc.Flush() }
func (w *accessWriter) FlushError() error           { return w.rc.Flush() }
func (w *accessWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// noteAccess records, for the access line, who the client is and why the
// relay answered as it did; w is (or wraps) the exchange's accessWriter.
func noteAccess(w http.ResponseWriter, client, reason string) {
	for range 8 {
		if aw, ok := w.(*accessWriter); ok {
			if client != "" {
				aw.info.client = client
			}
			if reason != "" {
				aw.info.reason = reason
			}
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}

type countingBody struct {
	io.ReadCloser
	n int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n += int64(n)
	return n, err
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// peekMethod returns the top-level "method" of a JSON-RPC message, or
// "batch" for an array, scanning at most peekMax bytes and decoding
// nothing; "" if it is not found (or not a plain string).
func peekMethod(b []byte) string {
	const peekMax = 64 << 10
	if len(b) > peekMax {
		return ""
	}
	i := skipSpace(b, 0)
	if i < len(b) && b[i] == '[' {
		return "batch"
	}
	if i >= len(b) || b[i] != '{' {
		return ""
	}
	i++
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != '"' {
			return ""
		}
		kend := skipString(b, i)
		if kend < 0 {
			return ""
		}
		key := b[i+1 : kend-1]
		i = skipSpace(b, kend)
		if i >= len(b) || b[i] != ':' {
			return ""
		}
		i = skipSpace(b, i+1)
		vend := skipJSONValue(b, i)
		if vend < 0 {
			return ""
		}
		if string(key) == "method" {
			v := b[i:vend]
			if len(v) < 2 || v[0] != '"' {
				return ""
			}
			for _, c := range v[1 : len(v)-1] {
				if c == '\\' || c < 0x20 {
					return "" // escapes: not a method name worth decoding
				}
			}
			return clip(string(v[1:len(v)-1]), 128)
		}
		i = skipSpace(b, vend)
		if i >= len(b) || b[i] != ',' {
			return ""
		}
		i++
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string starting at b[i] ('"'),
// or -1.
func skipString(b []byte, i int) int {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipJSONValue returns the index after the value starting at b[i], or -1;
// nested values are skipped by bracket depth, strings by their quotes.
func skipJSONValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				j = skipString(b, j)
				if j < 0 {
					return -1
				}
				j--
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' && b[j] != '\n' && b[j] != '\r' && b[j] != '\t' {
		j++
	}
	if j == i {
		return -1
	}
	return j
}
