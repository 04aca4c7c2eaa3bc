package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// maxAnswer bounds the size of one answer (a JSON body or one SSE event).
const maxAnswer = 64 << 20

// session is one closed-loop client. It is used by one goroutine only.
type session struct {
	r    *runner
	pace *time.Timer // paced load: waits for the next slot

	nextID    int64
	sessionID string      // Mcp-Session-Id, sessions era only
	callHdr   http.Header // headers of tools/call, after setup
	call      *http.Request

	rb      *reqBody
	body    []byte // encoded tools/call body
	curBody []byte // body of the request in flight
	getBody func() (io.ReadCloser, error)
	buf     bytes.Buffer // JSON answer
	data    []byte       // SSE event data
	line    []byte       // SSE line longer than the bufio buffer
	br      *bufio.Reader
	cnt     countingReader
	lim     io.LimitedReader
	idBuf   []byte

	toolFailed bool // the last decoded result had isError set

	// The request deadline: one context and timer serve request after
	// request, re-armed each time, and are replaced only after they fired.
	reqCtx    context.Context
	reqCancel context.CancelCauseFunc
	reqTimer  *time.Timer

	failures int // consecutive transport failures, for back-off
}

func newSession(r *runner) *session {
	return &session{r: r, nextID: 1, br: bufio.NewReaderSize(nil, 16<<10)}
}

// reqBody is a request body reused across requests. The transport may close
// a body after RoundTrip returns, so a body still in use is never reused.
type reqBody struct {
	bytes.Reader
	inUse atomic.Bool
}

func (b *reqBody) Close() error {
	b.inUse.Store(false)
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// exchange is one POST and what came back.
type exchange struct {
	op     string
	call   bool        // a tools/call: use the session's request template
	hdr    http.Header // request headers
	id     int64       // request ID; 0 for a notification
	msg    []byte      // the JSON-RPC response, valid until the next exchange
	header http.Header // response headers
	sent   int
	recv   int
}

// setup prepares the session for tools/call: initialize and
// notifications/initialized in the sessions era, server/discover in the
// stateless one.
func (s *session) setup(ctx context.Context) error {
	if s.r.stateless {
		return s.setupStateless(ctx)
	}
	return s.setupSession(ctx)
}

func (s *session) setupSession(ctx context.Context) error {
	s.sessionID = ""
	id := s.newID()
	ex := exchange{op: "initialize", hdr: s.r.baseHeader, id: id}
	body := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"initialize","params":{"protocolVersion":%q,"capabilities":{},"clientInfo":{"name":"mcptun-bench","version":"1"}}}`, id, s.r.version)
	if err := s.post(ctx, &ex, body); err != nil {
		return err
	}
	var init struct {
		Result struct {
			ProtocolVersion string `json:"protocolVersion"`
		} `json:"result"`
	}
	if err := json.Unmarshal(ex.msg, &init); err != nil || init.Result.ProtocolVersion == "" {
		return &ProtocolError{"initialize", "result has no protocolVersion: " + snippet(ex.msg)}
	}
	s.sessionID = ex.header.Get("Mcp-Session-Id")
	h := s.r.baseHeader.Clone()
	if s.sessionID != "" {
		h.Set("Mcp-Session-Id", s.sessionID)
	}
	h.Set("Mcp-Protocol-Version", init.Result.ProtocolVersion)
	s.setCallHeader(h)

	ex = exchange{op: "notifications/initialized", hdr: h}
	return s.post(ctx, &ex, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`))
}

