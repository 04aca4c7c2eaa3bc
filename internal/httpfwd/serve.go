package httpfwd

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"runtime/debug"
	"strconv"
	"sync"
	"time"
)

// Serving on the fast path: an exchange the proxy answers itself (the
// agent's stdio bridge) runs its http.Handler on the connection, without
// net/http's server. What that server spends per request beyond the
// handler — the response and chunk writers, a context tree, a background
// read goroutine started and stopped around every handler (with two read
// deadlines on a tunnel stream), the Date header — was about a quarter of
// the bridge's CPU per request, more than the bridge's own work.
//
// The handler gets an *http.Request built from the head (NewRequest) and a
// ResponseWriter that writes HTTP/1.1 straight onto the connection: an
// answer complete when the handler returns goes out in one write with a
// Content-Length; once the handler flushes, or its answer outgrows
// serveBuffer, the rest goes chunked, as net/http's server does. The
// request's context ends when the client leaves (see beginExchange) or the
// ConnServer closes its connections.

// sniffLen is how much of a body http.DetectContentType looks at.
const sniffLen = 512

// serveBuffer is how much of an answer is held before it goes out chunked.
const serveBuffer = 32 << 10

var serveBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 4<<10); return &b }}

// serveLocal runs x.Serve for one exchange; it reports whether c can carry
// another.
func serveLocal(cs *connState, head *Head, x *Exchange, log *slog.Logger) bool {
	n := head.ContentLength
	if n > MaxHeldBody {
		// Route promised not to take such an exchange; its body cannot
		// be skipped without reading it, so the connection ends.
		return false
	}
	release, err := cs.readBody(&x.Req, n)
	if err != nil {
		return false
	}
	defer release()
	return serveBody(cs, head, x, x.Req.Body, log)
}

// serveBody is serveLocal once the body is read.
func serveBody(cs *connState, head *Head, x *Exchange, body []byte, log *slog.Logger) bool {
	m, _, _, _ := head.RequestLine()
	// The writer and its header map are the connection's, reused: a
	// handler may not use them once it returned.
	if cs.header == nil {
		cs.header = make(http.Header, 4)
	} else {
		clear(cs.header)
	}
	w := &cs.rw
	*w = responseWriter{c: cs.c, header: cs.header, head: string(m) == http.MethodHead}
	ctx := cs.beginExchange(nil)
	completed := runHandler(ctx, x.Serve, w, head, body, log)
	gone := cs.endExchange()
	err := w.finish(completed)
	return completed && err == nil && !gone && !w.closeAfter
}

// runHandler calls serve and reports whether it returned. A handler that
// panics is treated as net/http's server treats one: logged (unless it
// panicked with http.ErrAbortHandler) and its connection ended.
func runHandler(ctx context.Context, serve ServeFunc, w *responseWriter, head *Head, body []byte, log *slog.Logger) (completed bool) {
	defer func() {
		if completed {
			return
		}
		if p := recover(); p != nil && p != http.ErrAbortHandler && log != nil {
			log.Error("panic serving an exchange", "panic", p, "stack", string(debug.Stack()))
		}
	}()
	serve(ctx, w, head, body)
	return true
}

// ServeFunc answers an exchange on the fast path: an http.Handler's work,
// given the head it came with and the whole request body.
type ServeFunc func(ctx context.Context, w http.ResponseWriter, head *Head, body []byte)

// responseWriter is the http.ResponseWriter of a served exchange.
type responseWriter struct {
	c      net.Conn
	header http.Header
	status int  // 0 until WriteHeader or the first Write
	head   bool // a HEAD request: the body is not sent
	noBody bool // the status allows no body

	// body holds the answer's body until the head goes out; out holds
	// wire bytes not yet written once it has (nil when there are none).
	body, out  *[]byte
	started    bool // the head went out (into out)
	chunked    bool
	closeAfter bool  // the handler asked for Connection: close
	deadline   bool  // the handler set a write deadline
	err        error // the first write error: nothing more goes out
}

func (w *responseWriter) Header() http.Header {
	if w.header == nil {
		w.header = make(http.Header, 4)
	}
	return w.header
}

