// Package audit writes and verifies the agent's audit trail: one JSON line
// per MCP message the agent handles, each carrying the SHA-256 of the line
// before it (a hash chain) and a sequence number, in a file rotated by size.
//
// A line is the record's JSON object with three members added by the
// writer, in this order: "seq" first, then the record's fields, then
// "prev" (the previous line's hash, Genesis for the first line ever) and
// "hash", the hex SHA-256 of the line's bytes up to (not including) the
// `,"hash":` member. Verify recomputes both, so an edited line fails its
// own hash, and a removed, inserted or reordered line breaks the chain at
// the line after it.
package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Genesis is the "prev" of the first line of a trail.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// Outcomes of a record.
const (
	OutcomeOK      = "ok"
	OutcomeError   = "error"   // the server (or its transport) answered with an error
	OutcomeRefused = "refused" // the agent answered itself: a limit, a policy, a bad request
)

// Record is one MCP message handled by the agent: what the line says
// besides seq, prev and hash.
type Record struct {
	Time   time.Time `json:"-"`
	Client string    `json:"client"` // X-Mcptun-Client as the relay verified it ("" : none)
	Agent  string    `json:"agent"`
	Server string    `json:"server"`
	// Session is the MCP session id as the agent knows it (for
	// initialize, the one its answer handed out).
	Session string `json:"session,omitempty"`
	HTTP    string `json:"http"` // the HTTP method of the exchange
	// Kind is request, notification or response (a client's answer to a
	// server request); empty for an exchange without a JSON-RPC body (GET,
	// DELETE, an unreadable body).
	Kind   string `json:"kind,omitempty"`
	Method string `json:"method,omitempty"`
	// ID is the JSON-RPC id as the client sent it (raw JSON).
	ID json.RawMessage `json:"id,omitempty"`
	// Name is the tool or prompt name (tools/call, prompts/get) or the
	// resource URI (resources/read, resources/subscribe, ...).
	Name string `json:"name,omitempty"`
	// BatchIndex and BatchSize place a message of a JSON-RPC batch.
	BatchIndex int `json:"batch_index,omitempty"`
	BatchSize  int `json:"batch_size,omitempty"`

	Outcome string `json:"outcome"`
	Status  int    `json:"status"`           // HTTP status of the answer (0: none was sent)
	Code    int    `json:"code,omitempty"`   // JSON-RPC error code
	Reason  string `json:"reason,omitempty"` // error.data.reason, when the answer has one

	Duration time.Duration `json:"-"`
	BytesIn  int64         `json:"bytes_in"`
	BytesOut int64         `json:"bytes_out"`

	// ArgumentsSHA256 is the hex SHA-256 of the canonical JSON of the
	// arguments (params.arguments of tools/call and prompts/get, else
	// params); Arguments is that canonical JSON itself, with
	// arguments: full. Unread marks a body too large to keep for the
	// audit (see MaxBody): method, name and arguments are then unknown.
	ArgumentsSHA256 string          `json:"arguments_sha256,omitempty"`
	Arguments       json.RawMessage `json:"arguments,omitempty"`
	Unread          bool            `json:"body_unread,omitempty"`
}

// marshal renders r as the middle of a line: its JSON members without
// the braces, in a fixed order (appended by hand: the audit runs on every
// exchange).
func (r *Record) marshal() ([]byte, error) {
	b := make([]byte, 0, 256+len(r.Arguments))
	b = append(b, `"time":"`...)
	b = r.Time.UTC().AppendFormat(b, TimeFormat)
	b = append(b, `","duration_ms":`...)
	b = strconv.AppendFloat(b, float64(r.Duration.Microseconds())/1000, 'f', -1, 64)
	b = str(b, "client", r.Client, true)
	b = str(b, "agent", r.Agent, true)
	b = str(b, "server", r.Server, true)
	b = str(b, "session", r.Session, false)
	b = str(b, "http", r.HTTP, true)
	b = str(b, "kind", r.Kind, false)
	b = str(b, "method", r.Method, false)
	if len(r.ID) > 0 {
		if !json.Valid(r.ID) {
			return nil, fmt.Errorf("audit: record id %q is not JSON", r.ID)
		}
		b = append(b, `,"id":`...)
		b = append(b, r.ID...)
	}
	b = str(b, "name", r.Name, false)
	if r.BatchSize > 0 {
		b = append(b, `,"batch_index":`...)
		b = strconv.AppendInt(b, int64(r.BatchIndex), 10)
		b = append(b, `,"batch_size":`...)
		b = strconv.AppendInt(b, int64(r.BatchSize), 10)
	}
	b = str(b, "outcome", r.Outcome, true)
	b = append(b, `,"status":`...)
	b = strconv.AppendInt(b, int64(r.Status), 10)
	if r.Code != 0 {
		b = append(b, `,"code":`...)
		b = strconv.AppendInt(b, int64(r.Code), 10)
	}
	b = str(b, "reason", r.Reason, false)
	b = append(b, `,"bytes_in":`...)
	b = strconv.AppendInt(b, r.BytesIn, 10)
	b = append(b, `,"bytes_out":`...)
	b = strconv.AppendInt(b, r.BytesOut, 10)
	b = str(b, "arguments_sha256", r.ArgumentsSHA256, false)
	if len(r.Arguments) > 0 {
		if !json.Valid(r.Arguments) {
			return nil, errors.New("audit: record arguments are not JSON")
		}
		b = append(b, `,"arguments":`...)
		b = append(b, r.Arguments...)
	}
	if r.Unread {
		b = append(b, `,"body_unread":true`...)
	}
	return b, nil
}

// str appends the member ,"key":"v" (left out when v is empty, unless
// always); invalid UTF-8 becomes U+FFFD.
func str(b []byte, key, v string, always bool) []byte {
	if v == "" && !always {
		return b
	}
	b = append(b, ',', '"')
	b = append(b, key...)
	b = append(b, '"', ':')
	if !utf8.ValidString(v) {
		v = strings.ToValidUTF8(v, "\uFFFD")
	}
	return AppendString(b, []byte(v))
}

// TimeFormat is RFC 3339 with milliseconds, in UTC.
const TimeFormat = "2006-01-02T15:04:05.000Z07:00"

// hashSuffixLen is the length of `,"hash":"<64 hex>"}`.
const hashSuffixLen = len(`,"hash":""}`) + 64

// appendLine appends the complete line (with its newline) for seq, the
// record's middle and prev, and returns it with the line's hash.
func appendLine(dst []byte, seq uint64, middle []byte, prev string) ([]byte, string) {
	start := len(dst)
	dst = fmt.Appendf(dst, `{"seq":%d,`, seq)
	dst = append(dst, middle...)
	dst = append(dst, `,"prev":"`...)
	dst = append(dst, prev...)
	dst = append(dst, '"')
	sum := sha256.Sum256(dst[start:])
	h := hex.EncodeToString(sum[:])
	dst = append(dst, `,"hash":"`...)
	dst = append(dst, h...)
	dst = append(dst, "\"}\n"...)
	return dst, h
}
