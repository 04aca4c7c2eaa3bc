package mcpproxy

import "net/http"

// The session-era headers, used by the stdio bridge and by the url:
// proxy's session ownership alike (so on every platform).
const (
	headerSession = "Mcp-Session-Id"
	headerVersion = "Mcp-Protocol-Version"
)

// statelessVersion is the first revision without sessions; the stdio
// bridge serves requests that announce it by the server's one shared
// child, and the url: proxy binds no session for them.
const statelessVersion = "2026-07-28"

// codeSessionNotFound is what the TypeScript SDK answers for an unknown
// session; clients act on the 404, the code is for people.
const codeSessionNotFound = -32001

// notFound answers a session that ended, never existed, or belongs to
// another client: the same bytes in each case, so that nothing tells them
// apart.
func notFound(w http.ResponseWriter, id []byte) {
	writeError(w, http.StatusNotFound, id, codeSessionNotFound,
		"mcpproxy: session not found (it ended or never existed): send initialize to start a new one")
}
