package httpfwd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// RawRequest is a request already in HTTP/1.1 wire form, for a proxy that
// parsed only the head it received (see ReadHead) and passes the rest on.
type RawRequest struct {
	// Head is the request line and the header lines to send, each ending
	// in CRLF, without framing headers and without the blank line.
	Head []byte
	// ContentLength is the body's length, sent as Content-Length; -1 sends
	// no body and no Content-Length.
	ContentLength int64
	// Body is the whole body, or nil to read ContentLength bytes from
	// BodyReader while sending. Only a request with its body in memory (or
	// none) is sent again on a fresh connection when a pooled one was dead.
	Body       []byte
	BodyReader io.Reader
	// NoResponseBody is set for HEAD: the answer's framing headers describe
	// a body that does not follow.
	NoResponseBody bool
	// OnPark, if set, is called the first time the exchange waits on the
	// upstream with its reader parked (an SSE answer between events, most
	// of a GET stream's life). Head and Body are not read from then on:
	// they are set to nil first, and the caller may give their memory
	// back.
	OnPark func()
	// OnHead, if set, is told of the upstream's final answer head (and
	// status code) before it is passed on; it must not keep h.
	OnHead func(req *RawRequest, code int, h *Head)
	// PrefixField, if set, names an answer header whose values are
	// passed on with Prefix in front (the relay tags Mcp-Session-Id with
	// the agent replica that made it).
	PrefixField string
	Prefix      []byte
	// Status is the upstream's final answer status, once ForwardRaw read
	// it.
	Status int

	streamed *countingReader // set by ReadBody for a body read while sending
}

// parked tells OnPark, once, that the exchange parked.
func (r *RawRequest) parked() {
	if f := r.OnPark; f != nil {
		r.OnPark, r.Head, r.Body = nil, nil, nil
		f()
	}
}

// BodyRead reports whether the whole body has been read from the client
// (a streamed one only once it was sent on).
func (r *RawRequest) BodyRead() bool { return r.streamed == nil || r.streamed.left.Load() <= 0 }

// countingReader counts down the bytes of a streamed body, so a watch on
// the client's connection starts only once nothing more is to be read.
type countingReader struct {
	r    io.Reader
	left atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.left.Add(-int64(n))
	return n, err
}

var headPool = sync.Pool{New: func() any { return new(Head) }}

// ForwardRaw sends req upstream and writes the answer to w in HTTP/1.1
// wire form: the status line and end-to-end header lines as the upstream
// sent them, the body with explicit framing (Content-Length, or chunked,
// including for an answer the upstream ended by closing), so the connection
// behind w can carry the next exchange. What goes to w is buffered and
// written whenever the upstream has nothing more buffered: each SSE event
// goes out when it arrives, a small answer in one write.
//
// Cancelling ctx aborts the exchange. It returns an *UpstreamError if
// nothing was written to w; after that, an error means the answer was
// cut short and w's connection must be closed.
func (f *Forwarder) ForwardRaw(ctx context.Context, w io.Writer, req *RawRequest) error {
	// copyRaw gives head back once it wrote the answer's head; the
	// failures before that do here.
	head := headPool.Get().(*Head)
	dst := &answerWriter{w: w}
	defer dst.discard()
	idempotent := bytes.HasPrefix(req.Head, []byte("GET ")) || bytes.HasPrefix(req.Head, []byte("HEAD "))
	for attempt := 0; ; attempt++ {
		c, reused, err := f.get(ctx)
		if err != nil {
			headPool.Put(head)
			return &UpstreamError{Op: "dial", Err: err}
		}
		// One hook for the whole exchange: cancelling ctx wakes whatever
		// waits on c.
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
		code, err := f.roundTripRaw(ctx, c, req, head)
		if err == nil {
			req.Status = code
			if req.OnHead != nil {
				req.OnHead(req, code, head)
			}
			if err := f.copyRaw(ctx, dst, c, req, head, code, stop); err != nil {
				// Cut short: let the client have what came, so it sees a
				// truncated answer rather than none.
				_ = dst.Flush()
				return err
			}
			return nil
		}
		stop()
		sent := c.sent > 0
		c.close()
		if !retryable(ctx, attempt == 0, reused, req.Body != nil || req.ContentLength <= 0, sent, idempotent, err) {
			headPool.Put(head)
			return markOutcome(err, sent)
		}
	}
}

