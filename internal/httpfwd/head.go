package httpfwd

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"math"
	"strings"
)

// MaxHeadBytes bounds a request or response head (start line and header
// lines) read by ReadHead, as net/http's server does by default.
const MaxHeadBytes = 1 << 20

// HeadError reports a malformed HTTP/1.1 head.
type HeadError struct{ Reason string }

func (e *HeadError) Error() string { return "httpfwd: malformed head: " + e.Reason }

// Field is one header line of a Head, as offsets into Head.Raw.
type Field struct {
	lineStart, nameEnd, valueStart, valueEnd, lineEnd int
}

// Head is an HTTP/1.1 request or response head in wire form, parsed just
// enough to forward it: the start line, where each header line is, and what
// frames the body. Nothing is canonicalised or copied into maps: a proxy that
// passes headers through need not.
type Head struct {
	Raw    []byte  // start line and header lines, without the blank line
	Start  []byte  // start line without CRLF (a sub-slice of Raw)
	Fields []Field // header lines in order

	// ContentLength is the declared body length, -1 if none was given.
	ContentLength int64
	// Chunked is set when Transfer-Encoding is exactly "chunked".
	Chunked bool
	// OtherEncoding is set for any other Transfer-Encoding: such a body
	// cannot be framed here.
	OtherEncoding bool
	// Close is set by "Connection: close".
	Close bool
	// ConnTokens counts Connection options other than close and
	// keep-alive: header names the sender declared hop-by-hop.
	ConnTokens int
}

// Name returns the header name of f.
func (h *Head) Name(f Field) []byte { return h.Raw[f.lineStart:f.nameEnd] }

// Value returns the header value of f, without surrounding whitespace.
func (h *Head) Value(f Field) []byte { return h.Raw[f.valueStart:f.valueEnd] }

// Line returns the header line of f as received, including its line end.
func (h *Head) Line(f Field) []byte { return h.Raw[f.lineStart:f.lineEnd] }

// AppendField appends the header line of f to b as "Name: value\r\n":
// whatever spacing and line end the sender used, the next hop gets the
// canonical form (a bare LF passed on could be read differently there).
func (h *Head) AppendField(b []byte, f Field) []byte {
	b = append(b, h.Raw[f.lineStart:f.nameEnd]...)
	b = append(b, ": "...)
	b = append(b, h.Raw[f.valueStart:f.valueEnd]...)
	return append(b, "\r\n"...)
}

// Get returns the first value of the header named name (case-insensitive).
func (h *Head) Get(name string) ([]byte, bool) {
	for _, f := range h.Fields {
		if EqualFold(h.Name(f), name) {
			return h.Value(f), true
		}
	}
	return nil, false
}

// IsConnToken reports whether the Connection header lists name: the sender
// made that header hop-by-hop.
func (h *Head) IsConnToken(name []byte) bool {
	if h.ConnTokens == 0 {
		return false
	}
	for _, f := range h.Fields {
		if !EqualFold(h.Name(f), "Connection") {
			continue
		}
		for _, t := range bytes.Split(h.Value(f), []byte(",")) {
			if bytes.EqualFold(bytes.TrimSpace(t), name) {
				return true
			}
		}
	}
	return false
}

// Reset empties h for reuse, keeping its buffers.
func (h *Head) Reset() {
	*h = Head{Raw: h.Raw[:0], Fields: h.Fields[:0]}
}

// ReadHead reads one head from br into h, replacing what h held. It
// consumes the blank line ending the head and nothing after it. Empty lines
// before a request line are skipped (RFC 9112 §2.2). A malformed head gives
// a *HeadError; a read error is returned as it is (io.EOF when the
// connection ended before any byte of the head).
func ReadHead(br *bufio.Reader, h *Head) error {
	h.Reset()
	skipped := 0 // bytes of empty lines before the start line, bounded too
	for first := true; ; {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the reader's buffer: gather it whole.
			full := append([]byte(nil), line...)
			for err == bufio.ErrBufferFull && skipped+len(h.Raw)+len(full) <= MaxHeadBytes {
				line, err = br.ReadSlice('\n')
				full = append(full, line...)
			}
			line = full
		}
		if err != nil {
			if err == bufio.ErrBufferFull {
				return &HeadError{Reason: "head too large"}
			}
			if len(h.Raw) > 0 || len(line) > 0 {
				if err == io.EOF {
					// Not io.EOF: some of a head came, so the peer did
					// not just close an idle connection.
					err = io.ErrUnexpectedEOF
				}
				return fmt.Errorf("httpfwd: head cut short: %w", err)
			}
			return err
		}
		if skipped+len(h.Raw)+len(line) > MaxHeadBytes {
			return &HeadError{Reason: "head too large"}
		}
		content := trimEOL(line)
		if first {
			if len(content) == 0 {
				skipped += len(line)
				continue
			}
			first = false
			h.Raw = append(h.Raw, line...)
			h.Start = h.Raw[:len(content)]
			continue
		}
		if len(content) == 0 {
			break
		}
		start := len(h.Raw)
		h.Raw = append(h.Raw, line...)
		if err := h.addField(start, len(content)); err != nil {
			return err
		}
	}
	// Start may point into a buffer Raw outgrew; its bytes are unchanged.
	return h.frame()
}

func trimEOL(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte("\n"))
	return bytes.TrimSuffix(line, []byte("\r"))
}

