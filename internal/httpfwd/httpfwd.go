// Package httpfwd forwards HTTP/1.1 exchanges over a pool of connections,
// for the two proxies of the data path (relay → agent over tunnel streams,
// agent → internal HTTP server over TCP).
//
// It does what httputil.ReverseProxy with an http.Transport does, minus what
// costs CPU on every request and buys nothing here: the Transport's two
// goroutines per connection and the hand-offs between them, 32 KiB copy
// buffers, and a flush per write. A forwarded exchange runs in the handler's
// goroutine: write the request on a pooled connection, read the response
// head, copy the body. Bodies of known length are copied and left to the
// server's own buffering; streamed bodies (SSE, chunked) are flushed after
// every read so each event reaches the client when it is produced.
//
// A connection goes back to the pool only when the exchange ended cleanly
// (body read to EOF, no Connection: close).
//
// A request that may have reached the upstream is never sent twice, unless
// it is a GET or HEAD: a POST is a tools/call as often as not, and a second
// copy would run it twice. So the forwarder avoids stale connections rather
// than retrying on them: a pooled connection idle longer than
// Options.IdleTimeout is dropped, and one that is readable while idle (the
// peer closed or reset it, or sent bytes nobody asked for) is dropped too
// (alive). What then still fails after a byte of the request went out
// (the peer closed in the instant between that check and our write, or it
// read the request and died) is an *UpstreamError with OutcomeUnknown set:
// the caller answers that the request may or may not have been carried out.
// A request of which no byte was written is sent again on a fresh
// connection once, whatever its method; a GET or HEAD also when a reused
// connection was closed under it before any answer came.
package httpfwd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DialFunc opens a new connection to the upstream.
type DialFunc func(ctx context.Context) (net.Conn, error)

// Forwarder forwards exchanges to one upstream. It is safe for concurrent use.
type Forwarder struct {
	dial        DialFunc
	maxIdle     int
	idleTimeout time.Duration

	mu     sync.Mutex
	idle   []*conn // LIFO: the most recently used connection is the warmest
	closed bool
}

// Options tunes a Forwarder.
type Options struct {
	MaxIdle     int           // idle connections kept (default 256)
	IdleTimeout time.Duration // an idle connection older than this is closed on reuse (default 60 s)
}

// New returns a Forwarder that dials with dial.
func New(dial DialFunc, o Options) *Forwarder {
	if o.MaxIdle <= 0 {
		o.MaxIdle = 256
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = 60 * time.Second
	}
	return &Forwarder{dial: dial, maxIdle: o.MaxIdle, idleTimeout: o.IdleTimeout}
}

type conn struct {
	net.Conn
	br       *bufio.Reader
	idleFrom time.Time
	pre      prefixReader // what br reads once the conn was parked

	// sent counts the bytes of the exchange in progress written to the
	// connection (Write): any at all, and the upstream may have the request.
	sent int64
	// How alive probes the connection between exchanges; see probeOf.
	probe probeKind
	peek  *socketPeek
	// early is set once the upstream answered before it had our whole
	// request (earlyAnswer): the connection is not reused.
	early bool
	// sender writes the exchange's streamed body, if any (bodySender).
	sender *bodySender
}

// Write counts what goes out, so a failure can tell whether the upstream
// may have seen the request.
func (c *conn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.sent += int64(n)
	return n, err
}

// park gives br's buffer back while the connection waits for its next
// byte, and takes one again once a byte came: an SSE answer spends most of
// its life waiting, and a buffer per open stream was most of what it cost.
// It returns the reader to go on with. (Go offers no wait for readability
// on a net.Conn, hence the one-byte read, which br then reads first.)
func (c *conn) park() *bufio.Reader {
	if c.br.Buffered() > 0 {
		return c.br
	}
	c.br.Reset(nil)
	readerPool.Put(c.br)
	c.pre.r = c.Conn
	c.pre.err = c.pre.waitByte() // a cancelled exchange's error, for the copy
	c.br = readerPool.Get().(*bufio.Reader)
	c.br.Reset(&c.pre)
	return c.br
}

// prefixReader returns a byte already read, then an error already met,
// then reads r.
type prefixReader struct {
	b   byte
	has bool
	err error
	r   io.Reader
}

// waitByte blocks until a byte of r arrives, keeps it for the next Read,
// and returns the error the read met (not kept).
func (p *prefixReader) waitByte() error {
	var one [1]byte
	n, err := p.r.Read(one[:])
	p.b, p.has = one[0], n == 1
	return err
}

