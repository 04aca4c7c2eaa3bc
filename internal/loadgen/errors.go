package loadgen

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// HTTPError is an answer whose HTTP status is not a success.
type HTTPError struct {
	Op         string // "initialize", "tools/call", ...
	StatusCode int
	Status     string // "401 Unauthorized"
	// Detail is a short, printable excerpt of the body, plus the
	// WWW-Authenticate or Location header when there is one.
	Detail string
}

func (e *HTTPError) Error() string {
	if e.Detail == "" {
		return fmt.Sprintf("%s: HTTP %s", e.Op, e.Status)
	}
	return fmt.Sprintf("%s: HTTP %s: %s", e.Op, e.Status, e.Detail)
}

// RPCError is a JSON-RPC error response.
type RPCError struct {
	Op      string
	Code    int
	Message string
}

func (e *RPCError) Error() string {
	return fmt.Sprintf("%s: JSON-RPC error %d: %s", e.Op, e.Code, e.Message)
}

// ToolError is a tools/call result with isError set.
type ToolError struct {
	Tool string
	Text string // the text content the tool returned, shortened
}

func (e *ToolError) Error() string {
	if e.Text == "" {
		return fmt.Sprintf("tools/call %s: tool reported isError", e.Tool)
	}
	return fmt.Sprintf("tools/call %s: tool reported isError: %s", e.Tool, e.Text)
}

// ProtocolError is an answer that is not a valid MCP answer: wrong
// Content-Type, not JSON, not a JSON-RPC response to our request, an SSE
// stream that ends before the response.
type ProtocolError struct {
	Op     string
	Reason string
}

func (e *ProtocolError) Error() string {
	return fmt.Sprintf("%s: %s", e.Op, e.Reason)
}

// snippetLen bounds the excerpt of a body quoted in an error.
const snippetLen = 200

// snippet returns a short, single-line, printable excerpt of b.
func snippet(b []byte) string {
	var sb strings.Builder
	space := false
	for len(b) > 0 && sb.Len() < snippetLen {
		r, n := utf8.DecodeRune(b)
		b = b[n:]
		switch {
		case r == utf8.RuneError && n == 1:
			r = '?'
		case r == '\n' || r == '\r' || r == '\t' || r == ' ':
			space = true
			continue
		case r < 0x20 || r == 0x7f:
			r = '?'
		}
		if space && sb.Len() > 0 {
			sb.WriteByte(' ')
		}
		space = false
		sb.WriteRune(r)
	}
	if len(b) > 0 {
		sb.WriteString("…")
	}
	return sb.String()
}

// TransportError is a request that got no complete HTTP answer: connection
// refused or reset, a TLS failure, the request timeout.
type TransportError struct {
	Op  string
	URL string
	Err error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("%s: POST %s: %v", e.Op, e.URL, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }
