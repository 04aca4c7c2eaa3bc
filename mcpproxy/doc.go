// Package mcpproxy is the agent-side MCP endpoint: an http.Handler that
// serves /{server}/mcp for each configured MCP server, over plain net/http.
// It does not know how bytes reach it (the agent serves it on a listener
// of tunnel streams; the relay rewrites /{agent}/{server}/mcp to
// /{server}/mcp). Any other path is 404: the handler never reaches a server
// that is not configured. A server with a rate limit (ServerConfig.Rate)
// gets no exchange over it: the handler answers 429 with Retry-After.
//
// # HTTP servers (ServerConfig.URL)
//
// The exchange is reverse-proxied to the upstream URL with
// httputil.ReverseProxy: the path becomes the URL's path, the query is
// kept, hop-by-hop headers are dropped, SSE is flushed as it comes. The
// client's Authorization and every X-Mcptun-* header (the relay's
// X-Mcptun-Client among them) are removed, then ServerConfig.Headers are
// set. No HTTP proxy from the environment is used. An unreachable upstream
// gets 502 with a JSON-RPC error naming the kind of failure (not the
// internal address, which stays in the agent's log).
// Request bodies are forwarded in full duplex: an upstream may start its
// answer (an SSE head) before it has the whole body, and net/http's server
// would otherwise drain the body under the transport and cut the answer.
//
// # Stdio servers (ServerConfig.Command)
//
// The handler is a Streamable HTTP server (revisions 2025-03-26 to
// 2025-11-25) in front of child processes that speak newline-delimited
// JSON-RPC on stdin and stdout:
//
//   - Sessions. A POST of initialize without Mcp-Session-Id starts a child
//     (its own process group; Pdeathsig SIGKILL on Linux) and answers with
//     the child's result and a new Mcp-Session-Id (128 random bits, hex).
//     An error result ends the session again. DELETE (204), IdleTimeout
//     without an HTTP request in progress, Handler.Close and the child's
//     own exit end a session; requests in flight then get a JSON-RPC error
//     (-32000) and later ones 404. Ending a session closes the child's
//     stdin and sends SIGTERM to its group, then SIGKILL after KillGrace;
//     the group gets SIGKILL once the child is reaped, so grandchildren go
//     too. The child's environment is not the agent's: see ServerConfig.Env.
//     Its stderr is logged line by line (at most 1 KiB a line) with the
//     server name and the session id's first 8 characters.
//
//   - Ownership and limits. A session belongs to the client that sent its
//     initialize (ClientHeader, set by the relay; none is one anonymous
//     client): for any other client its id gets the 404 of an unknown
//     session, on POST, GET and DELETE alike. ServerConfig.Limits bound a
//     server's sessions and requests in flight, in all (503,
//     error.data.reason session_limit, concurrency_limit) and per client
//     (429, client_session_limit, client_concurrency_limit); a client at
//     its session limit ends its own longest-idle session to make room
//     before it is refused.
//
//   - Errors. A POST without a session (other than initialize) is 400, an
//     unknown or ended session 404 (clients re-initialize on 404), an
//     MCP-Protocol-Version other than 2024-11-05, 2025-03-26, 2025-06-18,
//     2025-11-25 or 2026-07-28 is 400 with error -32022 listing those,
//     invalid JSON 400 with -32700, a
//     batch or a non-JSON-RPC body 400 with -32600, a body over
//     MaxMessageBytes 413, a Content-Type other than application/json 415,
//     an Accept header allowing neither application/json nor
//     text/event-stream (GET: text/event-stream) 406, other methods 405
//     with Allow. A missing Accept is taken as accepting both.
//
//   - Fidelity. Messages pass through byte for byte, but for three
//     splices: newlines in a client's (pretty-printed) JSON become spaces;
//     a client request's id is replaced by a small integer of ours before
//     the child sees it, and the client's exact id bytes are put back in
//     the response (so ids above 2^53, which many servers round, and any
//     string id survive); and params.requestId of a client's
//     notifications/cancelled is mapped the same way. Peek, not a decoder,
//     finds these, and a message in which they are ambiguous (a member
//     repeated, or differing only in case) is refused.
//
//   - Answers. A POST of a notification or response is written to stdin
//     and answered 202. A POST of a request is answered with
//     application/json if the child's response is the first message for it
//     (and the client does not prefer SSE: its Accept ranks
//     text/event-stream above application/json by q-value, or equally but
//     first, as the conformance suite's raw requests do); otherwise, or as
//     soon as a notification or request comes first, the answer is
//     text/event-stream and carries every message for the request, each
//     flushed, until the response ends the stream.
//
//   - Routing from the child. A response goes to the POST that carried the
//     request. notifications/progress goes to the stream of the request
//     whose params._meta.progressToken it names. A notification whose
//     params._meta["io.modelcontextprotocol/subscriptionId"] names a
//     subscriptions/listen request in flight goes to that request's stream,
//     with the client's id put back there (and in the listen result's
//     _meta). Any other notification or
//     request of the child (sampling/createMessage, elicitation/create,
//     roots/list, ping, logging...) goes to the most recent request in
//     flight whose client is connected; with none, to the standalone GET
//     stream, where it waits for a GET if none is open. The client answers
//     the child's requests with POSTs of responses, which go to stdin with
//     the child's own ids.
//
//   - Streams and resumption. GET with a session opens the standalone
//     stream (one connection at a time: a second is 409). Every event has
//     an id "S.N": S the stream, N a sequence number unique in the session.
//     A stream starts with "retry: 2000" and, for clients announcing
//     2025-11-25 or later, a priming event (an id, empty data). GET with
//     Last-Event-ID resumes stream S after event N, be it the standalone
//     stream or a POST's stream (until its response). A client
//     disconnecting is not a cancellation: the request goes on and its
//     messages wait in the session's replay buffer. The buffer keeps the
//     last 1024 events and 8 MiB, oldest first out; an event a connected
//     client has not yet received is never dropped, and dropping one that
//     no client received is logged. The bound holds for connected streams
//     too: while undelivered events of connected streams fill it, the
//     child's stdout is not read (backpressure: the child blocks, nothing
//     is lost); a client that accepts nothing for WriteTimeout is cut, its
//     events left for a resume. The stateless era's shared child is never
//     held back: the stream furthest behind is cut and its request
//     cancelled instead. Idle streams get ": keepalive"
//     comments every KeepAlive (20 s); SSE responses carry Cache-Control:
//     no-cache and X-Accel-Buffering: no.
//
//   - Size. Messages have no line-length limit but MaxMessageBytes (64 MiB
//     by default) both ways; a larger one from the child is dropped with a
//     logged error and, if its id can be read from its start, the request
//     it answers gets error -32603 saying so.
//
// # The stateless era (2026-07-28)
//
// A POST announcing MCP-Protocol-Version 2026-07-28, or a server/discover
// without a session, is served by one child shared by all such clients of
// the server (started on demand, ended like a session: idle timeout, exit,
// Close). Ids and progress tokens are remapped as above, which is what
// keeps two clients' equal ids apart. The bridge checks what the child
// cannot see: Mcp-Method must be present on requests and match the body,
// Mcp-Name (plain or =?base64?...?=) must match a tools/call's tool name
// (other methods' Mcp-Name and Mcp-Param-* are not checked), Last-Event-ID
// is refused; mismatches are 400 with -32020. Answers are JSON or SSE as
// above, without priming (these streams are not resumable); a JSON error
// gets the era's status (404 for -32601, 400 for -32600, -32602, -32700,
// -32020 to -32022). Closing a POST's stream before its response cancels
// the request: the child gets notifications/cancelled (and its late answer
// is dropped quietly). subscriptions/listen is such a long POST stream,
// carrying the notifications the child tags with its id, with keep-alive
// comments while idle. A notification of the child that names no request
// (neither a progress token nor a subscription id: an untagged log message,
// say) is dropped, as guessing a recipient could hand one client's messages
// to another, and a request of the child is refused with -32601. GET and
// DELETE are 405.
//
// # Policy
//
// A server's Policy (tools, prompts and resources allowed and denied by
// glob, per-tool rate limits, tool pinning) and the relay's narrowing
// (NarrowHeader) are enforced here, on both server kinds and in both eras:
// list results are filtered, requests naming what is not allowed are
// answered by the agent and never reach the server (policy.go; for URL
// servers policyhttp.go, for pins pins.go). A server without a policy
// takes exactly the paths described above; Target (target.go) is what a
// request acts on, as the policy reads it.
//
// # Origin and Host
//
// The stdio bridge refuses (403) a request whose Origin is present and
// neither loopback nor in Options.AllowedOrigins, and, when
// Options.AllowedHosts is set, one whose Host is neither loopback nor
// listed: DNS-rebinding defence that does not rely on the relay's own check.
// URL servers see the client's Origin (the Host they get is their own) and
// apply their own policy. Client authentication and rate limits are the
// relay's (and the agent's wiring's) business, not this package's.
package mcpproxy