func (s *session) setupStateless(ctx context.Context) error {
	h := s.r.baseHeader.Clone()
	h.Set("Mcp-Protocol-Version", EraStateless)
	h.Set("Mcp-Method", "server/discover")
	id := s.newID()
	ex := exchange{op: "server/discover", hdr: h, id: id}
	body := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":%d,"method":"server/discover","params":{"_meta":%s}}`, id, statelessMeta)
	if err := s.post(ctx, &ex, body); err != nil {
		return err
	}
	var disc struct {
		Result struct {
			SupportedVersions []string `json:"supportedVersions"`
		} `json:"result"`
	}
	if err := json.Unmarshal(ex.msg, &disc); err != nil {
		return &ProtocolError{"server/discover", "malformed result: " + snippet(ex.msg)}
	}
	if !slices.Contains(disc.Result.SupportedVersions, EraStateless) {
		return &ProtocolError{"server/discover", fmt.Sprintf("server does not support protocol version %s (it supports: %s)",
			EraStateless, strings.Join(disc.Result.SupportedVersions, ", "))}
	}
	h = h.Clone()
	h.Set("Mcp-Method", "tools/call")
	h.Set("Mcp-Name", headerValue(s.r.cfg.Tool))
	s.setCallHeader(h)
	return nil
}

func (s *session) setCallHeader(h http.Header) {
	s.callHdr = h
	s.call = &http.Request{
		Method:     http.MethodPost,
		URL:        s.r.url,
		Proto:      "HTTP/1.1",
		ProtoMajor: 1,
		ProtoMinor: 1,
		Header:     h,
		Host:       s.r.url.Host,
	}
}

func (s *session) newID() int64 {
	id := s.nextID
	s.nextID++
	return id
}

// loop sends tools/call until the run says stop.
func (s *session) loop(ctx context.Context) {
	for ctx.Err() == nil {
		t0 := time.Now()
		if s.r.pacer != nil {
			// Its latency counts from when it is due, even if it leaves
			// later.
			t0 = s.r.pacer.due()
		}
		measured, stop := s.r.measuring(t0)
		if stop {
			return
		}
		if s.r.pacer != nil && !s.waitUntil(ctx, t0) {
			return
		}
		ex, err := s.toolsCall(ctx)
		lat := time.Since(t0)
		if ctx.Err() != nil {
			return // the run was cancelled, not the request failed
		}
		if measured {
			s.r.record(lat, ex.sent, ex.recv, err)
		} else {
			s.r.warmups.Add(1)
		}
		if err != nil {
			s.recover(ctx, err)
		} else {
			s.failures = 0
		}
	}
}

// waitUntil sleeps until t; false if ctx ends first.
func (s *session) waitUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return true
	}
	if s.pace == nil {
		s.pace = time.NewTimer(d)
	} else {
		s.pace.Reset(d)
	}
	select {
	case <-s.pace.C:
		return true
	case <-ctx.Done():
		s.pace.Stop()
		return false
	}
}

func (s *session) toolsCall(ctx context.Context) (exchange, error) {
	id := s.newID()
	s.idBuf = strconv.AppendInt(s.idBuf[:0], id, 10)
	body := s.body[:0]
	if s.rb != nil && s.rb.inUse.Load() {
		// The transport still holds the previous body: leave both to it.
		body, s.rb = nil, nil
	}
	body = append(body, callPrefix...)
	body = append(body, s.idBuf...)
	body = append(body, s.r.callSuffix...)
	s.body = body
	ex := exchange{op: "tools/call", call: true, hdr: s.callHdr, id: id}
	err := s.post(ctx, &ex, body)
	if err == nil && s.toolFailed {
		err = &ToolError{Tool: s.r.cfg.Tool, Text: toolErrorText(ex.msg)}
	}
	return ex, err
}

