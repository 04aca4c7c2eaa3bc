package e2e

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// Bad JSON-RPC sent to the agent's stdio bridge (dc1/notes): each must get
// a clear error, reach the child as nothing it could misread, and leave the
// session working.

// JSON-RPC error codes the bridge answers with.
const (
	advRpcParseError     = -32700
	advRpcInvalidRequest = -32600
	advRpcHeaderMismatch = -32020
	advRpcBadVersion     = -32022
)

func jsonrpcCases() []advAttack {
	const notes = "/dc1/notes/mcp"
	// inSession posts body in a fresh session of alice's and asserts the
	// answer; the session must still work afterwards.
	inSession := func(body string, hdr map[string]string, status, code int) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			sid := e.initialize(t, notes, advAliceToken)
			r := e.do(t, http.MethodPost, notes, advAliceToken, sid, hdr, body)
			if code != 0 {
				advWantRPCError(t, status, code, r)
			} else {
				require.Equal(t, status, r.StatusCode, "body %.300s", r.Body)
			}
			e.echoWorks(t, notes, advAliceToken, sid, "session survives")
		}
	}
	// stateless posts a 2026-07-28 request (no session) with its headers.
	stateless := func(body string, hdr map[string]string, status, code int) func(*testing.T, *advEnv) {
		return func(t *testing.T, e *advEnv) {
			h := map[string]string{"MCP-Protocol-Version": "2026-07-28"}
			for k, v := range hdr {
				h[k] = v
			}
			r := e.do(t, http.MethodPost, notes, advAliceToken, "", h, body)
			advWantRPCError(t, status, code, r)
		}
	}
	call := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}`
	return []advAttack{
		{category: "jsonrpc", name: "invalid_json", run: inSession(`{"jsonrpc":"2.0","id":1,"method":`, nil, 400, advRpcParseError)},
		{category: "jsonrpc", name: "empty_body", run: inSession(``, nil, 400, advRpcParseError)},
		{category: "jsonrpc", name: "trailing_garbage", run: inSession(`{"jsonrpc":"2.0","id":1,"method":"ping"} {"jsonrpc":"2.0","id":2,"method":"ping"}`, nil, 400, advRpcParseError)},
		{category: "jsonrpc", name: "batch_array", run: inSession(`[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "missing_jsonrpc_member", run: inSession(`{"id":1,"method":"ping"}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "wrong_jsonrpc_version", run: inSession(`{"jsonrpc":"1.0","id":1,"method":"ping"}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "null_id_request", run: inSession(`{"jsonrpc":"2.0","id":null,"method":"ping"}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "object_id", run: inSession(`{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "method_not_a_string", run: inSession(`{"jsonrpc":"2.0","id":1,"method":42}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "repeated_id_member", run: inSession(`{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "method_member_differing_in_case", run: inSession(`{"jsonrpc":"2.0","id":1,"method":"ping","Method":"tools/call"}`, nil, 400, advRpcInvalidRequest)},
		{category: "jsonrpc", name: "huge_string_id", run: func(t *testing.T, e *advEnv) {
			// The id passes back byte for byte, however long.
			sid := e.initialize(t, notes, advAliceToken)
			id := `"` + strings.Repeat("i", 1<<20) + `"`
			r := e.do(t, http.MethodPost, notes, advAliceToken, sid, nil, `{"jsonrpc":"2.0","id":`+id+`,"method":"ping"}`)
			require.Equal(t, http.StatusOK, r.StatusCode, "%.300s", r.Body)
			require.Contains(t, r.Body, `"id":`+id)
			e.echoWorks(t, notes, advAliceToken, sid, "session survives")
		}},
		{category: "jsonrpc", name: "request_method_sent_as_notification", run: inSession(`{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}`, nil, 202, 0)},
		{category: "jsonrpc", name: "client_sends_a_response_nobody_asked_for", run: inSession(`{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}`, nil, 202, 0)},
		{category: "jsonrpc", name: "invalid_protocol_version_header", run: inSession(call, map[string]string{"MCP-Protocol-Version": "1999-01-01"}, 400, advRpcBadVersion)},
		{category: "jsonrpc", name: "wrong_content_type", run: inSession(call, map[string]string{"Content-Type": "text/plain"}, http.StatusUnsupportedMediaType, 0)},
		{category: "jsonrpc", name: "accept_allows_neither_json_nor_sse", run: inSession(call, map[string]string{"Accept": "text/html"}, http.StatusNotAcceptable, 0)},
		{category: "jsonrpc", name: "request_without_session", run: func(t *testing.T, e *advEnv) {
			r := e.do(t, http.MethodPost, notes, advAliceToken, "", nil, call)
			advWantRPCErrorStatus(t, http.StatusBadRequest, r)
		}},
		{category: "jsonrpc", name: "stateless_method_header_mismatch", run: stateless(call,
			map[string]string{"Mcp-Method": "tools/list"}, 400, advRpcHeaderMismatch)},
		{category: "jsonrpc", name: "stateless_method_header_missing", run: stateless(call, nil, 400, advRpcHeaderMismatch)},
		{category: "jsonrpc", name: "stateless_name_header_mismatch", run: stateless(call,
			map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "large_output"}, 400, advRpcHeaderMismatch)},
		{category: "jsonrpc", name: "stateless_resume_with_last_event_id", run: stateless(call,
			map[string]string{"Mcp-Method": "tools/call", "Mcp-Name": "echo", "Last-Event-ID": "1.1"}, 400, advRpcHeaderMismatch)},
	}
}