// WriteHeader sets the status. As in net/http's server, only the first
// call counts; informational statuses are not sent (no handler of ours
// sends them) and an invalid one becomes 500 instead of a panic.
func (w *responseWriter) WriteHeader(code int) {
	if w.status != 0 || code >= 100 && code < 200 {
		return
	}
	if code < 200 || code > 999 {
		code = http.StatusInternalServerError
	}
	w.status = code
	w.noBody = code == http.StatusNoContent || code == http.StatusNotModified
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.noBody {
		return 0, http.ErrBodyNotAllowed
	}
	if w.head {
		return len(p), nil
	}
	if !w.started {
		if w.body == nil {
			w.body = serveBufPool.Get().(*[]byte)
		}
		if len(*w.body)+len(p) <= serveBuffer {
			*w.body = append(*w.body, p...)
			return len(p), nil
		}
		w.start(true, p)
	}
	if len(p) > 0 {
		if w.out == nil {
			w.out = serveBufPool.Get().(*[]byte)
		}
		b := strconv.AppendInt(*w.out, int64(len(p)), 16)
		b = append(b, "\r\n"...)
		if len(p) >= serveBuffer {
			// Not copied: what is pending and the chunk's size, then p.
			*w.out = b
			if err := w.writeOut(); err != nil {
				return 0, err
			}
			if err := w.write(p); err != nil {
				return 0, err
			}
			w.out = serveBufPool.Get().(*[]byte)
			*w.out = append(*w.out, "\r\n"...)
			return len(p), nil
		}
		b = append(b, p...)
		*w.out = append(b, "\r\n"...)
	}
	if w.out != nil && len(*w.out) >= serveBuffer {
		if err := w.writeOut(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

// FlushError sends what is buffered; before the head went out it sends
// the head, the answer going chunked from then on.
func (w *responseWriter) FlushError() error {
	if w.err != nil {
		return w.err
	}
	if !w.started {
		if w.status == 0 {
			w.WriteHeader(http.StatusOK)
		}
		w.start(!w.noBody && !w.head, nil)
	}
	return w.writeOut()
}

// Flush is FlushError for http.Flusher.
func (w *responseWriter) Flush() { _ = w.FlushError() }

// SetWriteDeadline is for http.ResponseController (SSE writes use one).
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	w.deadline = !t.IsZero()
	return w.c.SetWriteDeadline(t)
}

// start puts the head, and the body held so far, into out; next is what
// is about to be written after it.
func (w *responseWriter) start(chunked bool, next []byte) {
	w.started, w.chunked = true, chunked
	w.out = serveBufPool.Get().(*[]byte)
	b := append((*w.out)[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(w.status)...)
	b = append(b, "\r\n"...)
	var held []byte
	if w.body != nil {
		held = *w.body
	}
	if _, typed := w.header["Content-Type"]; !typed && !w.noBody && len(held)+len(next) > 0 {
		// As net/http's server: a body without a type gets one sniffed
		// from its first bytes.
		sniff := held
		if len(sniff) < sniffLen {
			sniff = append(sniff[:len(sniff):len(sniff)], next[:min(len(next), sniffLen-len(sniff))]...)
		}
		b = append(b, "Content-Type: "...)
		b = append(b, http.DetectContentType(sniff)...)
		b = append(b, "\r\n"...)
	}
	for k, vs := range w.header {
		if !validName(k) {
			continue
		}
		// This writer frames the answer itself.
		switch textproto.CanonicalMIMEHeaderKey(k) {
		case "Content-Length", "Transfer-Encoding":
			continue
		case "Connection":
			for _, v := range vs {
				if bytes.EqualFold([]byte(v), []byte("close")) {
					w.closeAfter = true
				}
			}
		}
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = appendValue(b, v)
			b = append(b, "\r\n"...)
		}
	}
	switch {
	case chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n\r\n"...)
		if len(held) > 0 {
			b = strconv.AppendInt(b, int64(len(held)), 16)
			b = append(b, "\r\n"...)
			b = append(b, held...)
			b = append(b, "\r\n"...)
		}
	case w.noBody:
		b = append(b, "\r\n"...)
	default:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(len(held)), 10)
		b = append(b, "\r\n\r\n"...)
		if !w.head {
			b = append(b, held...)
		}
	}
	*w.out = b
	if w.body != nil {
		putServeBuf(w.body)
		w.body = nil
	}
}

// writeOut writes out and gives its buffer back: an SSE stream waiting
// for its next event holds none.
func (w *responseWriter) writeOut() error {
	if w.out == nil {
		return nil
	}
	err := w.write(*w.out)
	putServeBuf(w.out)
	w.out = nil
	return err
}

// write writes b to the connection; the first error ends the answer.
func (w *responseWriter) write(b []byte) error {
	if _, err := w.c.Write(b); err != nil {
		w.err = fmt.Errorf("httpfwd: write answer: %w", err)
	}
	return w.err
}

// finish completes the answer once the handler returned (completed) and
// gives back the buffers. An answer the handler did not complete (it
// panicked) is not completed here: the connection ends instead.
func (w *responseWriter) finish(completed bool) error {
	defer func() {
		for _, b := range []*[]byte{w.body, w.out} {
			if b != nil {
				putServeBuf(b)
			}
		}
		w.body, w.out = nil, nil
	}()
	if w.deadline {
		_ = w.c.SetWriteDeadline(time.Time{})
	}
	if !completed || w.err != nil {
		return w.err
	}
	if !w.started {
		if w.status == 0 {
			w.WriteHeader(http.StatusOK)
		}
		w.start(false, nil)
	} else if w.chunked {
		if w.out == nil {
			w.out = serveBufPool.Get().(*[]byte)
		}
		*w.out = append(*w.out, "0\r\n\r\n"...)
	}
	return w.writeOut()
}

func putServeBuf(b *[]byte) {
	if cap(*b) <= 64<<10 {
		*b = (*b)[:0]
		serveBufPool.Put(b)
	}
}

func validName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		if !isTokenByte(k[i]) {
			return false
		}
	}
	return true
}