// roundTripRaw writes the request and reads the final response head.
func (f *Forwarder) roundTripRaw(ctx context.Context, c *conn, req *RawRequest, head *Head) (int, error) {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(c)
	defer func() { bw.Reset(nil); writerPool.Put(bw) }()
	bw.Write(req.Head)
	if req.ContentLength >= 0 {
		writeContentLength(bw, req.ContentLength)
	}
	bw.WriteString("\r\n")
	streamed := req.Body == nil && req.ContentLength > 0
	if req.Body != nil {
		bw.Write(req.Body)
	}
	if err := bw.Flush(); err != nil {
		if code, ok := c.earlyAnswer(ctx, head); ok {
			return code, nil
		}
		return 0, &UpstreamError{Op: "write request", Err: err}
	}
	if !streamed {
		return readFinalHead(c, head)
	}
	// A body streamed from the client is sent while the answer is awaited:
	// an upstream may answer before it read it all (413) and stop reading,
	// and a write blocked on a full window would never see that answer.
	s := c.sendBody(ctx, func(bw *bufio.Writer) error {
		if err := copyExactly(bw, clientBody{req.BodyReader}, req.ContentLength); err != nil {
			return bodyError(err)
		}
		if err := bw.Flush(); err != nil {
			return &UpstreamError{Op: "write body", Err: err}
		}
		return nil
	})
	code, err := readFinalHead(c, head)
	if err != nil {
		return 0, s.finish(ctx, err)
	}
	s.answered(ctx)
	return code, nil
}

// readFinalHead reads the upstream's final answer head into head, skipping
// interim ones.
func readFinalHead(c *conn, head *Head) (int, error) {
	for op, interim := "read response", 0; ; op, interim = opAfterInterim, interim+1 {
		if interim > maxInterim {
			return 0, &UpstreamError{Op: op, Err: errTooManyInterim}
		}
		if _, err := c.br.Peek(1); err != nil {
			return 0, &UpstreamError{Op: op, Err: err}
		}
		if err := ReadHead(c.br, head); err != nil {
			return 0, &UpstreamError{Op: op, Err: err}
		}
		code, err := head.StatusCode()
		if err != nil {
			return 0, &UpstreamError{Op: "read response", Err: err}
		}
		switch {
		case code == 101:
			return 0, &UpstreamError{Op: "read response", Err: errSwitched}
		case code < 200:
			continue // interim answer (100 Continue, 103 Early Hints)
		case head.OtherEncoding:
			return 0, &UpstreamError{Op: "read response", Err: &HeadError{Reason: "unsupported Transfer-Encoding"}}
		}
		return code, nil
	}
}

// bodySender writes a streamed request body in a goroutine of its own
// while the exchange's goroutine waits for the answer and copies it (as
// net/http's Transport does): an upstream may answer before it read the
// whole body — a 413 after which it stops reading (a write blocked on it
// would never see that answer), or an SSE head before it reads on (full
// duplex). It is owned by the exchange, which ends it with finish (no
// answer came) or conn.endBody (the answer was passed on); both wait for
// it.
type bodySender struct {
	c    *conn
	done chan error

	mu       sync.Mutex
	headSeen bool // the answer's head came: no read deadline from here
}

