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
	for attempt := 0; ; attempt++ {
		c, reused, err := f.get(ctx)
		if err != nil {
			headPool.Put(head)
			return &UpstreamError{Op: "dial", Err: err}
		}
		// One hook for the whole exchange: cancelling ctx wakes whatever
		// waits on c.
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(aLongTimeAgo) })
		code, err := f.roundTripRaw(c, req, head)
		if err == nil {
			if err := f.copyRaw(dst, c, req, head, code, stop); err != nil {
				// Cut short: let the client have what came, so it sees a
				// truncated answer rather than none.
				_ = dst.Flush()
				return err
			}
			return nil
		}
		stop()
		c.close()
		if !retryable(ctx, reused && attempt == 0, req.Body != nil || req.ContentLength <= 0, err) {
			headPool.Put(head)
			return err
		}
	}
}

// roundTripRaw writes the request and reads the final response head.
func (f *Forwarder) roundTripRaw(c *conn, req *RawRequest, head *Head) (int, error) {
	bw := writerPool.Get().(*bufio.Writer)
	bw.Reset(c.Conn)
	defer func() { bw.Reset(nil); writerPool.Put(bw) }()
	bw.Write(req.Head)
	if req.ContentLength >= 0 {
		writeContentLength(bw, req.ContentLength)
	}
	bw.WriteString("\r\n")
	switch {
	case req.Body != nil:
		bw.Write(req.Body)
	case req.ContentLength > 0:
		if err := copyExactly(bw, req.BodyReader, req.ContentLength); err != nil {
			return 0, &UpstreamError{Op: "write body", Err: err}
		}
	}
	if err := bw.Flush(); err != nil {
		return 0, &UpstreamError{Op: "write request", Err: err}
	}
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
			return 0, &UpstreamError{Op: "read response", Err: errors.New("upstream switched protocols")}
		case code < 200:
			continue // interim answer (100 Continue, 103 Early Hints)
		case head.OtherEncoding:
			return 0, &UpstreamError{Op: "read response", Err: &HeadError{Reason: "unsupported Transfer-Encoding"}}
		}
		return code, nil
	}
}

func copyExactly(w io.Writer, r io.Reader, n int64) error {
	bp := copyPool.Get().(*[]byte)
	defer copyPool.Put(bp)
	m, err := io.CopyBuffer(writerOnly{w}, io.LimitReader(r, n), *bp)
	if err == nil && m < n {
		err = io.ErrUnexpectedEOF
	}
	return err
}

// copyRaw writes the response head and body to dst, giving head back to
// its pool in between (a stream holds none); stop removes the exchange's
// cancellation hook.
func (f *Forwarder) copyRaw(dst *answerWriter, c *conn, req *RawRequest, head *Head, code int, stop func() bool) error {
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
	if !stop() || err != nil || !reuse {
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