// recover reacts to a failed tools/call the way a real client would.
func (s *session) recover(ctx context.Context, err error) {
	var he *HTTPError
	if errors.As(err, &he) && he.StatusCode == http.StatusNotFound && s.sessionID != "" {
		// The server forgot the session: start a new one.
		if s.setupSession(ctx) == nil {
			return
		}
	} else if te := (*TransportError)(nil); !errors.As(err, &te) {
		return
	}
	// The endpoint is unreachable: back off rather than spin on a closed
	// port, since the generator shares the CPU with the system under test.
	s.failures++
	d := min(time.Millisecond<<min(s.failures, 10), time.Second)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// post sends body and reads the answer into ex. For a request (ex.id != 0)
// the answer must be the JSON-RPC response with that ID, and ex.msg is set
// to it. For a notification any 2xx without a body will do.
func (s *session) post(ctx context.Context, ex *exchange, body []byte) error {
	ctx = s.startDeadline(ctx, s.r.cfg.Timeout)
	defer s.stopDeadline()

	if s.rb == nil || s.rb.inUse.Load() {
		s.rb = new(reqBody)
	}
	rb := s.rb
	rb.Reset(body)
	rb.inUse.Store(true)
	s.curBody = body
	if s.getBody == nil {
		// Called only within RoundTrip, while curBody is still this request's.
		s.getBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(s.curBody)), nil }
	}
	var req *http.Request
	if ex.call {
		req = s.call.WithContext(ctx)
	} else {
		req = (&http.Request{
			Method: http.MethodPost, URL: s.r.url, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: ex.hdr, Host: s.r.url.Host,
		}).WithContext(ctx)
	}
	req.Body = rb
	req.ContentLength = int64(len(body))
	req.GetBody = s.getBody
	ex.sent = len(body)

	resp, err := s.r.roundTrip(req)
	if err != nil {
		return s.transportError(ctx, ex.op, err)
	}
	defer resp.Body.Close()
	ex.header = resp.Header
	s.cnt = countingReader{r: resp.Body}
	defer func() { ex.recv = s.cnt.n }()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return s.httpError(ex.op, resp)
	}
	if ex.id == 0 {
		// A notification: 202 Accepted with no body is the norm.
		_, _ = io.Copy(io.Discard, io.LimitReader(&s.cnt, maxAnswer))
		return nil
	}
	if resp.StatusCode == http.StatusAccepted || resp.StatusCode == http.StatusNoContent {
		return &ProtocolError{ex.op, fmt.Sprintf("HTTP %s without a response (treated as a notification?)", resp.Status)}
	}
	ct := resp.Header.Get("Content-Type")
	switch mediaType(ct) {
	case "application/json":
		s.buf.Reset()
		s.lim = io.LimitedReader{R: &s.cnt, N: maxAnswer + 1}
		if _, err := s.buf.ReadFrom(&s.lim); err != nil {
			return s.transportError(ctx, ex.op+": read answer", err)
		}
		if s.buf.Len() > maxAnswer {
			return &ProtocolError{ex.op, fmt.Sprintf("answer larger than %d bytes", maxAnswer)}
		}
		ex.msg = s.buf.Bytes()
		ours, err := s.decode(ex.op, ex.msg, ex.id)
		if err == nil && !ours {
			err = &ProtocolError{ex.op, "answer is not the response to the request: " + snippet(ex.msg)}
		}
		return err
	case "text/event-stream":
		msg, err := s.readSSE(ex.op, ex.id)
		if err != nil && ctx.Err() != nil {
			return s.transportError(ctx, ex.op+": read event stream", err)
		}
		ex.msg = msg
		return err
	default:
		head, _ := io.ReadAll(io.LimitReader(&s.cnt, snippetLen))
		_, _ = io.Copy(io.Discard, io.LimitReader(&s.cnt, maxAnswer))
		if ct == "" {
			ct = "none"
		}
		return &ProtocolError{ex.op, fmt.Sprintf("not an MCP answer: HTTP %s, Content-Type %s: %s", resp.Status, ct, snippet(head))}
	}
}

// mediaType returns the lower-case media type of a Content-Type value
// without its parameters; it avoids mime.ParseMediaType's allocations.
func mediaType(ct string) string {
	if i := strings.IndexByte(ct, ';'); i >= 0 {
		ct = ct[:i]
	}
	ct = strings.TrimSpace(ct)
	for _, known := range []string{"application/json", "text/event-stream"} {
		if strings.EqualFold(ct, known) {
			return known
		}
	}
	return strings.ToLower(ct)
}

// timeoutError is the cause of a request's context when its deadline passes.
type timeoutError struct{ d time.Duration }

func (e *timeoutError) Error() string { return fmt.Sprintf("no complete answer within %v", e.d) }