// sendBody starts write. When it fails before the answer's head came, the
// wait for one is bounded: by earlyAnswerWait if writing upstream failed
// (the upstream's answer, if any, is on its way), at once if reading the
// client's body did.
func (c *conn) sendBody(ctx context.Context, write func(*bufio.Writer) error) *bodySender {
	s := &bodySender{c: c, done: make(chan error, 1)}
	c.sender = s
	go func() {
		// A writer of its own: the exchange's goes back to its pool when
		// the answer's head came, this one may write on.
		bw := writerPool.Get().(*bufio.Writer)
		bw.Reset(c)
		err := write(bw)
		bw.Reset(nil)
		writerPool.Put(bw)
		if err != nil {
			var ue *UpstreamError
			until := time.Now().Add(earlyAnswerWait)
			if errors.As(err, &ue) && ue.Body {
				until = aLongTimeAgo
			}
			s.mu.Lock()
			if !s.headSeen && ctx.Err() == nil {
				_ = c.SetReadDeadline(until)
				if ctx.Err() != nil {
					_ = c.SetDeadline(aLongTimeAgo)
				}
			}
			s.mu.Unlock()
		}
		s.done <- err
	}()
	return s
}

// answered notes that the answer's head came: a deadline the goroutine
// set for it is lifted, and it sets none from here.
func (s *bodySender) answered(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.headSeen = true
	s.c.clearReadDeadline(ctx)
}

// stop ends the goroutine (a write in progress fails) and returns its
// error.
func (s *bodySender) stop(ctx context.Context) error {
	_ = s.c.SetWriteDeadline(aLongTimeAgo)
	err := <-s.done
	s.c.sender = nil
	if ctx.Err() == nil {
		_ = s.c.SetWriteDeadline(time.Time{})
	}
	return err
}

// finish ends the goroutine when no answer came (readErr) and says why
// the exchange failed: the client's broken body before anything else.
func (s *bodySender) finish(ctx context.Context, readErr error) error {
	berr := s.stop(ctx)
	s.c.clearReadDeadline(ctx)
	var ue *UpstreamError
	if errors.As(berr, &ue) && ue.Body {
		return berr
	}
	return readErr
}

// endBody ends the goroutine of a streamed body, if any, once the answer
// was passed on; it reports whether the whole body had gone out (else the
// connection is not reused).
func (c *conn) endBody(ctx context.Context) bool {
	if c.sender == nil {
		return true
	}
	return c.sender.stop(ctx) == nil
}

var errSwitched = errors.New("upstream switched protocols")

// clearReadDeadline lifts earlyAnswer's read deadline unless ctx ended:
// then the exchange's cancellation hook has set (or is setting) a deadline
// in the past, which must stay. It reports false if ctx ended.
func (c *conn) clearReadDeadline(ctx context.Context) bool {
	if ctx.Err() != nil {
		return false
	}
	_ = c.SetReadDeadline(time.Time{})
	if ctx.Err() != nil {
		// Cancelled in between: the hook's deadline may have been undone.
		_ = c.SetDeadline(aLongTimeAgo)
		return false
	}
	return true
}

// earlyAnswerWait bounds the wait for an answer on a connection whose
// request could not be written whole.
const earlyAnswerWait = 2 * time.Second

// earlyAnswer reads the final answer head an upstream sent before it
// stopped reading our request (413 for a body over its limit, as
// net/http's server does, then closing): that answer is the exchange's,
// not the failed write. It reports false if none came (within
// earlyAnswerWait: the peer's answer, if any, was sent before the write
// failed). The connection is not reused after it.
func (c *conn) earlyAnswer(ctx context.Context, head *Head) (int, bool) {
	_ = c.SetReadDeadline(time.Now().Add(earlyAnswerWait))
	ok := func() bool {
		if _, err := c.br.Peek(1); err != nil {
			return false
		}
		return ReadHead(c.br, head) == nil
	}()
	if !c.clearReadDeadline(ctx) || !ok {
		return 0, false
	}
	code, err := head.StatusCode()
	if err != nil || code < 200 || head.OtherEncoding {
		return 0, false
	}
	c.early = true
	return code, true
}

