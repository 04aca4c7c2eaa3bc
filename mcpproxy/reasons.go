package mcpproxy

import "net/http"

// The stable codes in error.data.reason of every error answer the agent
// makes itself (README: "Error answers"). Each is listed there with its
// status; a test keeps the two in step (reasons_test.go).
const (
	reasonBadRequest          = "bad_request"
	reasonParseError          = "parse_error"
	reasonHeaderMismatch      = "header_mismatch"
	reasonUnsupportedVersion  = "unsupported_protocol_version"
	reasonOriginNotAllowed    = "origin_not_allowed"
	reasonNotFound            = "not_found"
	reasonSessionNotFound     = "session_not_found"
	reasonMethodNotAllowed    = "method_not_allowed"
	reasonNotAcceptable       = "not_acceptable"
	reasonStreamConflict      = "stream_conflict"
	reasonBodyTooLarge        = "body_too_large"
	reasonUnsupportedMedia    = "unsupported_media_type"
	reasonRateLimited         = "rate_limited"
	reasonUnavailable         = "unavailable"
	reasonAgentDraining       = "agent_draining"
	reasonNotImplemented      = "not_implemented"
	reasonServerGone          = "server_gone"
	reasonUpstreamUnreachable = "upstream_unreachable"
	reasonOutcomeUnknown      = "upstream_outcome_unknown"
	reasonInternal            = "internal_error"
)

// reasonFor is the reason of an error answer made without one, from its
// HTTP status (0 inside a stream, where there is none of its own) and
// JSON-RPC code: every answer carries a reason, whoever wrote it.
func reasonFor(status, code int) string {
	switch code {
	case codeParse:
		return reasonParseError
	case codeHeaderMismatch:
		return reasonHeaderMismatch
	case codeUnsupportedVersion:
		return reasonUnsupportedVersion
	case codeSessionNotFound:
		return reasonSessionNotFound
	}
	switch status {
	case http.StatusBadRequest:
		return reasonBadRequest
	case http.StatusForbidden:
		return reasonOriginNotAllowed
	case http.StatusNotFound:
		return reasonNotFound
	case http.StatusMethodNotAllowed:
		return reasonMethodNotAllowed
	case http.StatusNotAcceptable:
		return reasonNotAcceptable
	case http.StatusConflict:
		return reasonStreamConflict
	case http.StatusRequestEntityTooLarge:
		return reasonBodyTooLarge
	case http.StatusUnsupportedMediaType:
		return reasonUnsupportedMedia
	case http.StatusTooManyRequests:
		return reasonRateLimited
	case http.StatusServiceUnavailable:
		return reasonUnavailable
	case http.StatusNotImplemented:
		return reasonNotImplemented
	}
	switch code {
	case codeServerGone:
		return reasonServerGone
	case codeInvalidRequest:
		return reasonBadRequest
	}
	return reasonInternal
}

// withReason returns data with a "reason" added if it has none. A
// method-not-found error is the bridge refusing a child's request: it goes
// to the child, not to a client, and gets none.
func withReason(data any, status, code int) any {
	if code == codeMethodNotFound {
		return data
	}
	switch d := data.(type) {
	case nil:
		return map[string]string{"reason": reasonFor(status, code)}
	case map[string]string:
		if _, ok := d["reason"]; !ok {
			d["reason"] = reasonFor(status, code)
		}
	case map[string]any:
		if _, ok := d["reason"]; !ok {
			d["reason"] = reasonFor(status, code)
		}
	}
	return data
}