// appendValue appends a header value with CR and LF made spaces, as
// net/http's server does: a value cannot end the head early.
func appendValue(b []byte, v string) []byte {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// NewRequest returns the server-side request for a head read on the fast
// path, as net/http's server would make it: URL from the request target
// (origin form), Host from the Host line (which is not in Header),
// canonical header keys, ctx as its context and body as its Body. The
// caller checked what net/http would refuse before that point (see
// ServeFunc): a version other than HTTP/1.1, a Host line other than one.
func NewRequest(ctx context.Context, h *Head, body []byte) (*http.Request, error) {
	method, target, _, err := h.RequestLine()
	if err != nil {
		return nil, err
	}
	rawTarget := string(target)
	u, err := url.ParseRequestURI(rawTarget)
	if err != nil {
		return nil, fmt.Errorf("httpfwd: request target %q: %w", clipString(rawTarget), err)
	}
	hdr := make(http.Header, len(h.Fields))
	var host string
	for _, f := range h.Fields {
		name := h.Name(f)
		if EqualFold(name, "Host") {
			host = string(h.Value(f))
			continue
		}
		k := canonicalKey(name)
		hdr[k] = append(hdr[k], string(h.Value(f)))
	}
	if u.Host != "" {
		// An absolute-form target names the host; the Host line is
		// ignored (RFC 9112 §3.2.2), as net/http's server does.
		host = u.Host
	}
	r := &http.Request{
		Method:     MethodString(method),
		URL:        u,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     hdr,
		Host:       host,
		RequestURI: rawTarget,
		Close:      h.Close,
		Body:       http.NoBody,
	}
	if len(body) > 0 {
		r.Body = &bodyReader{Reader: bytes.NewReader(body)}
		r.ContentLength = int64(len(body))
	}
	return r.WithContext(ctx), nil
}

type bodyReader struct{ *bytes.Reader }

func (bodyReader) Close() error { return nil }

func clipString(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// MethodString returns a request method as a string, without an
// allocation for the usual ones.
func MethodString(m []byte) string {
	for _, s := range [...]string{http.MethodPost, http.MethodGet, http.MethodDelete, http.MethodHead, http.MethodPut, http.MethodOptions} {
		if string(m) == s {
			return s
		}
	}
	return string(m)
}

// commonKeys are header names MCP clients send, canonical: found without
// an allocation.
var commonKeys = [...]string{"Accept", "Content-Type", "Content-Length", "User-Agent", "Accept-Encoding",
	"Mcp-Session-Id", "Mcp-Protocol-Version", "Last-Event-Id", "Origin", "Authorization", "Mcp-Method",
	"Mcp-Name", "Traceparent", "Tracestate", "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"}

func canonicalKey(name []byte) string {
	for _, k := range commonKeys {
		if EqualFold(name, k) {
			return k
		}
	}
	return textproto.CanonicalMIMEHeaderKey(string(name))
}
