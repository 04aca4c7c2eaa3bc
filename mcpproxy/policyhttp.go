package mcpproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"

	"github.com/mcptun/mcptun/internal/httpfwd"
	"github.com/mcptun/mcptun/internal/ratelimit"
)

// The policy on a URL server's path. A server without a policy is
// forwarded as it always was (on the fast path, body and answer
// untouched); one with a policy, or an exchange the relay narrowed
// (NarrowHeader), takes this slower path: the body is read whole and
// peeked (one message or a 2025-03-26 batch), refused requests are
// answered by the agent, and answers to list requests are rewritten, be
// they JSON or SSE. In a batch each refused request gets its own error
// and the rest goes to the server; the errors are added to its answer.
// GET streams (a resumed POST stream may replay a list result) are
// filtered too, by the shape of their results.
//
// Headers the server may route on must agree with the body it acts on:
// Mcp-Method, when present, must be the body's method and Mcp-Name, when
// present, the tool's or prompt's name or the resource's URI (400,
// header_mismatch), so a client cannot name an allowed tool in the header
// and call a denied one in the body.

// policyExchange reports whether an exchange for p goes the policy's way.
func (p *httpServer) policyExchange(h http.Header) (view, bool) {
	return viewFor(p.name, p.policy, h)
}

// ownsLimit reports a server that takes its exchanges from its rate
// limit itself, once it has nothing else to refuse them for: the stdio
// bridge, and a URL server on its policy's path.
func ownsLimit(srv http.Handler, h http.Header) bool {
	switch s := srv.(type) {
	case *stdioServer:
		return true
	case *httpServer:
		_, ok := s.policyExchange(h)
		return ok
	}
	return false
}

// admit takes the exchange from the server's rate limit (see ownsLimit);
// false means it answered 429.
func (p *httpServer) admit(w http.ResponseWriter) bool {
	limit := p.h.table().limits[p.name]
	wait, ok := limit.Take()
	if !ok {
		p.h.refuseOverLimit(w, p.name, limit, wait)
	}
	return ok
}

// headNarrowed reports a fast-path head carrying NarrowHeader.
func headNarrowed(head *httpfwd.Head) bool {
	_, ok := head.Get(NarrowHeader)
	return ok
}

// inspect decides, on the fast path, whether an exchange the policy
// governs can be forwarded as it is: a single message that is no list
// request and names nothing the policy refuses, limits or must check
// further, with Mcp-Method and Mcp-Name (if any) agreeing with it. Those
// go on untouched (nil, once they took from the server's rate limit);
// everything else takes the policy's full path (serveFast), which decides
// and answers. It never takes from a tool's rate limit: that is the full
// path's to do.
func (p *httpServer) inspect(head *httpfwd.Head, body []byte) *httpfwd.Exchange {
	var narrow http.Header
	for _, f := range head.Fields {
		if httpfwd.EqualFold(head.Name(f), NarrowHeader) {
			if narrow == nil {
				narrow = http.Header{}
			}
			narrow[NarrowHeader] = append(narrow[NarrowHeader], string(head.Value(f)))
		}
	}
	v, _ := viewFor(p.name, p.policy, narrow)
	m, _, _, _ := head.RequestLine()
	switch string(m) {
	case http.MethodPost:
		if !p.passes(head, body, v) {
			return p.full
		}
	case http.MethodGet:
		if v.filtersLists() {
			return p.full
		}
	}
	limit := p.h.table().limits[p.name]
	if wait, ok := limit.Take(); !ok {
		return p.h.overLimit(p.name, limit, wait)
	}
	return nil
}

// passes reports whether a POST body can go on without the policy's full
// path (see inspect).
func (p *httpServer) passes(head *httpfwd.Head, body []byte, v view) bool {
	msg, err := Peek(body)
	if err != nil {
		return false // a batch, or what the full path refuses
	}
	hm, nm := headerValues(head, "Mcp-Method")
	hn, nn := headerValues(head, "Mcp-Name")
	if nm > 1 || nn > 1 || nm == 1 && string(hm) != msg.Method {
		return false
	}
	if msg.Kind != KindRequest {
		return nn == 0
	}
	t, terr := TargetOf(body, &msg)
	if terr != nil || t.List != ListNone && v.filtersLists() {
		return false
	}
	if nn == 1 {
		name, ok := decodeHeaderValue(string(hn))
		if !ok || t.Kind == TargetNone || name != t.Name {
			return false
		}
	}
	switch t.Kind {
	case TargetTool:
		if ok, _ := v.toolAllowed(t.Name); !ok {
			return false
		}
		if v.p != nil && (v.p.pins != nil && v.p.pins.changed(p.name, t.Name) || len(v.p.ToolRates) > 0 && v.p.rated(t.Name)) {
			return false
		}
	case TargetPrompt, TargetResource:
		return v.allows(t.Kind, t.Name)
	}
	return true
}

