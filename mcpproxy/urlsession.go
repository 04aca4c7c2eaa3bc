package mcpproxy

import (
	"bytes"
	"context"
	"net/http"
	"sync"
	"time"

	"github.com/mcptun/mcptun/internal/httpfwd"
)

// A url: server's sessions belong to the client that created them, as the
// stdio bridge's do: the agent learns a session's id from the upstream's
// answer to initialize (its Mcp-Session-Id header) and binds it to the
// identity in X-Mcptun-Client (the one the relay verified). A request of
// another client naming that session — POST, GET (a resumption with
// Last-Event-ID too) or DELETE — gets 404 as for a session that does not
// exist, and the upstream never sees it.
//
// A session id the agent has not seen (the agent restarted, or the entry
// was evicted) is passed on: the upstream answers 404 itself if it does
// not know it either, and if it does, the first client to use it
// successfully owns it from then on. So an agent restart does not end the
// upstream's sessions; what it costs is that, for a session's first use
// after it, the id alone is the credential (it is that today for every
// MCP server: the spec asks for ids that cannot be guessed).
//
// The table is bounded: an entry goes on DELETE, on the upstream's 404
// for its id, after urlSessionIdle without a request, and, with
// urlSessionsMax entries, the least recently used goes for a new one.

const (
	urlSessionsMax = 16384
	urlSessionIdle = time.Hour
	urlSweepEvery  = 256 // binds between sweeps for idle entries
)

type urlSessions struct {
	mu    sync.Mutex
	m     map[string]*urlSession
	max   int
	idle  time.Duration
	binds int
}

type urlSession struct {
	client string
	used   time.Time
}

func newURLSessions() *urlSessions {
	return &urlSessions{m: make(map[string]*urlSession), max: urlSessionsMax, idle: urlSessionIdle}
}

// sessionState is what the table says of a session and a client.
type sessionState uint8

const (
	sessionUnknown sessionState = iota
	sessionMine
	sessionForeign
)

// lookup says whether sid is client's, another client's (then also
// whose), or unknown here; a session of client's is marked used.
func (t *urlSessions) lookup(sid, client []byte, now time.Time) (sessionState, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.m[string(sid)]
	switch {
	case e == nil:
		return sessionUnknown, ""
	case e.client != string(client):
		return sessionForeign, e.client
	}
	e.used = now
	return sessionMine, ""
}

// bind makes sid client's, unless it is someone's already.
func (t *urlSessions) bind(sid, client string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.m[sid] != nil {
		return
	}
	t.binds++
	if len(t.m) >= t.max || t.binds%urlSweepEvery == 0 {
		t.sweepLocked(now)
	}
	if len(t.m) >= t.max {
		var oldest string
		var at time.Time
		for k, e := range t.m {
			if oldest == "" || e.used.Before(at) {
				oldest, at = k, e.used
			}
		}
		delete(t.m, oldest)
	}
	t.m[sid] = &urlSession{client: client, used: now}
}

func (t *urlSessions) sweepLocked(now time.Time) {
	for k, e := range t.m {
		if now.Sub(e.used) >= t.idle {
			delete(t.m, k)
		}
	}
}

func (t *urlSessions) forget(sid []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, string(sid))
}

func (t *urlSessions) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

// sessionOf returns a request head's Mcp-Session-Id and X-Mcptun-Client
// values; n counts the Mcp-Session-Id lines (more than one is refused:
// the check and the upstream could read different ones).
func sessionOf(head *httpfwd.Head) (sid, client []byte, n int) {
	for _, f := range head.Fields {
		switch name := head.Name(f); {
		case httpfwd.EqualFold(name, headerSession):
			if n == 0 {
				sid = head.Value(f)
			}
			n++
		case httpfwd.EqualFold(name, ClientHeader):
			if client == nil {
				client = head.Value(f)
			}
		}
	}
	return sid, client, n
}

// headerIn returns the value of the first header line named name in a
// request head in wire form (RawRequest.Head).
func headerIn(head []byte, name string) []byte {
	for len(head) > 0 {
		line, rest, _ := bytes.Cut(head, []byte("\r\n"))
		head = rest
		k, v, ok := bytes.Cut(line, []byte(":"))
		if ok && httpfwd.EqualFold(k, name) {
			return bytes.TrimSpace(v)
		}
	}
	return nil
}

