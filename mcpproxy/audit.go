package mcpproxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/mcptun/mcptun/internal/audit"
)

// The audit trail (Options.Audit): every exchange the handler serves is
// recorded once it is over, one line per JSON-RPC message of its body (a
// batch gives several), refusals of the handler itself included. The
// hooks sit in front of everything else (ServeHTTP; on the fast path,
// route: see auditfast.go): an exchange the audit does not see cannot
// happen. With the audit off none of this runs and the fast path is as
// before.
//
// The request body is read into memory first when its length is known and
// at most audit.MaxBody (so that a refusal before the body is read still
// names the method and tool); a larger or chunked body is recorded as it
// streams by, up to audit.MaxBody. The answer is read as it is written:
// a JSON answer's first answerKeep bytes, and each SSE event's, are
// peeked for JSON-RPC responses, so a long stream is never held.

// refusalReasons are the error.data.reason codes of answers in which the
// agent refused the exchange itself (outcome "refused"): anything else is
// the server's (or its transport's) error. A slice that adds a refusal
// adds its code here.
var refusalReasons = map[string]bool{
	reasonBadRequest: true, reasonParseError: true, reasonHeaderMismatch: true, reasonUnsupportedVersion: true,
	reasonOriginNotAllowed: true, reasonNotFound: true, reasonSessionNotFound: true, reasonMethodNotAllowed: true,
	reasonNotAcceptable: true, reasonStreamConflict: true, reasonBodyTooLarge: true, reasonUnsupportedMedia: true,
	reasonRateLimited: true, reasonUnavailable: true, reasonAgentDraining: true, reasonNotImplemented: true,
	// The stdio bridge's limits (limits.go, unix only).
	"session_limit": true, "client_session_limit": true, "concurrency_limit": true, "client_concurrency_limit": true,
	// Tool policy (policy.go).
	reasonToolDenied: true, reasonPromptDenied: true, reasonResourceDenied: true, reasonToolChanged: true,
	reasonToolRateLimited: true, reasonPolicyAmbiguous: true,
}

// answerKeep bounds what of an answer (a JSON body, one SSE event) is
// kept to find its responses in: error answers are small, and a result
// too large to keep is taken as a result.
const answerKeep = 64 << 10

type auditedKey struct{}

// auditing reports whether ServeHTTP runs inside auditServe.
func auditing(r *http.Request) bool { return r.Context().Value(auditedKey{}) != nil }

// auditServe serves r through ServeHTTP and records it.
func (h *Handler) auditServe(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	body := &auditBody{max: h.auditMax}
	if r.Body != nil && r.Body != http.NoBody {
		body.rc = r.Body
		if n := r.ContentLength; n > 0 && n <= int64(h.auditMax) {
			body.readAhead(n)
		}
		r.Body = body
	}
	aw := &auditWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
	r = r.WithContext(context.WithValue(r.Context(), auditedKey{}, true))
	h.ServeHTTP(aw, r)
	x := exchangeInfo{path: r.URL.Path, client: clientOf(r), session: r.Header.Get(headerSession), method: r.Method,
		start: start, kept: body.kept, over: body.over, bytesIn: body.n, answerSession: aw.Header().Get(headerSession)}
	h.record(&x, aw)
}

// exchangeInfo is what record needs of the request.
type exchangeInfo struct {
	path, client, session, method string
	start                         time.Time
	kept                          []byte // the body, if not over
	over                          bool   // the body was too large to keep
	bytesIn                       int64
	answerSession                 string // the answer's Mcp-Session-Id
}

// auditBody is a request body that keeps what passes, up to max
// (audit.MaxBody; tests lower it), and counts it all.
type auditBody struct {
	rc      io.ReadCloser
	max     int // what is kept at most
	kept    []byte
	n       int64
	over    bool   // more than MaxBody passed: kept is not the whole body
	pending []byte // read ahead, not yet handed out
	err     error  // the read-ahead's error, after pending
}

func (b *auditBody) readAhead(n int64) {
	buf := make([]byte, n)
	got, err := io.ReadFull(b.rc, buf)
	b.kept, b.pending, b.n = buf[:got], buf[:got], int64(got)
	if err == nil {
		// A body longer than it said is net/http's to refuse.
		return
	}
	b.err = err
}

func (b *auditBody) Read(p []byte) (int, error) {
	if len(b.pending) > 0 {
		n := copy(p, b.pending)
		b.pending = b.pending[n:]
		return n, nil
	}
	if b.err != nil {
		return 0, b.err
	}
	n, err := b.rc.Read(p)
	b.n += int64(n)
	if n > 0 && !b.over {
		if len(b.kept)+n > b.max {
			b.over, b.kept = true, nil
		} else {
			b.kept = append(b.kept, p[:n]...)
		}
	}
	return n, err
}

func (b *auditBody) Close() error { return b.rc.Close() }