func (p *prefixReader) Read(b []byte) (int, error) {
	switch {
	case len(b) == 0:
		return 0, nil
	case p.has:
		b[0], p.has = p.b, false
		return 1, nil
	case p.err != nil:
		err := p.err
		p.err = nil
		return 0, err
	}
	return p.r.Read(b)
}

var (
	// Readers of upstream and client connections alike. A connection
	// holds one between exchanges and while it reads; an exchange that
	// waits on its upstream holds none (conn.park, connState.parkReader).
	// The writer and copy buffers are taken per exchange. Streams copy through
	// a small buffer: events are small, and big ones just take more reads.
	readerPool     = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}
	writerPool     = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	copyPool       = sync.Pool{New: func() any { b := make([]byte, 16<<10); return &b }}
	streamCopyPool = sync.Pool{New: func() any { b := make([]byte, 2<<10); return &b }}
)

func (c *conn) close() {
	_ = c.Conn.Close()
	if c.br != nil {
		c.br.Reset(nil)
		readerPool.Put(c.br)
		c.br = nil
	}
}

// Request describes the outgoing request; the incoming request supplies the
// method, headers (minus hop-by-hop ones) and body.
type Request struct {
	Host       string      // Host header to send
	RequestURI string      // path and query to send, e.g. "/notes/mcp"
	SetHeader  http.Header // headers to set (replacing the client's)
	DelHeader  []string    // client headers to drop (canonical names)
}

// UpstreamError reports that the exchange failed before a response head
// arrived, so the caller may still answer the client itself.
type UpstreamError struct {
	Op  string // "dial", "write request", "read response", ...
	Err error
	// OutcomeUnknown is set when (part of) the request had been written
	// and no answer came: the upstream may have carried it out, and it was
	// not sent again (see the package comment). The caller must not say
	// that it failed, only that its outcome is unknown.
	OutcomeUnknown bool
	// Body is set when reading the client's request body failed (its
	// framing was broken, or it was over a limit): the client's fault,
	// not the upstream's. Err is then the read's error.
	Body bool
}

func (e *UpstreamError) Error() string { return "httpfwd: " + e.Op + ": " + e.Err.Error() }
func (e *UpstreamError) Unwrap() error { return e.Err }

// Forward sends r upstream as described by out and streams the answer to w.
// It returns an *UpstreamError if nothing was written to w; errors after the
// response head was sent are returned as they are (the client's answer is
// then cut short, which is all that can be done).
func (f *Forwarder) Forward(w http.ResponseWriter, r *http.Request, out Request) error {
	ctx := r.Context()
	// A small body of known length (every MCP message but huge ones) is
	// read first, so the request can be sent again if a pooled connection
	// turns out to be dead.
	var body []byte
	if r.ContentLength > 0 && r.ContentLength <= maxBufferedBody {
		bp := bodyPool.Get().(*[]byte)
		defer bodyPool.Put(bp)
		if cap(*bp) < int(r.ContentLength) {
			*bp = make([]byte, r.ContentLength)
		}
		body = (*bp)[:r.ContentLength]
		if _, err := io.ReadFull(r.Body, body); err != nil {
			return &UpstreamError{Op: "read request body", Err: err, Body: true}
		}
	}
	idempotent := r.Method == http.MethodGet || r.Method == http.MethodHead
	for attempt := 0; ; attempt++ {
		c, reused, err := f.get(ctx)
		if err != nil {
			return &UpstreamError{Op: "dial", Err: err}
		}
		resp, err := f.roundTrip(ctx, c, r, out, body)
		if err == nil {
			return f.copyResponse(ctx, w, c, r, resp)
		}
		sent := c.sent > 0
		c.close()
		if !retryable(ctx, attempt == 0, reused, body != nil || r.ContentLength == 0, sent, idempotent, err) {
			return markOutcome(err, sent)
		}
	}
}

// markOutcome sets OutcomeUnknown on a failure after a byte of the request
// went out and before any answer came.
func markOutcome(err error, sent bool) error {
	var ue *UpstreamError
	if sent && errors.As(err, &ue) && !ue.Body &&
		(ue.Op == "write request" || ue.Op == "write body" || ue.Op == "read response" && noAnswer(ue.Err) || ue.Op == opAfterInterim) {
		ue.OutcomeUnknown = true
	}
	return err
}