func copyExactly(w io.Writer, r io.Reader, n int64) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	m, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(r, n), *bp)
	if err == nil && m < n {
		err = errBodyShort
	}
	return err
}

// copyRaw writes the response head and body to dst, giving head back to
// its pool in between (a stream holds none); stop removes the exchange's
// cancellation hook.
func (f *Forwarder) copyRaw(ctx context.Context, dst *answerWriter, c *conn, req *RawRequest, head *Head, code int, stop func() bool) error {
	// Our side speaks HTTP/1.1 whatever the upstream spoke (the framing we
	// write is 1.1's); an HTTP/1.0 upstream closes after the answer.
	reuse := !head.Close && bytes.HasPrefix(head.Start, []byte("HTTP/1.1 "))
	dst.WriteString("HTTP/1.1")
	dst.Write(head.Start[8:])
	dst.WriteString("\r\n")
	sse, accel := false, false
	for _, fl := range head.Fields {
		name := head.Name(fl)
		if IsHopByHop(name) || head.IsConnToken(name) {
			continue
		}
		switch {
		case EqualFold(name, "Content-Type"):
			v := head.Value(fl)
			sse = len(v) >= 17 && EqualFold(v[:17], "text/event-stream")
		case EqualFold(name, "X-Accel-Buffering"):
			accel = true
		}
		// In canonical form, as AppendField writes it.
		dst.Write(head.Name(fl))
		dst.WriteString(": ")
		if req.PrefixField != "" && EqualFold(name, req.PrefixField) {
			dst.Write(req.Prefix)
		}
		dst.Write(head.Value(fl))
		dst.WriteString("\r\n")
	}
	if sse && !accel {
		// Tell buffering proxies in front of us (nginx and kin) to pass
		// events on as they come.
		dst.WriteString("X-Accel-Buffering: no\r\n")
	}
	chunked, length := head.Chunked, head.ContentLength
	headPool.Put(head)
	var err error
	switch noBody := req.NoResponseBody || code == 204 || code == 304; {
	case noBody:
		if chunked {
			dst.WriteString("Transfer-Encoding: chunked\r\n")
		} else if length >= 0 {
			writeContentLength(dst, length)
		}
		dst.WriteString("\r\n")
		err = dst.Flush()
	case chunked:
		dst.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		// A GET's answer is a stream that mostly waits (MCP's GET stream):
		// its reader parks from the start; other answers once they last.
		started := time.Now()
		if bytes.HasPrefix(req.Head, []byte("GET ")) {
			started = started.Add(-parkAfter)
		}
		err = copyChunked(dst, c.br, c, started, req.parked)
	case length >= 0:
		writeContentLength(dst, length)
		dst.WriteString("\r\n")
		err = copyFlushing(dst, c.br, length, false)
	default:
		// Ended by the upstream closing: chunk it, so our side of the
		// connection lives on.
		dst.WriteString("Transfer-Encoding: chunked\r\n\r\n")
		err = copyFlushing(dst, c.br, -1, true)
		reuse = false
	}
	if !c.endBody(ctx) {
		// Answered before the whole body went out: the rest of it is not
		// sent, and the connection is not in a state to reuse.
		reuse = false
	}
	if !stop() || err != nil || !reuse || c.early {
		c.close()
		return err
	}
	f.put(c)
	return nil
}

// flushWriter is where an answer is copied to: a bufio.Writer, or an
// answerWriter that holds a buffer only while it has something to write.
type flushWriter interface {
	io.Writer
	io.StringWriter
	Flush() error
	AvailableBuffer() []byte
}

// answerWriter buffers an answer on its way to the client, holding a pooled
// buffer only between a write and the next flush: an answer that waits for
// the upstream (an SSE stream between events, most of its life) holds none.
type answerWriter struct {
	w  io.Writer
	bw *bufio.Writer
}