// addField records the header line at h.Raw[start:], content bytes long
// before its line end.
func (h *Head) addField(start, content int) error {
	line := h.Raw[start : start+content]
	if line[0] == ' ' || line[0] == '\t' {
		return &HeadError{Reason: "obsolete line folding"}
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return &HeadError{Reason: "header line without a name"}
	}
	for _, c := range line[:colon] {
		if !isTokenByte(c) {
			return &HeadError{Reason: fmt.Sprintf("invalid byte %q in header name %q", c, line[:colon])}
		}
	}
	vs, ve := colon+1, len(line)
	for vs < ve && (line[vs] == ' ' || line[vs] == '\t') {
		vs++
	}
	for ve > vs && (line[ve-1] == ' ' || line[ve-1] == '\t') {
		ve--
	}
	for _, c := range line[vs:ve] {
		if c == '\r' || c == 0 || (c < ' ' && c != '\t') || c == 0x7f {
			return &HeadError{Reason: fmt.Sprintf("invalid byte %q in value of header %q", c, line[:colon])}
		}
	}
	h.Fields = append(h.Fields, Field{
		lineStart: start, nameEnd: start + colon,
		valueStart: start + vs, valueEnd: start + ve,
		lineEnd: len(h.Raw),
	})
	return nil
}

// frame works out the body framing and connection options.
func (h *Head) frame() error {
	h.ContentLength = -1
	for _, f := range h.Fields {
		name, v := h.Name(f), h.Value(f)
		switch {
		case EqualFold(name, "Content-Length"):
			n, ok := parseLength(v)
			if !ok {
				return &HeadError{Reason: fmt.Sprintf("invalid Content-Length %q", v)}
			}
			if h.ContentLength >= 0 && h.ContentLength != n {
				return &HeadError{Reason: "conflicting Content-Length headers"}
			}
			h.ContentLength = n
		case EqualFold(name, "Transfer-Encoding"):
			if h.Chunked || h.OtherEncoding || !bytes.EqualFold(v, []byte("chunked")) {
				h.Chunked, h.OtherEncoding = false, true
			} else {
				h.Chunked = true
			}
		case EqualFold(name, "Connection"):
			for _, t := range bytes.Split(v, []byte(",")) {
				t = bytes.TrimSpace(t)
				switch {
				case len(t) == 0, bytes.EqualFold(t, []byte("keep-alive")):
				case bytes.EqualFold(t, []byte("close")):
					h.Close = true
				default:
					h.ConnTokens++
				}
			}
		}
	}
	if (h.Chunked || h.OtherEncoding) && h.ContentLength >= 0 {
		// RFC 9112 §6.3: a sender must not send both; a proxy that passed
		// both on would invite request smuggling.
		return &HeadError{Reason: "both Transfer-Encoding and Content-Length"}
	}
	return nil
}

// parseLength parses a Content-Length value: 1*DIGIT (no sign, no
// spaces), at most what an int64 holds.
func parseLength(v []byte) (int64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if c < '0' || c > '9' || n > (math.MaxInt64-int64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// StatusCode parses the status of a response head.
func (h *Head) StatusCode() (int, error) {
	s := h.Start
	if len(s) < 12 || !bytes.HasPrefix(s, []byte("HTTP/1.")) || !isDigit(s[7]) || s[8] != ' ' || (len(s) > 12 && s[12] != ' ') {
		return 0, &HeadError{Reason: fmt.Sprintf("invalid status line %q", s)}
	}
	code := 0
	for _, c := range s[9:12] {
		if c < '0' || c > '9' {
			return 0, &HeadError{Reason: fmt.Sprintf("invalid status line %q", s)}
		}
		code = code*10 + int(c-'0')
	}
	if code < 100 {
		return 0, &HeadError{Reason: fmt.Sprintf("invalid status code in %q", s)}
	}
	return code, nil
}

// RequestLine splits a request head's start line.
func (h *Head) RequestLine() (method, target, version []byte, err error) {
	m, rest, ok1 := bytes.Cut(h.Start, []byte(" "))
	t, v, ok2 := bytes.Cut(rest, []byte(" "))
	if !ok1 || !ok2 || len(m) == 0 || len(t) == 0 || !bytes.HasPrefix(v, []byte("HTTP/1.")) || len(v) != 8 || !isDigit(v[7]) {
		return nil, nil, nil, &HeadError{Reason: fmt.Sprintf("invalid request line %.100q", h.Start)}
	}
	for _, c := range m {
		if !isTokenByte(c) {
			return nil, nil, nil, &HeadError{Reason: fmt.Sprintf("invalid method %.40q", m)}
		}
	}
	for _, c := range t {
		if c <= ' ' || c == 0x7f {
			return nil, nil, nil, &HeadError{Reason: fmt.Sprintf("invalid request target %.100q", t)}
		}
	}
	return m, t, v, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func isTokenByte(c byte) bool { return tokenBytes[c] }

// tokenBytes marks the bytes of an RFC 9110 token (tchar).
var tokenBytes = func() (t [256]bool) {
	for c := range 256 {
		t[c] = c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-.^_`|~", byte(c)) >= 0
	}
	return t
}()

// EqualFold compares an ASCII header name with a name in any case.
func EqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if c|0x20 != d|0x20 || (c|0x20 < 'a' || c|0x20 > 'z') && c != d {
			return false
		}
	}
	return true
}

// IsHopByHop reports connection-level headers a proxy must not forward
// (RFC 9110 §7.6.1); framing headers are rewritten by whoever frames.
func IsHopByHop(name []byte) bool {
	for _, h := range hopNames {
		if EqualFold(name, h) {
			return true
		}
	}
	return false
}

var hopNames = []string{"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length"}