// headerValues returns the first value of the header lines named name and
// how many there are.
func headerValues(head *httpfwd.Head, name string) (first []byte, n int) {
	for _, f := range head.Fields {
		if httpfwd.EqualFold(head.Name(f), name) {
			if n == 0 {
				first = head.Value(f)
			}
			n++
		}
	}
	return first, n
}

// serveFast answers an exchange of a URL server with a policy on the fast
// path: the bridge's way, a request built from the head.
func (p *httpServer) serveFast(ctx context.Context, w http.ResponseWriter, head *httpfwd.Head, body []byte) {
	r, err := httpfwd.NewRequest(ctx, head, body)
	if err != nil {
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: "+err.Error())
		return
	}
	p.serve(w, r)
}

// servePolicy forwards an exchange under view v.
func (p *httpServer) servePolicy(w http.ResponseWriter, r *http.Request, v view) {
	if r.Method != http.MethodPost {
		if r.Method == http.MethodGet && v.filtersLists() {
			lw := &listWriter{w: w, v: v, max: p.maxBody}
			defer lw.finish()
			w = lw
		}
		if p.admit(w) {
			p.forward(w, r)
		}
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, p.maxBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestEntityTooLarge, nil, codeInvalidRequest,
				fmt.Sprintf("mcpproxy: message larger than the limit of %d bytes", p.maxBody))
			return
		}
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: reading request body: "+bodyReason(err))
		return
	}
	stateless := r.Header.Get(headerVersion) == statelessVersion
	if !validJSON(body) {
		// What the agent cannot read it does not pass on: the server
		// might read it otherwise.
		writeError(w, http.StatusBadRequest, nil, codeParse, "mcpproxy: "+syntaxReason(body))
		return
	}
	i := skipWS(body, 0)
	batch := body[i] == '['
	msgs := []span{{i, len(body)}}
	if batch {
		if msgs, err = elements(body, i); err != nil || len(msgs) == 0 {
			writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: empty or unreadable JSON-RPC batch")
			return
		}
		if r.Header.Get("Mcp-Method") != "" || r.Header.Get("Mcp-Name") != "" {
			writeError(w, http.StatusBadRequest, nil, codeHeaderMismatch, "mcpproxy: Mcp-Method and Mcp-Name cannot describe a batch")
			return
		}
	}
	var kept []span
	var errs [][]byte
	var lists map[string]ListKind
	for _, el := range msgs {
		msg := body[el.start:el.end]
		m, err := Peek(msg)
		if err != nil {
			writePeekError(w, err)
			return
		}
		if m.Kind != KindRequest {
			kept = append(kept, el)
			continue
		}
		t, terr := TargetOf(msg, &m)
		if !batch && !p.headersAgree(w, r, &m, t, terr) {
			return
		}
		if ref := v.decide(t, terr); ref != nil {
			p.log.Info("request refused by policy", "client", clientOf(r), "method", t.Method, "name", t.Name, "reason", ref.reason)
			if !batch {
				writeRefusal(w, m.ID, ref, stateless)
				return
			}
			errs = append(errs, ref.body(m.ID))
			continue
		}
		if t.List != ListNone && v.filtersLists() {
			if lists == nil {
				lists = map[string]ListKind{}
			}
			lists[string(m.ID)] = t.List
		}
		kept = append(kept, el)
	}
	if len(errs) == 0 || len(kept) > 0 {
		// Something goes to the server: it counts against its limit.
		if !p.admit(w) {
			return
		}
	}
	if len(errs) > 0 {
		if len(kept) == 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusOK)
			_, _ = w.Write(joinArray(errs))
			return
		}
		parts := make([][]byte, len(kept))
		for i, el := range kept {
			parts[i] = body[el.start:el.end]
		}
		body = joinArray(parts)
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))
	if len(lists) > 0 || len(errs) > 0 {
		lw := &listWriter{w: w, v: v, lists: lists, extra: errs, max: p.maxBody}
		defer lw.finish()
		w = lw
	}
	p.forward(w, r)
}

// headersAgree checks Mcp-Method and Mcp-Name against the message (see
// above); false means it answered 400.
func (p *httpServer) headersAgree(w http.ResponseWriter, r *http.Request, m *Message, t Target, terr error) bool {
	id := requestID(m)
	if hm := r.Header.Values("Mcp-Method"); len(hm) > 1 || len(hm) == 1 && hm[0] != m.Method {
		writeError(w, http.StatusBadRequest, id, codeHeaderMismatch,
			fmt.Sprintf("mcpproxy: Mcp-Method header %q does not match the body's method %q", r.Header.Get("Mcp-Method"), m.Method))
		return false
	}
	hn := r.Header.Values("Mcp-Name")
	if len(hn) == 0 || t.Kind == TargetNone {
		return true
	}
	name, ok := decodeHeaderValue(hn[0])
	if len(hn) > 1 || !ok || terr != nil || name != t.Name {
		writeError(w, http.StatusBadRequest, id, codeHeaderMismatch,
			fmt.Sprintf("mcpproxy: Mcp-Name header %q does not match the %s the body names (%q)", hn[0], t.Kind, t.Name))
		return false
	}
	return true
}

