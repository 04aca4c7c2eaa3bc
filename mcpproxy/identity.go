package mcpproxy

import "net/http"

// ClientHeader carries the name of the client the relay authenticated
// (relay.ClientHeader; the packages do not import each other). The relay
// removes any value a client sent and sets its own, and only the relay can
// open tunnel streams, so the agent trusts it.
const ClientHeader = "X-Mcptun-Client"

// clientOf returns the identity of the client that sent r: the name the
// relay verified. A request that did not come through a relay (a local
// caller, a test) has none: "" is then one anonymous client like any other.
// Sessions belong to it and the per-client limits count by it.
func clientOf(r *http.Request) string {
	return r.Header.Get(ClientHeader)
}