// startDeadline arms the request deadline and returns the request context.
func (s *session) startDeadline(parent context.Context, d time.Duration) context.Context {
	if s.reqCtx == nil {
		ctx, cancel := context.WithCancelCause(parent)
		s.reqCtx, s.reqCancel = ctx, cancel
		cause := &timeoutError{d}
		s.reqTimer = time.AfterFunc(d, func() { cancel(cause) })
		return ctx
	}
	s.reqTimer.Reset(d)
	return s.reqCtx
}

// shortenDeadline moves the deadline of the request in flight to d from now.
func (s *session) shortenDeadline(d time.Duration) {
	s.reqTimer.Reset(d)
}

// stopDeadline disarms the deadline; a context whose timer already fired is
// dropped so that the next request gets a fresh one.
func (s *session) stopDeadline() {
	if !s.reqTimer.Stop() {
		s.dropDeadline()
	}
}

func (s *session) dropDeadline() {
	if s.reqCtx != nil {
		s.reqTimer.Stop()
		s.reqCancel(context.Canceled)
		s.reqCtx, s.reqCancel, s.reqTimer = nil, nil, nil
	}
}

// transportError wraps a failure to exchange bytes, naming the deadline
// when that was the cause.
func (s *session) transportError(ctx context.Context, op string, err error) error {
	var te *timeoutError
	if cause := context.Cause(ctx); errors.As(cause, &te) {
		err = cause
	}
	return &TransportError{Op: op, URL: s.r.cfg.URL, Err: err}
}

func (s *session) httpError(op string, resp *http.Response) error {
	head, _ := io.ReadAll(io.LimitReader(&s.cnt, snippetLen+1))
	// Drain a little more so that the connection can be reused.
	_, _ = io.Copy(io.Discard, io.LimitReader(&s.cnt, 64<<10))
	detail := snippet(head)
	for _, k := range []string{"WWW-Authenticate", "Location"} {
		if v := resp.Header.Get(k); v != "" {
			if detail != "" {
				detail += " "
			}
			detail += "(" + k + ": " + snippet([]byte(v)) + ")"
		}
	}
	return &HTTPError{Op: op, StatusCode: resp.StatusCode, Status: resp.Status, Detail: detail}
}

// decode reads a JSON-RPC message and reports whether it is the response
// to request id; a JSON-RPC error response to id is returned as an
// *RPCError. s.toolFailed tells whether the result has isError set.
func (s *session) decode(op string, msg []byte, id int64) (ours bool, err error) {
	s.toolFailed = false
	a, err := scanAnswer(msg)
	if err != nil {
		return false, &ProtocolError{op, "answer is not JSON-RPC: " + snippet(msg)}
	}
	if a.isMethod {
		return false, nil // a request or notification from the server
	}
	s.idBuf = strconv.AppendInt(s.idBuf[:0], id, 10)
	if !bytes.Equal(a.id, s.idBuf) {
		return false, nil
	}
	switch {
	case a.errObj != nil:
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if json.Unmarshal(a.errObj, &e) != nil {
			return true, &ProtocolError{op, "malformed error response: " + snippet(msg)}
		}
		return true, &RPCError{Op: op, Code: e.Code, Message: e.Message}
	case a.result == nil:
		return true, &ProtocolError{op, "response has neither result nor error: " + snippet(msg)}
	}
	s.toolFailed = resultIsError(a.result)
	return true, nil
}