// writeRefusal answers a single request the policy refused: the era's
// status for a JSON-RPC error (the session era's 200, the stateless era's
// 400 for -32602), 429 with Retry-After over a tool's rate limit.
func writeRefusal(w http.ResponseWriter, id []byte, ref *refusal, stateless bool) {
	status := ref.status
	if stateless && status == http.StatusOK {
		status = statelessErrorStatus(ref.code)
	}
	if ref.wait > 0 {
		w.Header().Set("Retry-After", ratelimit.RetryAfter(ref.wait))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(ref.body(id))
}

func joinArray(parts [][]byte) []byte {
	out := []byte{'['}
	for i, p := range parts {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, p...)
	}
	return append(out, ']')
}

// listWriter rewrites a server's answer on its way to the client: list
// results filtered (lists: their requests' ids; a response with another
// id, or every one on a GET stream (lists nil), is filtered by the shape
// of its result), and extra (the errors of refused batch members) added.
// A JSON answer is held until it is whole; an SSE stream is rewritten
// event by event, each flushed as before.
type listWriter struct {
	w     http.ResponseWriter
	v     view
	lists map[string]ListKind
	extra [][]byte
	max   int64

	mode   uint8
	status int
	buf    []byte
	err    error
}

const (
	lwUndecided uint8 = iota
	lwJSON
	lwAccepted // 202 for a batch whose refused members need answers
	lwSSE
	lwPass
)

// errAnswerTooLarge is an answer over MaxMessageBytes the policy would have
// to hold whole.
var errAnswerTooLarge = errors.New("mcpproxy: the server's answer is too large for the policy to check")

func (lw *listWriter) Header() http.Header { return lw.w.Header() }

func (lw *listWriter) Unwrap() http.ResponseWriter { return lw.w }

func (lw *listWriter) WriteHeader(code int) {
	if lw.mode != lwUndecided {
		return
	}
	mt, _, _ := mime.ParseMediaType(lw.w.Header().Get("Content-Type"))
	switch {
	case code/100 == 2 && mt == "text/event-stream":
		lw.mode = lwSSE
		lw.w.Header().Del("Content-Length")
		lw.w.WriteHeader(code)
		for _, e := range lw.extra {
			_, _ = lw.w.Write(append(append([]byte("data: "), e...), '\n', '\n'))
		}
	case code/100 == 2 && mt == "application/json":
		lw.mode, lw.status = lwJSON, code
	case code == http.StatusAccepted && len(lw.extra) > 0:
		lw.mode, lw.status = lwAccepted, http.StatusOK
	default:
		lw.mode = lwPass
		lw.w.WriteHeader(code)
	}
}

func (lw *listWriter) Write(b []byte) (int, error) {
	if lw.mode == lwUndecided {
		lw.WriteHeader(http.StatusOK)
	}
	switch lw.mode {
	case lwPass:
		return lw.w.Write(b)
	case lwAccepted:
		return len(b), nil
	}
	if lw.err != nil {
		return 0, lw.err
	}
	if int64(len(lw.buf)+len(b)) > lw.max {
		lw.err = errAnswerTooLarge
		return 0, lw.err
	}
	lw.buf = append(lw.buf, b...)
	if lw.mode == lwSSE {
		if err := lw.events(false); err != nil {
			return 0, err
		}
	}
	return len(b), nil
}

