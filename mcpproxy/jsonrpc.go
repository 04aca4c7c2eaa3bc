package mcpproxy

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// Kind classifies a JSON-RPC 2.0 message.
type Kind uint8

const (
	KindRequest      Kind = iota + 1 // method and id
	KindNotification                 // method, no id
	KindResponse                     // id and result
	KindError                        // id (possibly null) and error
)

func (k Kind) String() string {
	switch k {
	case KindRequest:
		return "request"
	case KindNotification:
		return "notification"
	case KindResponse:
		return "response"
	case KindError:
		return "error"
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// Errors returned (wrapped) by [Peek]. Callers branch with errors.Is.
var (
	// ErrParse means the bytes are not valid JSON (JSON-RPC -32700).
	ErrParse = errors.New("parse error")
	// ErrBatch means the message is a JSON array: batches were removed from
	// MCP in 2025-06-18 and are not forwarded.
	ErrBatch = errors.New("JSON-RPC batches are not supported")
	// ErrInvalidMessage means valid JSON that is not a JSON-RPC 2.0 message
	// (JSON-RPC -32600).
	ErrInvalidMessage = errors.New("invalid JSON-RPC message")
)

// span is a half-open byte range of the peeked message.
type span struct{ start, end int }

// Message is what [Peek] learned about a JSON-RPC message without decoding
// it. Byte slices alias the peeked input: they are the exact bytes the
// sender wrote, so an id like 9007199254740993 keeps every digit.
type Message struct {
	Kind   Kind
	Method string // requests and notifications
	// ID is the raw "id" value (requests, responses, errors); "null" is
	// possible only for errors.
	ID []byte
	// ProgressToken is the raw params._meta.progressToken of a request, or
	// params.progressToken of notifications/progress.
	ProgressToken []byte
	// ToolName is params.name of a tools/call request.
	ToolName string
	// CancelledID is the raw params.requestId of notifications/cancelled.
	CancelledID []byte
	// ErrorCode is error.code of an error response, when an integer.
	ErrorCode int
	// SubscriptionID is the raw params._meta["io.modelcontextprotocol/
	// subscriptionId"] of a notification: the id of the subscriptions/listen
	// request (2026-07-28) whose stream it belongs to.
	SubscriptionID []byte

	idSpan     span
	cancelSpan span
	tokenSpan  span
	subSpan    span
	resultSpan span // the result of a response
	paramsSpan span // params of a request or notification (end 0: none)
}

// Peek classifies data as a JSON-RPC message and extracts the fields an
// intermediary routes on. It validates the whole of data as JSON (agreeing
// with encoding/json on validity, see validJSON) but decodes only the few
// members it needs.
//
// Peek is stricter than encoding/json on one point: a member it reads
// (jsonrpc, id, method, params, result, error, and the nested _meta,
// progressToken, name, requestId) must appear once and in lower case. A
// message like {"method":"tools/list","Method":"tools/call"} would mean one
// thing to us and another to a Go server (encoding/json matches names
// case-insensitively and keeps the last), so it is refused.
func Peek(data []byte) (Message, error) {
	var m Message
	if !validJSON(data) {
		return m, fmt.Errorf("%w: %s", ErrParse, syntaxReason(data))
	}
	i := skipWS(data, 0)
	switch data[i] {
	case '[':
		return m, ErrBatch
	case '{':
	default:
		return m, fmt.Errorf("%w: not a JSON object", ErrInvalidMessage)
	}
	top, err := members(data, i, topKeys)
	if err != nil {
		return m, fmt.Errorf("%w: %v", ErrInvalidMessage, err)
	}
	if v, ok := top.get("jsonrpc"); !ok || string(data[v.start:v.end]) != `"2.0"` {
		return m, fmt.Errorf(`%w: "jsonrpc" must be "2.0"`, ErrInvalidMessage)
	}
	idv, hasID := top.get("id")
	if hasID {
		m.ID = data[idv.start:idv.end]
		m.idSpan = idv
	}
	resv, hasResult := top.get("result")
	errv, hasError := top.get("error")
	if mv, ok := top.get("method"); ok {
		if data[mv.start] != '"' {
			return m, fmt.Errorf(`%w: "method" must be a string`, ErrInvalidMessage)
		}
		if hasResult || hasError {
			return m, fmt.Errorf(`%w: a message with "method" cannot have "result" or "error"`, ErrInvalidMessage)
		}
		if m.Method, err = decodeString(data[mv.start:mv.end]); err != nil {
			return m, fmt.Errorf("%w: method: %v", ErrInvalidMessage, err)
		}
		m.Kind = KindNotification
		if hasID {
			if !isIDValue(m.ID) {
				return m, fmt.Errorf(`%w: request "id" must be a string or a number, not %s`, ErrInvalidMessage, clip(m.ID, 40))
			}
			m.Kind = KindRequest
		}
		if pv, ok := top.get("params"); ok {
			m.paramsSpan = pv
			if c := data[pv.start]; c != '{' && c != '[' {
				return m, fmt.Errorf(`%w: "params" must be an object or an array`, ErrInvalidMessage)
			}
			if data[pv.start] == '{' {
				if err := m.peekParams(data, pv.start); err != nil {
					return m, fmt.Errorf("%w: params: %v", ErrInvalidMessage, err)
				}
			}
		}
		return m, nil
	}
	if _, ok := top.get("params"); ok {
		return m, fmt.Errorf(`%w: "params" without "method"`, ErrInvalidMessage)
	}
	switch {
	case !hasID:
		return m, fmt.Errorf(`%w: no "method" and no "id"`, ErrInvalidMessage)
	case hasResult && hasError:
		return m, fmt.Errorf(`%w: both "result" and "error"`, ErrInvalidMessage)
	case hasResult:
		if !isIDValue(m.ID) {
			return m, fmt.Errorf(`%w: response "id" must be a string or a number, not %s`, ErrInvalidMessage, clip(m.ID, 40))
		}
		m.Kind = KindResponse
		m.resultSpan = resv
	case hasError:
		if !isIDValue(m.ID) && string(m.ID) != "null" {
			return m, fmt.Errorf(`%w: error "id" must be a string, a number or null, not %s`, ErrInvalidMessage, clip(m.ID, 40))
		}
		if data[errv.start] != '{' {
			return m, fmt.Errorf(`%w: "error" must be an object`, ErrInvalidMessage)
		}
		e, err := members(data, errv.start, errorKeys)
		if err != nil {
			return m, fmt.Errorf("%w: error: %v", ErrInvalidMessage, err)
		}
		if cv, ok := e.get("code"); ok {
			m.ErrorCode, _ = strconv.Atoi(string(data[cv.start:cv.end]))
		}
		m.Kind = KindError
	default:
		return m, fmt.Errorf(`%w: "id" without "method", "result" or "error"`, ErrInvalidMessage)
	}
	return m, nil
}

// metaSubscriptionID is the _meta key naming the subscriptions/listen
// request a message belongs to (2026-07-28).
const metaSubscriptionID = "io.modelcontextprotocol/subscriptionId"

var (
	topKeys    = []string{"jsonrpc", "id", "method", "params", "result", "error"}
	paramsKeys = []string{"_meta", "name", "requestId", "progressToken"}
	metaKeys   = []string{"progressToken", metaSubscriptionID}
	errorKeys  = []string{"code"}
	resultKeys = []string{"_meta"}
	// maxKeyLen is the length of the longest key Peek looks for: longer
	// keys are skipped without decoding.
	maxKeyLen = len(metaSubscriptionID)
)

func (m *Message) peekParams(data []byte, start int) error {
	params, err := members(data, start, paramsKeys)
	if err != nil {
		return err
	}
	if mv, ok := params.get("_meta"); ok && data[mv.start] == '{' {
		meta, err := members(data, mv.start, metaKeys)
		if err != nil {
			return fmt.Errorf("_meta: %w", err)
		}
		if tv, ok := meta.get("progressToken"); ok && m.Method != "notifications/progress" {
			m.ProgressToken = data[tv.start:tv.end]
			m.tokenSpan = tv
		}
		if sv, ok := meta.get(metaSubscriptionID); ok && m.Kind == KindNotification {
			m.SubscriptionID = data[sv.start:sv.end]
			m.subSpan = sv
		}
	}
	if m.Method == "notifications/progress" {
		if tv, ok := params.get("progressToken"); ok {
			m.ProgressToken = data[tv.start:tv.end]
			m.tokenSpan = tv
		}
	}
	if nv, ok := params.get("name"); ok && m.Method == "tools/call" && data[nv.start] == '"' {
		if m.ToolName, err = decodeString(data[nv.start:nv.end]); err != nil {
			return fmt.Errorf("name: %w", err)
		}
	}
	if rv, ok := params.get("requestId"); ok && m.Method == "notifications/cancelled" {
		m.CancelledID = data[rv.start:rv.end]
		m.cancelSpan = rv
	}
	return nil
}

// edit replaces one value of a peeked message.
type edit struct {
	at   span
	with []byte
}

// idEdit replaces the message's id.
func (m *Message) idEdit(id []byte) edit { return edit{m.idSpan, id} }

// tokenEdit replaces the progress token (in params._meta of a request, in
// params of notifications/progress).
func (m *Message) tokenEdit(tok []byte) edit { return edit{m.tokenSpan, tok} }

// cancelEdit replaces params.requestId of notifications/cancelled.
func (m *Message) cancelEdit(id []byte) edit { return edit{m.cancelSpan, id} }

// subscriptionEdit replaces the subscription id of a notification.
func (m *Message) subscriptionEdit(id []byte) edit { return edit{m.subSpan, id} }

// resultSubscriptionEdit finds the subscription id in a response's
// result._meta (a subscriptions/listen result carries it) and returns the
// edit that replaces it with id, if that id is there and equals want. It
// walks the result, so callers use it only for the responses that may
// carry one.
func (m *Message) resultSubscriptionEdit(data, want, id []byte) (edit, bool) {
	if m.Kind != KindResponse || data[m.resultSpan.start] != '{' {
		return edit{}, false
	}
	res, err := members(data, m.resultSpan.start, resultKeys)
	if err != nil {
		return edit{}, false
	}
	mv, ok := res.get("_meta")
	if !ok || data[mv.start] != '{' {
		return edit{}, false
	}
	meta, err := members(data, mv.start, metaKeys)
	if err != nil {
		return edit{}, false
	}
	sv, ok := meta.get(metaSubscriptionID)
	if !ok || !bytes.Equal(data[sv.start:sv.end], want) {
		return edit{}, false
	}
	return edit{sv, id}, true
}

// rewrite returns a copy of data, the message the edits were peeked from,
// with the edits applied; everything else stays byte for byte. The copy has
// room to append a newline without copying again.
func rewrite(data []byte, edits ...edit) []byte {
	slices.SortFunc(edits, func(a, b edit) int { return a.at.start - b.at.start })
	n := len(data) + 1
	for _, e := range edits {
		n += len(e.with) - (e.at.end - e.at.start)
	}
	out := make([]byte, 0, n)
	prev := 0
	for _, e := range edits {
		out = append(out, data[prev:e.at.start]...)
		out = append(out, e.with...)
		prev = e.at.end
	}
	return append(out, data[prev:]...)
}

// isIDValue reports whether raw is a JSON string or number.
func isIDValue(raw []byte) bool {
	if len(raw) == 0 {
		return false
	}
	c := raw[0]
	return c == '"' || c == '-' || (c >= '0' && c <= '9')
}

// members walks the object starting at data[start] and returns the value
// spans of the keys in want. A wanted key that repeats, or another key that
// differs from a wanted one only in case, is an error (see Peek).
func members(data []byte, start int, want []string) (memberSet, error) {
	out := memberSet{want: want}
	i := skipWS(data, start+1)
	if i < len(data) && data[i] == '}' {
		return out, nil
	}
	for {
		if i >= len(data) || data[i] != '"' {
			return out, errors.New("truncated object")
		}
		ke, err := skipString(data, i)
		if err != nil {
			return out, err
		}
		key := data[i:ke]
		i = skipWS(data, ke)
		if i >= len(data) || data[i] != ':' {
			return out, errors.New("truncated object")
		}
		vs := skipWS(data, i+1)
		ve, err := skipValue(data, vs)
		if err != nil {
			return out, err
		}
		if err := out.note(key, span{vs, ve}); err != nil {
			return out, err
		}
		i = skipWS(data, ve)
		if i >= len(data) {
			return out, errors.New("truncated object")
		}
		switch data[i] {
		case ',':
			i = skipWS(data, i+1)
		case '}':
			return out, nil
		default:
			return out, fmt.Errorf("unexpected %q in object", data[i])
		}
	}
}

// maxWanted bounds the keys one members call looks for.
const maxWanted = 6

// memberSet is what members found: the value span of each wanted key, by
// its position in want. Fixed arrays, not a map: Peek runs on every
// message a stdio session carries.
type memberSet struct {
	want []string
	span [maxWanted]span
	has  [maxWanted]bool
}

func (s *memberSet) get(key string) (span, bool) {
	for i, w := range s.want {
		if w == key {
			return s.span[i], s.has[i]
		}
	}
	return span{}, false
}

// note records the member with the raw (quoted) key rawKey if it is wanted.
func (s *memberSet) note(rawKey []byte, v span) error {
	inner := rawKey[1 : len(rawKey)-1]
	escaped := bytes.IndexByte(inner, '\\') >= 0
	if !escaped && len(inner) > maxKeyLen {
		return nil // fast path: no wanted key is this long
	}
	key := inner
	if escaped {
		k, err := decodeString(rawKey)
		if err != nil {
			return err
		}
		key = []byte(k)
	}
	for i, w := range s.want {
		if !foldEqual(key, w) {
			continue
		}
		if string(key) != w {
			return fmt.Errorf("member %q differs from %q only in case", key, w)
		}
		if s.has[i] {
			return fmt.Errorf("duplicate member %q", w)
		}
		s.span[i], s.has[i] = v, true
	}
	return nil
}

// foldEqual is strings.EqualFold(string(b), w) for an ASCII w, without
// the conversion: only non-ASCII keys (where U+212A and U+017F fold to
// ASCII letters) take the general comparison.
func foldEqual(b []byte, w string) bool {
	for _, c := range b {
		if c >= utf8.RuneSelf {
			return strings.EqualFold(string(b), w)
		}
	}
	return httpfwd.EqualFold(b, w)
}

func decodeString(raw []byte) (string, error) {
	if bytes.IndexByte(raw, '\\') < 0 && len(raw) >= 2 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1]), nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	return s, nil
}