func (a *answerWriter) buf() *bufio.Writer {
	if a.bw == nil {
		a.bw = writerPool.Get().(*bufio.Writer)
		a.bw.Reset(a.w)
	}
	return a.bw
}

func (a *answerWriter) Write(p []byte) (int, error)       { return a.buf().Write(p) }
func (a *answerWriter) WriteString(s string) (int, error) { return a.buf().WriteString(s) }
func (a *answerWriter) AvailableBuffer() []byte           { return a.buf().AvailableBuffer() }

// discard drops what is buffered (an answer cut short) and gives the
// buffer back.
func (a *answerWriter) discard() {
	if a.bw != nil {
		a.bw.Reset(nil)
		writerPool.Put(a.bw)
		a.bw = nil
	}
}

// Flush writes what is buffered and gives the buffer back.
func (a *answerWriter) Flush() error {
	if a.bw == nil {
		return nil
	}
	err := a.bw.Flush()
	a.discard() // nothing is left to drop
	return err
}

func writeContentLength(dst flushWriter, n int64) {
	dst.WriteString("Content-Length: ")
	dst.Write(strconv.AppendInt(dst.AvailableBuffer(), n, 10))
	dst.WriteString("\r\n")
}

// copyFlushing copies n bytes (n < 0: until EOF) from src to dst, as chunks
// if chunk is set, flushing dst whenever src would block. What src already
// holds is written from its buffer; only reads that must wait go through a
// copy buffer (read straight into when it is big).
func copyFlushing(dst flushWriter, src *bufio.Reader, n int64, chunk bool) error {
	var cb copyBuf
	defer cb.release()
	write := func(p []byte) error {
		if chunk {
			dst.Write(strconv.AppendInt(dst.AvailableBuffer(), int64(len(p)), 16))
			dst.WriteString("\r\n")
		}
		if _, err := dst.Write(p); err != nil {
			return err
		}
		if chunk {
			dst.WriteString("\r\n")
		}
		return nil
	}
	for n != 0 {
		if k := src.Buffered(); k > 0 {
			if n > 0 && int64(k) > n {
				k = int(n)
			}
			p, _ := src.Peek(k)
			if err := write(p); err != nil {
				return err
			}
			_, _ = src.Discard(k)
			if n > 0 {
				n -= int64(k)
			}
			continue
		}
		if err := dst.Flush(); err != nil {
			return err
		}
		p := cb.bytes()
		if n > 0 && int64(len(p)) > n {
			p = p[:n]
		}
		m, rerr := src.Read(p)
		if m > 0 {
			if err := write(p[:m]); err != nil {
				return err
			}
			if n > 0 {
				n -= int64(m)
			}
			cb.filled(m)
		}
		if rerr == io.EOF && n < 0 {
			break
		}
		if rerr == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if rerr != nil {
			return rerr
		}
	}
	if chunk {
		dst.WriteString("0\r\n\r\n")
	}
	return dst.Flush()
}

// maxChunkLine bounds a chunk-size line (with extensions) and a trailer line.
const maxChunkLine = 4 << 10

// parkAfter is how long an answer runs before its upstream reader is
// parked between chunks (conn.park): a short answer is not worth the extra
// read, an SSE stream that stays open is. A GET's parks from the start.
const parkAfter = time.Second

// copyChunked copies a chunked body, re-framing each chunk (extensions and
// trailers, hop-by-hop by nature, stay behind) and flushing dst whenever
// src would block. If up is set (src is its reader), an answer older than
// parkAfter parks the reader while it waits for the next chunk; parked is
// told the first time.
func copyChunked(dst flushWriter, src *bufio.Reader, up *conn, started time.Time, parked func()) error {
	for {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
			if up != nil && time.Since(started) >= parkAfter {
				if parked != nil {
					parked()
					parked = nil
				}
				src = up.park()
			}
		}
		line, err := readLine(src)
		if err != nil {
			return err
		}
		size, err := parseChunkSize(line)
		if err != nil {
			return err
		}
		if size == 0 {
			for { // trailer section
				line, err := readLine(src)
				if err != nil {
					return err
				}
				if len(line) == 0 {
					break
				}
			}
			dst.WriteString("0\r\n\r\n")
			return dst.Flush()
		}
		dst.Write(strconv.AppendInt(dst.AvailableBuffer(), size, 16))
		dst.WriteString("\r\n")
		if err := copyFlushingRaw(dst, src, size); err != nil {
			return err
		}
		crlf, err := readLine(src)
		if err != nil {
			return err
		}
		if len(crlf) != 0 {
			return &HeadError{Reason: "chunk data longer than its size"}
		}
		dst.WriteString("\r\n")
	}
}

