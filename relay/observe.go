package relay

import (
	"bytes"
	"net/http"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// Observer is told of every exchange the relay answers, for metrics. It
// is called on the request path, so it must be cheap and must not block.
// Every label it gets is bounded: agent is a configured agent's name or
// "" (a name from the client that matches none), server is one the agent
// offers or "" (also for an exchange a peer relay did not route), method is one of MCPMethods, and reason a stable reason
// code or "" (an answer the agent made).
type Observer interface {
	// Exchange is an answered exchange: status is the HTTP status the
	// client got (0 if the client went away first), took its duration
	// (for a GET stream, how long the stream was open).
	Exchange(agent, server, method string, status int, reason string, took time.Duration)
	// StreamOpened and StreamClosed bracket a GET stream (server-sent
	// events from the agent), for the open streams gauge.
	StreamOpened(agent, server string)
	StreamClosed(agent, server string)
}

// MCPMethods are the values of Observer's method: the MCP methods worth
// telling apart, and for the rest "notification", "response" (a client's
// answer to a server's request), "batch", "other" (any other method) and
// "unknown" (a body the relay did not see whole); a GET stream is
// "stream", a DELETE (session end) "delete".
var MCPMethods = []string{
	"initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
	"resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list",
	"prompts/get", "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen",
	"notification", "response", "batch", "other", "unknown", "stream", "delete",
}

// mcpMethod names the MCP method of a request for metrics (see
// MCPMethods), from the HTTP method and the body, if held whole. It
// looks for the first "method" member without decoding: good enough for
// a label, and costs one scan of the body.
func mcpMethod(httpMethod string, body []byte) string {
	switch httpMethod {
	case http.MethodGet:
		return "stream"
	case http.MethodDelete:
		return "delete"
	}
	b := bytes.TrimLeft(body, " \t\r\n")
	if len(b) == 0 {
		return "unknown"
	}
	if b[0] == '[' {
		return "batch"
	}
	i := bytes.Index(b, []byte(`"method"`))
	if i < 0 {
		return "response"
	}
	b = bytes.TrimLeft(b[i+len(`"method"`):], " \t\r\n")
	if len(b) == 0 || b[0] != ':' {
		return "other"
	}
	b = bytes.TrimLeft(b[1:], " \t\r\n")
	if len(b) == 0 || b[0] != '"' {
		return "other"
	}
	end := bytes.IndexByte(b[1:], '"')
	if end < 0 {
		return "other"
	}
	m := b[1 : 1+end]
	if bytes.HasPrefix(m, []byte("notifications/")) {
		return "notification"
	}
	switch string(m) {
	case "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/read",
		"resources/templates/list", "resources/subscribe", "resources/unsubscribe", "prompts/list",
		"prompts/get", "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen":
		return string(m) // the compiler interns these: no allocation
	}
	return "other"
}

// observedRefusal tells the observer of a refusal: the agent and server
// the client named count only if they are known, so a client cannot make
// up label values.
func (h *Handler) observedRefusal(agent, server, method string, ref *refusal) {
	if !h.auth.Load().known[agent] {
		agent, server = "", ""
	} else if _, offered := h.agents.Offers(agent, server); !offered {
		server = ""
	}
	h.obs.Exchange(agent, server, method, ref.status, ref.reason, 0)
}

// observedExchange is one forwarded exchange being observed.
type observedExchange struct {
	h             *Handler
	agent, server string
	method        string
	start         time.Time
	status        int
	reason        string
	// vouch is the server a client named for an exchange sent to a peer
	// relay: this relay does not know what the agent offers, so the
	// label is "" unless the peer's answer says it routed the exchange
	// (X-Mcptun-Via, set only once the agent was found to offer the
	// server); else a client could make up label values.
	vouch string
	// opened: StreamOpened was called (a peer's GET stream counts once
	// its answer's label is known).
	opened bool
}

func (h *Handler) observe(agent, server, method string, peer bool) *observedExchange {
	o := new(observedExchange)
	h.observeInto(o, agent, server, method, peer)
	return o
}

// observeInto starts observing into o (memory the exchange has anyway);
// peer says the exchange goes to a peer relay.
func (h *Handler) observeInto(o *observedExchange, agent, server, method string, peer bool) {
	*o = observedExchange{h: h, agent: agent, server: server, method: method, start: time.Now()}
	if peer {
		o.server, o.vouch = "", server
		return
	}
	if method == "stream" {
		h.obs.StreamOpened(agent, server)
		o.opened = true
	}
}

// answered learns, from the head of the answer, whether a peer relay
// vouched for the server (via: the answer names the relay that routed
// it).
func (o *observedExchange) answered(via bool) {
	if o.vouch == "" {
		return
	}
	if via {
		o.server = o.vouch
	}
	o.vouch = ""
	if o.method == "stream" {
		o.h.obs.StreamOpened(o.agent, o.server)
		o.opened = true
	}
}

// onHead learns the status, and the method from the body held whole (the
// fast path reads a small body before the upstream answers).
func (o *observedExchange) onHead(req *httpfwd.RawRequest, code int, head *httpfwd.Head) {
	o.status = code
	if o.method == "" {
		o.method = mcpMethod(http.MethodPost, req.Body)
	}
	if o.vouch != "" {
		_, via := head.Get(ViaHeader)
		o.answered(via)
	}
}

func (o *observedExchange) done() {
	if o.method == "" {
		o.method = "unknown"
	}
	if o.opened {
		o.h.obs.StreamClosed(o.agent, o.server)
	}
	o.h.obs.Exchange(o.agent, o.server, o.method, o.status, o.reason, time.Since(o.start))
}

// observeWriter learns the status and reason of an exchange on net/http's
// path.
type observeWriter struct {
	http.ResponseWriter
	o *observedExchange
}

func (w *observeWriter) WriteHeader(code int) {
	if w.o.status == 0 {
		w.o.status = code
	}
	if code >= 200 && w.o.vouch != "" {
		w.o.answered(w.Header().Get(ViaHeader) != "")
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *observeWriter) Write(p []byte) (int, error) {
	if w.o.status == 0 {
		w.o.status = http.StatusOK
	}
	if w.o.vouch != "" {
		w.o.answered(w.Header().Get(ViaHeader) != "")
	}
	return w.ResponseWriter.Write(p)
}

func (w *observeWriter) Flush() { _ = http.NewResponseController(w.ResponseWriter).Flush() }

// Unwrap lets http.ResponseController reach the server's writer.
func (w *observeWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// noteReason tells an observeWriter under w (if any) the reason code of
// the answer the relay makes.
func noteReason(w http.ResponseWriter, reason string) {
	for w != nil {
		if ow, ok := w.(*observeWriter); ok {
			ow.o.reason = reason
			return
		}
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			return
		}
		w = u.Unwrap()
	}
}
