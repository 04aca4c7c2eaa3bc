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
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"
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

// wire is Record with the fields the encoder cannot render as the line
// wants them.
type wire struct {
	Time       string  `json:"time"`
	DurationMS float64 `json:"duration_ms"`
	*Record
}

// marshal renders r as the middle of a line: its JSON object without the
// braces.
func (r *Record) marshal() ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	w := wire{Time: r.Time.UTC().Format(TimeFormat), DurationMS: float64(r.Duration.Microseconds()) / 1000, Record: r}
	if err := enc.Encode(&w); err != nil {
		return nil, fmt.Errorf("audit: encode record: %w", err)
	}
	b := bytes.TrimSpace(buf.Bytes())
	return b[1 : len(b)-1], nil
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