// auditWriter watches an answer: status, bytes, the session id handed
// out, and the JSON-RPC responses in it.
type auditWriter struct {
	http.ResponseWriter
	rc     *http.ResponseController
	status int
	n      int64
	sse    bool
	// A JSON answer's start.
	json     []byte
	jsonOver bool
	// The SSE event being read: its current line and its data.
	line, data []byte
	lineOver   bool
	dataOver   bool
	// skipped: a message too large to keep passed (a response, probably).
	skipped bool
	// answers are the responses seen, in order.
	answers []answer
}

// answer is what the audit keeps of one JSON-RPC response.
type answer struct {
	id      string
	isError bool
	code    int
	reason  string
}

func (w *auditWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
		w.sse = strings.HasPrefix(w.Header().Get("Content-Type"), "text/event-stream")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *auditWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)
	w.watch(p[:n])
	return n, err
}

func (w *auditWriter) Flush()                             { _ = w.rc.Flush() }
func (w *auditWriter) FlushError() error                  { return w.rc.Flush() }
func (w *auditWriter) Unwrap() http.ResponseWriter        { return w.ResponseWriter }
func (w *auditWriter) SetWriteDeadline(t time.Time) error { return w.rc.SetWriteDeadline(t) }

func (w *auditWriter) watch(p []byte) {
	if !w.sse {
		if !w.jsonOver {
			if len(w.json)+len(p) > answerKeep {
				w.jsonOver, w.json = true, nil
			} else {
				w.json = append(w.json, p...)
			}
		}
		return
	}
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if !w.lineOver {
			if len(w.line)+len(chunk) > answerKeep {
				w.lineOver, w.line = true, w.line[:0]
			} else {
				w.line = append(w.line, chunk...)
			}
		}
		if i < 0 {
			return
		}
		p = p[i+1:]
		w.sseLine()
	}
}

// sseLine takes one complete line of an SSE stream.
func (w *auditWriter) sseLine() {
	line := bytes.TrimSuffix(w.line, []byte("\r"))
	over := w.lineOver
	w.line, w.lineOver = w.line[:0], false
	switch {
	case over:
		// A line too long to keep: data, most likely.
		w.dataOver = true
	case len(line) == 0:
		// The event is complete.
		if len(w.data) > 0 && !w.dataOver {
			w.noteMessage(w.data)
		}
		w.skipped = w.skipped || w.dataOver
		w.data, w.dataOver = w.data[:0], false
	case bytes.HasPrefix(line, []byte("data:")):
		v := bytes.TrimPrefix(line[5:], []byte(" "))
		if over || w.dataOver || len(w.data)+len(v)+1 > answerKeep {
			w.dataOver = true
			return
		}
		if len(w.data) > 0 {
			w.data = append(w.data, '\n')
		}
		w.data = append(w.data, v...)
	}
}

// noteMessage keeps what the audit needs of a response in the answer.
func (w *auditWriter) noteMessage(data []byte) {
	m, err := Peek(data)
	if errors.Is(err, ErrBatch) {
		var all []json.RawMessage
		if json.Unmarshal(data, &all) == nil {
			for _, one := range all {
				w.noteMessage(one)
			}
		}
		return
	}
	if err != nil || (m.Kind != KindResponse && m.Kind != KindError) {
		return
	}
	a := answer{id: string(m.ID), isError: m.Kind == KindError, code: m.ErrorCode}
	if a.isError {
		a.reason = errorReason(data)
	}
	if len(w.answers) < 1024 {
		w.answers = append(w.answers, a)
	}
}

// errorReason is error.data.reason of an error response, if a string.
func errorReason(data []byte) string {
	var v struct {
		Error struct {
			Data json.RawMessage `json:"data"`
		} `json:"error"`
	}
	if json.Unmarshal(data, &v) != nil || len(v.Error.Data) == 0 {
		return ""
	}
	var d struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(v.Error.Data, &d) != nil {
		return ""
	}
	return d.Reason
}

