package relay

import (
	"encoding/json"
	"net/http"
)

type errorBody struct {
	JSONRPC string      `json:"jsonrpc"`
	ID      any         `json:"id"`
	Error   errorDetail `json:"error"`
}

type errorDetail struct {
	Code    int        `json:"code"`
	Message string     `json:"message"`
	Data    errorExtra `json:"data"`
}

type errorExtra struct {
	Reason string `json:"reason"` // stable machine code, e.g. "agent_offline"
}

// writeError answers with a JSON-RPC shaped error body so that MCP clients,
// which expect JSON-RPC, show the message.
func writeError(w http.ResponseWriter, status int, reason, message string) {
	noteAccess(w, "", reason)
	noteReason(w, reason)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write(errorJSON(reason, message))
}

// errorJSON renders the body writeError sends.
func errorJSON(reason, message string) []byte {
	body, _ := json.Marshal(errorBody{
		JSONRPC: "2.0",
		Error:   errorDetail{Code: -32000, Message: message, Data: errorExtra{Reason: reason}},
	})
	return append(body, '\n')
}

// Reasons of the answers a failed forward gets (forwardFailed); the
// refusals' are in admit. README "Error answers" lists them all, and a
// test keeps it in step with the code.
const (
	reasonBadRequest     = "bad_request"
	reasonBodyTooLarge   = "body_too_large"
	reasonOutcomeUnknown = "upstream_outcome_unknown"
	reasonAgentOffline   = "agent_offline"
	reasonTunnelError    = "tunnel_error"
	reasonRelayShutdown  = "relay_shutdown"
	reasonAgentShutdown  = "agent_shutdown"
)