func skipWS(data []byte, i int) int {
	for i < len(data) {
		switch data[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}

// skipString returns the index just past the string starting at data[i].
// It hops from quote to quote with IndexByte: strings are most of a big
// message's bytes.
func skipString(data []byte, i int) (int, error) {
	for j := i + 1; j < len(data); {
		k := bytes.IndexByte(data[j:], '"')
		if k < 0 {
			break
		}
		q := j + k
		// The quote ends the string unless an odd run of backslashes
		// escapes it.
		n := 0
		for p := q - 1; p > i && data[p] == '\\'; p-- {
			n++
		}
		if n%2 == 0 {
			return q + 1, nil
		}
		j = q + 1
	}
	return 0, errors.New("truncated string")
}

// skipValue returns the index just past the value starting at data[i]. It
// relies on data having been validated for everything but truncation, which
// it reports as an error (peekIDPrefix uses it on cut-off input).
func skipValue(data []byte, i int) (int, error) {
	if i >= len(data) {
		return 0, errors.New("truncated value")
	}
	switch data[i] {
	case '"':
		return skipString(data, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(data); j++ {
			switch data[j] {
			case '"':
				e, err := skipString(data, j)
				if err != nil {
					return 0, err
				}
				j = e - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, errors.New("truncated value")
	}
	for j := i; j < len(data); j++ {
		switch data[j] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			if j == i {
				return 0, fmt.Errorf("unexpected %q", data[j])
			}
			return j, nil
		}
	}
	// A scalar is never last in a valid object: it is cut off.
	return 0, errors.New("truncated value")
}

// peekIDPrefix looks for the top-level "id" in the first bytes of a message
// too large to accept, so that the request it answers can be failed instead
// of waiting forever. It is best effort and never panics.
func peekIDPrefix(prefix []byte) []byte {
	i := skipWS(prefix, 0)
	if i >= len(prefix) || prefix[i] != '{' {
		return nil
	}
	i = skipWS(prefix, i+1)
	for i < len(prefix) && prefix[i] == '"' {
		ke, err := skipString(prefix, i)
		if err != nil {
			return nil
		}
		key := prefix[i:ke]
		i = skipWS(prefix, ke)
		if i >= len(prefix) || prefix[i] != ':' {
			return nil
		}
		vs := skipWS(prefix, i+1)
		ve, err := skipValue(prefix, vs)
		if err != nil {
			return nil
		}
		if string(key) == `"id"` {
			if id := prefix[vs:ve]; isIDValue(id) && validJSON(id) {
				return id
			}
			return nil
		}
		i = skipWS(prefix, ve)
		if i >= len(prefix) || prefix[i] != ',' {
			return nil
		}
		i = skipWS(prefix, i+1)
	}
	return nil
}

// syntaxReason explains why data is not JSON, in encoding/json's words.
func syntaxReason(data []byte) string {
	var v json.RawMessage
	if err := json.Unmarshal(data, &v); err != nil {
		return err.Error()
	}
	return "invalid JSON"
}

// clip shortens b for an error message or a log line.
func clip(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + fmt.Sprintf("…(%d bytes)", len(b))
}

// requestID is the id to answer m's errors with: its own for a request.
func requestID(m *Message) []byte {
	if m.Kind == KindRequest {
		return m.ID
	}
	return nil
}

// statelessErrorStatus is the HTTP status 2026-07-28 gives a JSON-RPC error
// answered as plain JSON.
func statelessErrorStatus(code int) int {
	switch code {
	case codeMethodNotFound:
		return http.StatusNotFound
	case codeHeaderMismatch, -32021, codeUnsupportedVersion, codeInvalidRequest, -32602, codeParse:
		return http.StatusBadRequest
	}
	return http.StatusOK
}

// decodeHeaderValue undoes the =?base64?...?= wrapping of Mcp-Name values
// that are not plain ASCII.
func decodeHeaderValue(v string) (string, bool) {
	inner, ok := strings.CutPrefix(v, "=?base64?")
	if !ok {
		return v, true
	}
	if inner, ok = strings.CutSuffix(inner, "?="); !ok {
		return v, true
	}
	b, err := base64.StdEncoding.DecodeString(inner)
	return string(b), err == nil
}