// sessionAnswer is told of the upstream's answer to a request naming a
// session (RawRequest.OnHead): the session is forgotten on 404 and when a
// DELETE of it succeeded. Made once per server: the usual exchange in a
// session allocates nothing for it.
func (p *httpServer) sessionAnswer(req *httpfwd.RawRequest, code int, _ *httpfwd.Head) {
	if code == http.StatusNotFound || code/100 == 2 && bytes.HasPrefix(req.Head, []byte("DELETE ")) {
		p.sessions.forget(headerIn(req.Head, headerSession))
	}
}

// bindOnAnswer returns the OnHead of a request that may start a session
// (a POST without one: initialize) or that names one the agent does not
// know: a successful answer binds the session it names (its
// Mcp-Session-Id, else the request's) to client.
func (p *httpServer) bindOnAnswer(client string) func(*httpfwd.RawRequest, int, *httpfwd.Head) {
	return func(req *httpfwd.RawRequest, code int, h *httpfwd.Head) {
		if code/100 != 2 {
			p.sessionAnswer(req, code, h)
			return
		}
		if bytes.HasPrefix(req.Head, []byte("DELETE ")) {
			return
		}
		sid, ok := h.Get(headerSession)
		if !ok {
			sid = headerIn(req.Head, headerSession)
		}
		if len(sid) > 0 {
			p.sessions.bind(string(sid), client, time.Now())
		}
	}
}

// foreignSession answers a request naming a session of another client,
// as if it did not exist.
func (p *httpServer) foreignSession(w http.ResponseWriter, client, owner string) {
	p.log.Warn("request for another client's session; answered 404", "client", client, "owner", owner)
	notFound(w, nil)
}

// sessionWriter is bindOnAnswer and sessionAnswer for the net/http path:
// it sees the answer's head as Forward writes it.
type sessionWriter struct {
	http.ResponseWriter
	p       *httpServer
	client  string
	sid     string
	method  string
	unknown bool // sid was not in the table
}

func (w *sessionWriter) WriteHeader(code int) {
	switch {
	case code == http.StatusNotFound || code/100 == 2 && w.method == http.MethodDelete:
		if w.sid != "" {
			w.p.sessions.forget([]byte(w.sid))
		}
	case code/100 == 2 && w.method != http.MethodDelete && (w.sid == "" || w.unknown):
		sid := w.Header().Get(headerSession)
		if sid == "" {
			sid = w.sid
		}
		if sid != "" {
			w.p.sessions.bind(sid, w.client, time.Now())
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// checkSession applies session ownership to an exchange on the fast path:
// it returns the exchange that refuses it, or nil and sets req.OnHead to
// keep the table up to date. handOff says the fast path cannot answer the
// refusal (a body it does not read whole): net/http's path refuses it.
func (p *httpServer) checkSession(head *httpfwd.Head, method string, req *httpfwd.RawRequest) (refusal *httpfwd.Exchange, handOff bool) {
	sid, client, n := sessionOf(head)
	if n == 0 && method != http.MethodPost {
		return nil, false
	}
	if n > 0 && head.ContentLength > httpfwd.MaxHeldBody {
		if n > 1 {
			return nil, true
		}
		if state, _ := p.sessions.lookup(sid, client, time.Now()); state == sessionForeign {
			return nil, true
		}
	}
	switch {
	case n > 1:
		return &httpfwd.Exchange{Serve: func(_ context.Context, w http.ResponseWriter, _ *httpfwd.Head, _ []byte) {
			writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: more than one Mcp-Session-Id header")
		}}, false
	case n == 1:
		switch state, owner := p.sessions.lookup(sid, client, time.Now()); state {
		case sessionForeign:
			c := string(client)
			return &httpfwd.Exchange{Serve: func(_ context.Context, w http.ResponseWriter, _ *httpfwd.Head, _ []byte) {
				p.foreignSession(w, c, owner)
			}}, false
		case sessionUnknown:
			req.OnHead = p.bindOnAnswer(string(client))
		default:
			req.OnHead = p.onSessionAnswer
		}
	case method == http.MethodPost && !stateless(head):
		req.OnHead = p.bindOnAnswer(string(client))
	}
	return nil, false
}

// stateless reports a request of the 2026-07-28 era, which has no sessions.
func stateless(head *httpfwd.Head) bool {
	v, _ := head.Get(headerVersion)
	return string(v) == statelessVersion
}