// record writes the exchange's lines.
func (h *Handler) record(x *exchangeInfo, aw *auditWriter) {
	took := time.Since(x.start)
	if !aw.sse && len(aw.json) > 0 {
		aw.noteMessage(aw.json)
	}
	path, _, _ := strings.Cut(x.path, "?")
	name, _, _ := strings.Cut(strings.TrimPrefix(path, "/"), "/")
	base := audit.Record{
		Time:     x.start,
		Client:   clipString(x.client, 256),
		Server:   clipString(name, 128),
		Session:  clipString(x.session, 256),
		HTTP:     clipString(x.method, 16),
		Status:   aw.status,
		Duration: took,
		BytesIn:  x.bytesIn,
		BytesOut: aw.n,
	}
	if base.Session == "" {
		base.Session = clipString(x.answerSession, 256)
	}
	var msgs [][]byte
	batch := false
	switch {
	case x.over:
		base.Unread = true
	case len(x.kept) > 0:
		if _, err := Peek(x.kept); errors.Is(err, ErrBatch) {
			var all []json.RawMessage
			if json.Unmarshal(x.kept, &all) == nil {
				batch = true
				for _, m := range all {
					msgs = append(msgs, m)
				}
			}
		}
		if !batch {
			msgs = [][]byte{x.kept}
		}
	}
	if len(msgs) == 0 {
		rec := base
		h.outcome(&rec, aw, nil)
		h.write(&rec)
		return
	}
	for i, raw := range msgs {
		rec := base
		if batch {
			rec.BatchIndex, rec.BatchSize = i+1, len(msgs)
		}
		var m *Message
		if pm, err := Peek(raw); err == nil {
			m = &pm
			h.describe(&rec, m, raw)
		}
		h.outcome(&rec, aw, m)
		h.write(&rec)
	}
}

// describe fills in what a message says: kind, method, id, name,
// arguments.
func (h *Handler) describe(rec *audit.Record, m *Message, raw []byte) {
	switch m.Kind {
	case KindRequest:
		rec.Kind = "request"
	case KindNotification:
		rec.Kind = "notification"
	default:
		rec.Kind = "response"
	}
	rec.Method = clipString(m.Method, 256)
	if m.ID != nil && len(m.ID) <= 256 {
		rec.ID = json.RawMessage(m.ID)
	}
	if m.Kind != KindRequest && m.Kind != KindNotification {
		return
	}
	// The peeker, not a decoder: Peek has validated raw already.
	top, err := members(raw, skipWS(raw, 0), auditTopKeys)
	pv, ok := top.get("params")
	if err != nil || !ok || string(raw[pv.start:pv.end]) == "null" {
		return
	}
	params := raw[pv.start:pv.end]
	args := params
	if params[0] == '{' {
		ps, err := members(raw, pv.start, auditParamsKeys)
		get := func(k string) []byte {
			if v, ok := ps.get(k); ok && err == nil {
				return raw[v.start:v.end]
			}
			return nil
		}
		switch {
		case m.Method == "tools/call":
			rec.Name, args = m.ToolName, get("arguments")
		case m.Method == "prompts/get":
			rec.Name, args = jsonString(get("name")), get("arguments")
		case strings.HasPrefix(m.Method, "resources/"):
			rec.Name = jsonString(get("uri"))
		}
	}
	rec.Name = clipString(rec.Name, 1024)
	if len(args) == 0 {
		return
	}
	if h.audit.FullArguments() {
		if c, err := audit.Canonical(args); err == nil {
			rec.Arguments = c
		}
		return
	}
	if sum, err := audit.HashArguments(args); err == nil {
		rec.ArgumentsSHA256 = sum
	}
}

// The members describe looks for.
var (
	auditTopKeys    = []string{"params"}
	auditParamsKeys = []string{"name", "uri", "arguments"}
)

// jsonString decodes a JSON string value ("" if it is none).
func jsonString(raw []byte) string {
	if len(raw) < 2 || raw[0] != '"' {
		return ""
	}
	s, err := decodeString(raw)
	if err != nil {
		return ""
	}
	return s
}

// outcome says how the exchange ended for message m (nil: the exchange
// had no message to speak of).
func (h *Handler) outcome(rec *audit.Record, aw *auditWriter, m *Message) {
	var a *answer
	if m != nil && m.Kind == KindRequest {
		for i := range aw.answers {
			if aw.answers[i].id == string(m.ID) {
				a = &aw.answers[i]
				break
			}
		}
	}
	if a == nil && (aw.status >= 400 || m == nil || m.Kind != KindRequest) {
		// An error answer for the whole exchange (id null, or not a
		// request of its own).
		for i := range aw.answers {
			if aw.answers[i].isError {
				a = &aw.answers[i]
				break
			}
		}
	}
	switch {
	case a != nil && a.isError:
		rec.Code, rec.Reason = a.code, clipString(a.reason, 64)
		rec.Outcome = audit.OutcomeError
		if refusalReasons[a.reason] {
			rec.Outcome = audit.OutcomeRefused
		}
	case aw.status >= 400 || aw.status == 0:
		rec.Outcome = audit.OutcomeError
	case a == nil && m != nil && m.Kind == KindRequest && !aw.jsonOver && !aw.skipped:
		// A request with no response: the stream was cut before it.
		rec.Outcome, rec.Reason = audit.OutcomeError, "no_response"
	default:
		rec.Outcome = audit.OutcomeOK
	}
}

func (h *Handler) write(rec *audit.Record) {
	if err := h.audit.Record(rec); err != nil {
		h.log.Error("audit line not written", "err", err, "server", rec.Server, "method", rec.Method)
	}
}

func clipString(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
