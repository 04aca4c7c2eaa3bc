package mcpproxy

import (
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// acceptance is how an Accept header ranks one media type: its q-value (from
// the most specific range that matches it) and the position of that range
// in the header, which breaks ties.
type acceptance struct {
	q     float64
	pos   int
	exact bool // matched by type/subtype, not a wildcard
}

// rank returns how the Accept values rank mediaType. Without any Accept
// header everything is acceptable at q=1. A range that does not parse is
// skipped.
func rank(values []string, mediaType string) acceptance {
	if len(values) == 0 {
		return acceptance{q: 1, pos: -1}
	}
	best, bestSpec := acceptance{q: 0, pos: -1}, -1
	pos := 0
	for _, v := range values {
		for part := range strings.SplitSeq(v, ",") {
			part = strings.TrimSpace(part)
			if part == "" {
				continue
			}
			mt, params, err := parseMediaType(part)
			if err != nil {
				pos++
				continue
			}
			spec := -1
			switch {
			case mt == mediaType:
				spec = 2
			case strings.HasSuffix(mt, "/*") && mt != "*/*" && strings.HasPrefix(mediaType, mt[:len(mt)-1]):
				spec = 1
			case mt == "*/*":
				spec = 0
			}
			if spec > bestSpec {
				q := 1.0
				if s, ok := params["q"]; ok {
					if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f <= 1 {
						q = f
					}
				}
				best, bestSpec = acceptance{q: q, pos: pos, exact: spec == 2}, spec
			}
			pos++
		}
	}
	return best
}

// acceptsAny reports whether the Accept header allows one of types (a
// missing Accept allows everything).
func acceptsAny(r *http.Request, types ...string) bool {
	values := r.Header.Values("Accept")
	for _, t := range types {
		if rank(values, t).q > 0 {
			return true
		}
	}
	return false
}

// prefersSSE reports whether a request's answer should be an SSE stream even
// when the response is the only message for it. Both answers are valid MCP
// (clients must accept both), so we follow the client: SSE when it ranks
// text/event-stream above application/json by q-value, or equally but
// listed first, or when it does not accept JSON at all. A client that
// ranks them the same way as most SDKs do ("application/json,
// text/event-stream") gets the cheaper plain JSON answer.
func prefersSSE(r *http.Request) bool {
	values := r.Header.Values("Accept")
	sse, js := rank(values, "text/event-stream"), rank(values, "application/json")
	switch {
	case sse.q <= 0:
		return false
	case js.q <= 0:
		return true
	case sse.q != js.q:
		return sse.q > js.q
	case sse.exact != js.exact:
		return sse.exact
	}
	return sse.pos >= 0 && sse.pos < js.pos
}

// parseMediaType is mime.ParseMediaType without its allocations for the
// usual value, a bare type/subtype ("application/json"): every POST to the
// bridge has its Content-Type parsed and its Accept header ranked up to
// four times.
func parseMediaType(v string) (mediaType string, params map[string]string, err error) {
	if mt, ok := bareMediaType(v); ok {
		return mt, nil, nil
	}
	return mime.ParseMediaType(v)
}

// bareMediaType returns v lower-cased if it is type/subtype with nothing
// else: two non-empty tokens (RFC 2045) around one slash.
func bareMediaType(v string) (string, bool) {
	slash := -1
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '/' && slash < 0 && i > 0 && i < len(v)-1:
			slash = i
		case c <= ' ' || c >= 0x7f || strings.IndexByte(`()<>@,;:\"/[]?=`, c) >= 0:
			return "", false
		}
	}
	if slash < 0 {
		return "", false
	}
	return strings.ToLower(v), true
}