// noAnswer reports a read error that means nothing of an answer came (as
// opposed to a head that was broken).
func noAnswer(err error) bool {
	var he *HeadError
	return !errors.As(err, &he) && !errors.Is(err, errTooManyInterim) && !errors.Is(err, errSwitched)
}

// maxInterim bounds the interim (1xx) answers skipped before the final
// one, as net/http's Transport does: an upstream must not keep an exchange
// going on 1xx heads alone.
const maxInterim = 5

var errTooManyInterim = errors.New("too many interim (1xx) answers")

// opAfterInterim names a failure after the upstream had answered with an
// interim head: it had the request, so it is not sent again.
const opAfterInterim = "read response after interim answer"

// retryable reports whether a failed exchange is sent again on a fresh
// connection, once, with the whole body still at hand: when no byte of it
// was written (the upstream cannot have seen it), or, for a GET or HEAD, on
// a reused connection that failed before the upstream said anything (the
// peer closed it while it sat idle). A POST that went out is never sent
// again: it may have been carried out (see the package comment).
func retryable(ctx context.Context, firstTry, reused, bodyAtHand, sent, idempotent bool, err error) bool {
	var ue *UpstreamError
	if !firstTry || !bodyAtHand || ctx.Err() != nil || !errors.As(err, &ue) || ue.Body {
		return false
	}
	if !sent {
		return ue.Op == "write request" || ue.Op == "write body"
	}
	return idempotent && reused &&
		(ue.Op == "write request" || ue.Op == "read response" && closedByPeer(ue.Err))
}

// closedByPeer reports an error that means the peer had closed the
// connection before it read our request: nothing came back at all.
func closedByPeer(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)
}

// maxBufferedBody bounds the request bodies read ahead for a retry.
const maxBufferedBody = 1 << 20

var bodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// get returns an idle connection that is still alive, or a new one.
func (f *Forwarder) get(ctx context.Context) (*conn, bool, error) {
	now := time.Now()
	f.mu.Lock()
	for n := len(f.idle); n > 0; n = len(f.idle) {
		c := f.idle[n-1]
		f.idle[n-1] = nil
		f.idle = f.idle[:n-1]
		f.mu.Unlock()
		if now.Sub(c.idleFrom) < f.idleTimeout && c.alive() {
			c.sent = 0
			return c, true, nil
		}
		c.close()
		f.mu.Lock()
	}
	f.mu.Unlock()
	nc, err := f.dial(ctx)
	if err != nil {
		return nil, false, err
	}
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(nc)
	c := &conn{Conn: nc, br: br}
	c.probe, c.peek = probeOf(nc)
	return c, false, nil
}

func (f *Forwarder) put(c *conn) {
	c.idleFrom = time.Now()
	f.mu.Lock()
	if f.closed || len(f.idle) >= f.maxIdle {
		f.mu.Unlock()
		c.close()
		return
	}
	f.idle = append(f.idle, c)
	f.mu.Unlock()
}