func (lw *listWriter) Flush() {
	if lw.mode == lwSSE || lw.mode == lwPass {
		if f, ok := lw.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

// finish writes what is held: the rewritten JSON answer, or the end of a
// stream that did not end with a blank line.
func (lw *listWriter) finish() {
	switch lw.mode {
	case lwSSE:
		_ = lw.events(true)
	case lwAccepted:
		lw.w.Header().Set("Content-Type", "application/json")
		lw.w.Header().Del("Content-Length")
		lw.w.WriteHeader(http.StatusOK)
		_, _ = lw.w.Write(joinArray(lw.extra))
	case lwJSON:
		if lw.err != nil {
			lw.w.Header().Del("Content-Length")
			writeError(lw.w, http.StatusBadGateway, nil, codeInternal, lw.err.Error())
			return
		}
		out := lw.rewriteJSON(lw.buf)
		lw.w.Header().Set("Content-Length", strconv.Itoa(len(out)))
		lw.w.WriteHeader(lw.status)
		_, _ = lw.w.Write(out)
	}
}

// rewriteJSON rewrites a JSON answer: one message or a batch, with the
// extra errors added (a single answer becomes a batch then).
func (lw *listWriter) rewriteJSON(b []byte) []byte {
	i := skipWS(b, 0)
	if !validJSON(b) {
		return b
	}
	var parts [][]byte
	if b[i] == '[' {
		els, err := elements(b, i)
		if err != nil {
			return b
		}
		for _, el := range els {
			parts = append(parts, lw.one(b[el.start:el.end]))
		}
		return joinArray(append(parts, lw.extra...))
	}
	out := lw.one(b)
	if len(lw.extra) == 0 {
		return out
	}
	return joinArray(append([][]byte{out}, lw.extra...))
}

// one filters a single message.
func (lw *listWriter) one(msg []byte) []byte {
	k := ListNone
	if lw.lists != nil {
		if m, err := Peek(msg); err == nil && m.Kind == KindResponse {
			k = lw.lists[string(m.ID)]
		}
	}
	return lw.v.filterList(msg, k)
}

// events writes the complete SSE events held, rewritten; final writes the
// rest too.
func (lw *listWriter) events(final bool) error {
	for {
		end, next := eventEnd(lw.buf, final)
		if end < 0 {
			return nil
		}
		out := lw.event(lw.buf[:end])
		if _, err := lw.w.Write(out); err != nil {
			return err
		}
		if _, err := lw.w.Write(lw.buf[end:next]); err != nil {
			return err
		}
		lw.buf = lw.buf[next:]
		if len(lw.buf) == 0 {
			lw.buf = nil
			return nil
		}
	}
}

// eventEnd finds the end of the first event in b (where its blank line
// starts) and where the next begins. Lines end in CRLF, LF or CR; a CR at
// the very end may be half a CRLF and waits, unless final.
func eventEnd(b []byte, final bool) (end, next int) {
	start := 0
	for start < len(b) {
		le, after, ok := lineEnd(b, start, final)
		if !ok {
			break
		}
		if le == start { // a blank line: the event ends
			return start, after
		}
		start = after
	}
	if final && len(b) > 0 {
		return len(b), len(b)
	}
	return -1, -1
}

// lineEnd returns the end of the line starting at b[i] and the start of
// the next.
func lineEnd(b []byte, i int, final bool) (end, next int, ok bool) {
	j := bytes.IndexAny(b[i:], "\r\n")
	if j < 0 {
		return 0, 0, false
	}
	j += i
	if b[j] == '\n' {
		return j, j + 1, true
	}
	if j+1 < len(b) {
		if b[j+1] == '\n' {
			return j, j + 2, true
		}
		return j, j + 1, true
	}
	if final {
		return j, j + 1, true
	}
	return 0, 0, false
}

// event rewrites one SSE event (without its blank line): its data, if it
// holds a message to filter, becomes the filtered message; other fields
// stay as they are.
func (lw *listWriter) event(ev []byte) []byte {
	var data []byte
	first, n := -1, 0
	type line struct{ s, e int }
	var lines []line
	for i := 0; i < len(ev); {
		le, next, ok := lineEnd(ev, i, true)
		if !ok {
			le, next = len(ev), len(ev)
		}
		lines = append(lines, line{i, le})
		if v, ok := bytes.CutPrefix(ev[i:le], []byte("data:")); ok {
			v, _ = bytes.CutPrefix(v, []byte(" "))
			if n > 0 {
				data = append(data, '\n')
			}
			data = append(data, v...)
			if first < 0 {
				first = len(lines) - 1
			}
			n++
		}
		i = next
	}
	if n == 0 {
		return ev
	}
	out := lw.rewriteMessages(data)
	if bytes.Equal(out, data) {
		return ev
	}
	var b []byte
	for k, l := range lines {
		switch {
		case k == first:
			for _, dl := range bytes.Split(out, []byte("\n")) {
				b = append(b, "data: "...)
				b = append(b, dl...)
				b = append(b, '\n')
			}
		case bytes.HasPrefix(ev[l.s:l.e], []byte("data:")):
		default:
			b = append(b, ev[l.s:l.e]...)
			b = append(b, '\n')
		}
	}
	return b
}

// rewriteMessages filters the message (or batch) of one event.
func (lw *listWriter) rewriteMessages(data []byte) []byte {
	if !validJSON(data) {
		return data
	}
	i := skipWS(data, 0)
	if data[i] != '[' {
		return lw.one(data)
	}
	els, err := elements(data, i)
	if err != nil {
		return data
	}
	parts := make([][]byte, len(els))
	for k, el := range els {
		parts[k] = lw.one(data[el.start:el.end])
	}
	return joinArray(parts)
}