// readSSE reads events from an SSE answer until the one carrying the
// response to id, and returns that event's data. Events before it
// (notifications, server requests, priming events) are skipped.
func (s *session) readSSE(op string, id int64) ([]byte, error) {
	s.br.Reset(&s.cnt)
	defer s.br.Reset(nil)
	s.data = s.data[:0]
	hasData := false
	for {
		line, err := s.readLine()
		if err != nil && len(line) == 0 {
			if err == io.EOF {
				// Be lenient with a last event that lacks its blank line.
				if len(s.data) > 0 {
					if ours, derr := s.decode(op, s.data, id); ours || derr != nil {
						return s.data, derr
					}
				}
				return nil, &ProtocolError{op, "event stream ended without the response"}
			}
			if errors.Is(err, errLineTooLong) {
				return nil, &ProtocolError{op, err.Error()}
			}
			return nil, fmt.Errorf("%s: read event stream: %w", op, err)
		}
		if len(line) == 0 { // end of event
			if len(s.data) == 0 {
				// No data (a priming event, say): nothing to dispatch.
				hasData = false
				continue
			}
			ours, derr := s.decode(op, s.data, id)
			if ours {
				s.drain()
				return s.data, derr
			}
			if derr != nil {
				return nil, derr
			}
			s.data, hasData = s.data[:0], false
			continue
		}
		if line[0] == ':' {
			continue // comment, keep-alive
		}
		field, value, _ := bytes.Cut(line, []byte(":"))
		if string(field) != "data" {
			continue // event, id, retry
		}
		value = bytes.TrimPrefix(value, []byte(" "))
		if len(s.data)+len(value)+1 > maxAnswer {
			return nil, &ProtocolError{op, fmt.Sprintf("event larger than %d bytes", maxAnswer)}
		}
		if hasData {
			s.data = append(s.data, '\n')
		}
		s.data = append(s.data, value...)
		hasData = true
	}
}

var errLineTooLong = fmt.Errorf("event stream line longer than %d bytes", maxAnswer)

// readLine returns the next line without its line ending. The slice is valid
// until the next call.
func (s *session) readLine() ([]byte, error) {
	line, err := s.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		s.line = append(s.line[:0], line...)
		for err == bufio.ErrBufferFull {
			if len(s.line) > maxAnswer {
				return nil, errLineTooLong
			}
			line, err = s.br.ReadSlice('\n')
			s.line = append(s.line, line...)
		}
		line = s.line
	}
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	if err == io.EOF && len(line) > 0 {
		return line, nil // the last line had no ending; EOF comes next
	}
	return line, err
}

// sseTail bounds how long the rest of an SSE stream is read after the
// response was found. A compliant server closes the stream right after the
// response; reading to the end keeps the connection reusable.
const sseTail = 250 * time.Millisecond

func (s *session) drain() {
	if s.br.Buffered() == 0 {
		// The end of the stream may be in the next packet: wait for it a
		// little, not for the full request timeout.
		s.shortenDeadline(sseTail)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(s.br, maxAnswer))
}

// toolErrorText extracts the text content of an isError result for an error
// sample; it runs only on the error path.
func toolErrorText(msg []byte) string {
	var v struct {
		Result struct {
			Content []struct {
				Type string `json:"type"`
				Text string `json:"text"`
			} `json:"content"`
		} `json:"result"`
	}
	if json.Unmarshal(msg, &v) != nil {
		return ""
	}
	var parts []string
	for _, c := range v.Result.Content {
		if c.Type == "text" && c.Text != "" {
			parts = append(parts, c.Text)
		}
	}
	return snippet([]byte(strings.Join(parts, " ")))
}

// end waits for release, then ends the server-side session with DELETE. The
// DELETE gets its own short deadline: it must run even when the run was
// interrupted, but must not hold up the exit.
func (s *session) end(parent context.Context, release <-chan struct{}) {
	<-release
	s.dropDeadline()
	if s.r.stateless || s.sessionID == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 5*time.Second)
	defer cancel()
	req := (&http.Request{
		Method: http.MethodDelete, URL: s.r.url, Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: s.callHdr, Host: s.r.url.Host,
	}).WithContext(ctx)
	resp, err := s.r.roundTrip(req)
	if err != nil {
		return
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// headerValue encodes v for an Mcp-Name or Mcp-Param-* header: as is when it
// is plain printable ASCII without surrounding space, else in the
// =?base64?…?= form of SEP-2243.
func headerValue(v string) string {
	safe := v == strings.TrimSpace(v)
	for i := 0; safe && i < len(v); i++ {
		safe = v[i] >= 0x20 && v[i] < 0x7f
	}
	if safe {
		return v
	}
	return "=?base64?" + base64.StdEncoding.EncodeToString([]byte(v)) + "?="
}

func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}