// copyFlushingRaw copies exactly n bytes without finishing with a flush.
func copyFlushingRaw(dst flushWriter, src *bufio.Reader, n int64) error {
	for n > 0 {
		if src.Buffered() == 0 {
			if err := dst.Flush(); err != nil {
				return err
			}
		}
		p, err := src.Peek(min(int(n), max(src.Buffered(), 1)))
		if len(p) > 0 {
			if _, werr := dst.Write(p); werr != nil {
				return werr
			}
			_, _ = src.Discard(len(p))
			n -= int64(len(p))
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// readLine reads one line without its CRLF (or LF), at most maxChunkLine.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxChunkLine {
		return nil, &HeadError{Reason: "chunk line too long"}
	}
	if err == io.EOF {
		return nil, io.ErrUnexpectedEOF
	}
	if err != nil {
		return nil, err
	}
	return trimEOL(line), nil
}

// parseChunkSize reads the hex size of a chunk-size line, ignoring
// extensions.
func parseChunkSize(line []byte) (int64, error) {
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	for len(line) > 0 && (line[len(line)-1] == ' ' || line[len(line)-1] == '\t') {
		line = line[:len(line)-1]
	}
	if len(line) == 0 || len(line) > 15 {
		return 0, &HeadError{Reason: fmt.Sprintf("invalid chunk size %q", line)}
	}
	var n int64
	for _, c := range line {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, &HeadError{Reason: fmt.Sprintf("invalid chunk size %q", line)}
		}
		n = n<<4 | int64(d)
	}
	return n, nil
}

// MaxHeldBody bounds the request bodies read into memory by ReadBody.
const MaxHeldBody = 1 << 20

var heldBodyPool = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// ReadBody arranges for the request body of n bytes (a head's
// ContentLength; -1 for none) to come from br: up to MaxHeldBody it is read
// into memory now, so the request can be sent again on a fresh connection;
// a larger one is streamed from br while sending. release returns the
// memory once the exchange is over.
func (r *RawRequest) ReadBody(br io.Reader, n int64) (release func(), err error) {
	r.ContentLength = n
	switch {
	case n > MaxHeldBody:
		r.streamed = &countingReader{r: br}
		r.streamed.left.Store(n)
		r.BodyReader = r.streamed
	case n > 0:
		bp := heldBodyPool.Get().(*[]byte)
		if int64(cap(*bp)) < n {
			*bp = make([]byte, n)
		}
		r.Body = (*bp)[:n]
		release = func() { heldBodyPool.Put(bp) }
		if _, err := io.ReadFull(br, r.Body); err != nil {
			release()
			return nil, fmt.Errorf("httpfwd: read request body: %w", err)
		}
		return release, nil
	}
	return func() {}, nil
}

// WriteAnswer writes a whole answer of its own (an error the proxy
// makes) in wire form, in one write. header lines end in CRLF.
func WriteAnswer(w io.Writer, status int, header string, body []byte) error {
	b := make([]byte, 0, 128+len(header)+len(body))
	b = fmt.Appendf(b, "HTTP/1.1 %d %s\r\n%sContent-Length: %d\r\n\r\n", status, http.StatusText(status), header, len(body))
	_, err := w.Write(append(b, body...))
	return err
}