// CloseIdle closes the pooled idle connections (for instance when the
// upstream went away and they are all dead).
func (f *Forwarder) CloseIdle() {
	f.mu.Lock()
	idle := f.idle
	f.idle = nil
	f.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// Close closes idle connections and stops pooling.
func (f *Forwarder) Close() {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	f.CloseIdle()
}

// hopHeaders are connection-level headers a proxy must not forward
// (RFC 9110 §7.6.1).
var hopHeaders = map[string]bool{
	"Connection": true, "Proxy-Connection": true, "Keep-Alive": true,
	"Proxy-Authenticate": true, "Proxy-Authorization": true, "Te": true,
	"Trailer": true, "Transfer-Encoding": true, "Upgrade": true,
}

// skipHeader reports whether a client header stays behind.
func skipHeader(k string, out *Request, connTokens []string) bool {
	if hopHeaders[k] || k == "Content-Length" || k == "Host" {
		return true
	}
	if _, ok := out.SetHeader[k]; ok {
		return true
	}
	for _, d := range out.DelHeader {
		if k == d {
			return true
		}
	}
	for _, t := range connTokens {
		if strings.EqualFold(k, t) {
			return true
		}
	}
	return false
}

// connectionTokens lists the header names a Connection header declares
// hop-by-hop.
func connectionTokens(h http.Header) []string {
	var out []string
	for _, v := range h["Connection"] {
		for _, t := range strings.Split(v, ",") {
			if t = strings.TrimSpace(t); t != "" {
				out = append(out, t)
			}
		}
	}
	return out
}

func writeHeaderLine(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	// A header value cannot carry CR or LF through net/http's parser, but
	// SetHeader values come from config: never let one split the request.
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// roundTrip writes the request and reads the response head.
func (f *Forwarder) roundTrip(ctx context.Context, c *conn, r *http.Request, out Request, body []byte) (*http.Response, error) {
	// Unblock reads and writes when the client goes away, without a
	// goroutine per exchange.
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() { bw.Reset(nil); writerPool.Put(bw) }()
	bw.WriteString(r.Method)
	bw.WriteByte(' ')
	bw.WriteString(out.RequestURI)
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(out.Host)
	bw.WriteString("\r\n")
	tokens := connectionTokens(r.Header)
	for k, vs := range r.Header {
		if skipHeader(k, &out, tokens) {
			continue
		}
		for _, v := range vs {
			writeHeaderLine(bw, k, v)
		}
	}
	for k, vs := range out.SetHeader {
		for _, v := range vs {
			writeHeaderLine(bw, k, v)
		}
	}
	hasBody := body != nil || (r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0)
	switch {
	case !hasBody:
		if r.Method == http.MethodPost || r.Method == http.MethodPut || r.Method == http.MethodPatch {
			bw.WriteString("Content-Length: 0\r\n")
		}
		bw.WriteString("\r\n")
	case r.ContentLength > 0:
		bw.WriteString("Content-Length: ")
		bw.WriteString(strconv.FormatInt(r.ContentLength, 10))
		bw.WriteString("\r\n\r\n")
	default:
		bw.WriteString("Transfer-Encoding: chunked\r\n\r\n")
	}
	if body != nil {
		bw.Write(body)
	}
	if err := bw.Flush(); err != nil {
		if resp, ok := c.earlyResponse(ctx, r); ok {
			return resp, nil
		}
		return nil, &UpstreamError{Op: "write request", Err: err}
	}
	if body != nil || !hasBody {
		return readFinalResponse(c, r)
	}
	// A streamed body is sent while the answer is awaited (see
	// roundTripRaw).
	s := c.sendBody(ctx, func(bw *bufio.Writer) error {
		if err := writeBody(bw, r); err != nil {
			return bodyError(err)
		}
		if err := bw.Flush(); err != nil {
			return &UpstreamError{Op: "write body", Err: err}
		}
		return nil
	})
	resp, err := readFinalResponse(c, r)
	if err != nil {
		return nil, s.finish(ctx, err)
	}
	s.answered(ctx)
	return resp, nil
}

// readFinalResponse reads the upstream's final answer head, skipping
// interim ones.
func readFinalResponse(c *conn, r *http.Request) (*http.Response, error) {
	for op, interim := "read response", 0; ; op, interim = opAfterInterim, interim+1 {
		if interim > maxInterim {
			return nil, &UpstreamError{Op: op, Err: errTooManyInterim}
		}
		// Wait for the first byte apart, so a connection the peer had
		// closed (EOF with nothing read) is told from a broken answer.
		if _, err := c.br.Peek(1); err != nil {
			return nil, &UpstreamError{Op: op, Err: err}
		}
		resp, err := http.ReadResponse(c.br, r)
		if err != nil {
			return nil, &UpstreamError{Op: op, Err: err}
		}
		// Skip interim answers (100 Continue, 103 Early Hints).
		if resp.StatusCode >= 100 && resp.StatusCode < 200 && resp.StatusCode != http.StatusSwitchingProtocols {
			continue
		}
		return resp, nil
	}
}

// readError marks an error reading the client's body, as opposed to
// writing it upstream.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }

// clientBody reads the client's body and marks its errors (but EOF).
type clientBody struct{ r io.Reader }

func (b clientBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &readError{err}
	}
	return n, err
}

// bodyError is the UpstreamError for a failure to pass the body on: the
// client's (Body) when reading it failed or it ended short.
func bodyError(err error) *UpstreamError {
	var re *readError
	switch {
	case errors.As(err, &re):
		return &UpstreamError{Op: "read request body", Err: re.err, Body: true}
	case errors.Is(err, errBodyShort):
		return &UpstreamError{Op: "read request body", Err: io.ErrUnexpectedEOF, Body: true}
	}
	return &UpstreamError{Op: "write body", Err: err}
}

// errBodyShort is a body that ended before its Content-Length.
var errBodyShort = fmt.Errorf("request body shorter than its Content-Length: %w", io.ErrUnexpectedEOF)

// earlyResponse is earlyAnswer for Forward.
func (c *conn) earlyResponse(ctx context.Context, r *http.Request) (*http.Response, bool) {
	_ = c.SetReadDeadline(time.Now().Add(earlyAnswerWait))
	resp, err := http.ReadResponse(c.br, r)
	if !c.clearReadDeadline(ctx) || err != nil || resp.StatusCode < 200 {
		return nil, false
	}
	c.early = true
	resp.Close = true
	return resp, true
}

// writeBody copies the client's body: exactly ContentLength bytes, or chunked.
func writeBody(bw *bufio.Writer, r *http.Request) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	body := clientBody{r.Body}
	if r.ContentLength > 0 {
		n, err := io.CopyBuffer(bw, io.LimitReader(body, r.ContentLength), *bp)
		if err == nil && n < r.ContentLength {
			err = errBodyShort
		}
		return err
	}
	buf := *bp
	for {
		n, err := body.Read(buf)
		if n > 0 {
			fmt.Fprintf(bw, "%x\r\n", n)
			bw.Write(buf[:n])
			bw.WriteString("\r\n")
		}
		if err == io.EOF {
			bw.WriteString("0\r\n\r\n")
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// copyResponse sends the response head and streams the body to w.
func (f *Forwarder) copyResponse(ctx context.Context, w http.ResponseWriter, c *conn, r *http.Request, resp *http.Response) error {
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	h := w.Header()
	tokens := connectionTokens(resp.Header)
	for k, vs := range resp.Header {
		if hopHeaders[k] || (k == "Content-Length" && resp.ContentLength < 0) {
			continue
		}
		drop := false
		for _, t := range tokens {
			if strings.EqualFold(k, t) {
				drop = true
			}
		}
		if !drop {
			h[k] = vs
		}
	}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") && h.Get("X-Accel-Buffering") == "" {
		// Tell buffering proxies in front of us (nginx and kin) to pass
		// events on as they come.
		h.Set("X-Accel-Buffering", "no")
	}
	w.WriteHeader(resp.StatusCode)
	streaming := resp.ContentLength < 0 || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream")
	if fl, ok := w.(flusher); ok && streaming {
		// The head of a stream goes out at once: a client waiting on an
		// idle SSE stream must not wait for its first event to see it.
		fl.Flush()
	}
	err := copyBody(w, resp.Body, streaming)
	_ = resp.Body.Close()
	whole := c.endBody(ctx)
	if !stop() || err != nil || resp.Close || r.Close || !whole || c.early {
		// The client left mid-answer, the copy failed, or either side
		// asked to close: the connection's state is unknown, drop it.
		c.close()
		return err
	}
	f.put(c)
	return nil
}

type flusher interface{ Flush() }

func copyBody(w http.ResponseWriter, body io.Reader, streaming bool) error {
	fl, _ := w.(flusher)
	if !streaming || fl == nil {
		bp := copyPool.Get().(*[]byte)
		defer copyPool.Put(bp)
		_, err := io.CopyBuffer(writerOnly{w}, body, *bp)
		return err
	}
	var cb copyBuf
	defer cb.release()
	for {
		buf := cb.bytes()
		n, rerr := body.Read(buf)
		if n > 0 {
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			// Every read is flushed: holding back bytes that are "about
			// to be followed" risks an event waiting for the next one.
			fl.Flush()
			cb.filled(n)
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// copyBuf is the buffer of a streamed copy. It starts small (an idle SSE
// stream holds only that) and moves to a big one once a read fills it: a
// large event or a burst is under way.
type copyBuf struct{ small, big *[]byte }

func (b *copyBuf) bytes() []byte {
	switch {
	case b.big != nil:
		return *b.big
	case b.small == nil:
		b.small = streamCopyPool.Get().(*[]byte)
	}
	return *b.small
}

// filled notes a read of n bytes into bytes().
func (b *copyBuf) filled(n int) {
	if b.big == nil && n == len(*b.small) {
		b.big = copyPool.Get().(*[]byte)
	}
}

func (b *copyBuf) release() {
	if b.small != nil {
		streamCopyPool.Put(b.small)
	}
	if b.big != nil {
		copyPool.Put(b.big)
	}
}

// writerOnly hides ReadFrom so io.CopyBuffer uses our pooled buffer.
type writerOnly struct{ io.Writer }
