//go:build unix

package mcpproxy

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcptun/mcptun/internal/ratelimit"
)

const (
	headerLastID   = "Last-Event-Id"
	sseRetryMillis = 2000
)

// supportedVersions are the protocol revisions whose Streamable HTTP
// transport the stdio bridge speaks (2024-11-05 clients sending the header
// are let through: the child decides).
var supportedVersions = []string{statelessVersion, "2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"}

// stdioServer serves one Command server: a session (and a child) per
// initialize.
type stdioServer struct {
	h   *Handler
	cfg ServerConfig
	log *slog.Logger
	lim Limits // with defaults
	// limit is the server's rate limit (nil: none).
	limit *ratelimit.Limiter
	// policy is the server's Policy (nil: none).
	policy *policy

	mu       sync.Mutex
	closed   bool
	sessions map[string]*session   // reachable by id: initialize answered
	live     map[*session]struct{} // every session with a child
	starting int                   // children being started
	shared   *session              // the stateless era's child, if running
	// perClient counts each owner's sessions, those starting included.
	perClient map[string]int

	sharedMu sync.Mutex // one shared child starts at a time

	callMu      sync.Mutex // a leaf lock: taken under session locks
	calls       int        // requests in flight to the children
	clientCalls map[string]int

	// peakBuffered is the largest replay buffer (bytes) a session of the
	// server has had: what the bound promises, observable.
	peakBuffered atomic.Int64

	stats serverStats // see stats.go
}

// noteBuffered records a session's replay buffer size.
func (srv *stdioServer) noteBuffered(n int) {
	for {
		old := srv.peakBuffered.Load()
		if int64(n) <= old || srv.peakBuffered.CompareAndSwap(old, int64(n)) {
			return
		}
	}
}

func stdioSupported() error { return nil }

func newStdioServer(h *Handler, sc ServerConfig) *stdioServer {
	return &stdioServer{
		h:           h,
		cfg:         sc,
		log:         h.log.With("server", sc.Name),
		lim:         sc.Limits.withDefaults(h.opts.MaxSessions),
		sessions:    make(map[string]*session),
		live:        make(map[*session]struct{}),
		perClient:   make(map[string]int),
		clientCalls: make(map[string]int),
		policy:      newPolicy(sc.Name, sc.Policy, h.pins, h.log),
	}
}

var errClosing = errors.New("shutting down")

// startSession starts a child for a new session of owner, or the shared
// child of the stateless era.
func (srv *stdioServer) startSession(shared bool, owner string) (*session, error) {
	if err := srv.reserve(shared, owner); err != nil {
		return nil, err
	}
	unreserve := func() {
		srv.mu.Lock()
		srv.starting--
		srv.releaseLocked(shared, owner)
		srv.mu.Unlock()
	}
	if !srv.h.acquire() {
		unreserve()
		return nil, errClosing
	}
	proc, err := startProcess(srv.cfg)
	if err != nil {
		srv.h.wg.Done()
		unreserve()
		return nil, err
	}
	s := newSession(srv, proc, owner)
	s.shared = shared
	srv.mu.Lock()
	srv.starting--
	srv.live[s] = struct{}{}
	closed := srv.closed
	srv.mu.Unlock()
	go s.run()
	s.log.Info("session started", "pid", proc.pgid)
	if closed { // Close ran while the child started
		s.end(errShutdown)
		return nil, errClosing
	}
	return s, nil
}

// sharedSession returns the child serving stateless requests, starting one
// if none runs.
func (srv *stdioServer) sharedSession() (*session, error) {
	srv.sharedMu.Lock()
	defer srv.sharedMu.Unlock()
	srv.mu.Lock()
	s := srv.shared
	srv.mu.Unlock()
	if s != nil {
		return s, nil
	}
	s, err := srv.startSession(true, "")
	if err != nil {
		return nil, err
	}
	srv.mu.Lock()
	if _, ok := srv.live[s]; ok {
		srv.shared = s
	}
	srv.mu.Unlock()
	return s, nil
}

func (srv *stdioServer) remove(s *session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.shared == s {
		srv.shared = nil
	}
	if _, ok := srv.live[s]; ok {
		delete(srv.live, s)
		srv.releaseLocked(s.shared, s.owner)
	}
	if srv.sessions[s.id] == s {
		delete(srv.sessions, s.id)
	}
}

// register makes s reachable by its id.
func (srv *stdioServer) register(s *session) {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if _, ok := srv.live[s]; ok {
		srv.sessions[s.id] = s
	}
}

// lookup returns the session with id if client owns it. A session of
// another client is not found, exactly as one that never existed: a
// session id that leaked (a log, a shared proxy) gives no one else its
// results, its stream or the power to end it.
func (srv *stdioServer) lookup(id, client string) *session {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if s := srv.sessions[id]; s != nil && s.owner == client {
		return s
	}
	return nil
}

func (srv *stdioServer) closeAll() {
	srv.mu.Lock()
	srv.closed = true
	all := make([]*session, 0, len(srv.live))
	for s := range srv.live {
		all = append(all, s)
	}
	srv.mu.Unlock()
	for _, s := range all {
		s.end(errShutdown)
	}
}

// ServeHTTP serves the server's MCP endpoint (Streamable HTTP).
func (srv *stdioServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if why := srv.h.guard.check(r); why != "" {
		srv.log.Warn("refused request", "reason", why)
		writeError(w, http.StatusForbidden, nil, codeInvalidRequest, "mcpproxy: "+why)
		return
	}
	switch r.Method {
	case http.MethodPost:
		srv.post(w, r)
	case http.MethodGet:
		srv.get(w, r)
	case http.MethodDelete:
		srv.delete(w, r)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		writeError(w, http.StatusMethodNotAllowed, nil, codeInvalidRequest,
			fmt.Sprintf("mcpproxy: method %s not allowed: use POST, GET or DELETE", r.Method))
	}
}

// admit takes the exchange from the server's rate limit, called where the
// bridge has found nothing to refuse it for and is about to hand it to a
// child: an exchange refused for any other reason (Origin, version,
// headers, body, unknown session) takes nothing from the allowance. False
// means it answered 429.
func (srv *stdioServer) admit(w http.ResponseWriter) bool {
	wait, ok := srv.limit.Take()
	if !ok {
		srv.h.refuseOverLimit(w, srv.cfg.Name, srv.limit, wait)
	}
	return ok
}

func checkVersion(w http.ResponseWriter, r *http.Request) bool {
	v := r.Header.Get(headerVersion)
	if v == "" || slices.Contains(supportedVersions, v) {
		return true
	}
	writeErrorData(w, http.StatusBadRequest, nil, codeUnsupportedVersion,
		fmt.Sprintf("mcpproxy: unsupported %s %q", headerVersion, v),
		map[string]any{"supported": supportedVersions, "requested": v})
	return false
}

func (srv *stdioServer) post(w http.ResponseWriter, r *http.Request) {
	if !acceptsAny(r, "application/json", "text/event-stream") {
		writeError(w, http.StatusNotAcceptable, nil, codeInvalidRequest,
			"mcpproxy: Accept must allow application/json and text/event-stream")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := parseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, nil, codeInvalidRequest,
				fmt.Sprintf("mcpproxy: Content-Type %q: want application/json", ct))
			return
		}
	}
	if !checkVersion(w, r) {
		return
	}
	max := srv.h.opts.MaxMessageBytes
	if r.ContentLength > max {
		// Declared too large: refused before a byte is read, not after
		// max of them (the connection closes: the rest is never read).
		w.Header().Set("Connection", "close")
		writeError(w, http.StatusRequestEntityTooLarge, nil, codeInvalidRequest,
			fmt.Sprintf("mcpproxy: message of %d bytes is larger than the limit of %d bytes", r.ContentLength, max))
		return
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 && r.ContentLength <= max {
		buf.Grow(int(r.ContentLength) + bytes.MinRead)
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, max))
	body := buf.Bytes()
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, nil, codeInvalidRequest,
				fmt.Sprintf("mcpproxy: message larger than the limit of %d bytes", max))
			return
		}
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: reading request body: "+err.Error())
		return
	}
	m, err := Peek(body)
	if err != nil {
		writePeekError(w, err)
		return
	}
	// The child reads one message per line; in valid JSON a newline is
	// whitespace, so this changes no value (and no offset Peek found).
	for _, nl := range []byte{'\n', '\r'} {
		for i := bytes.IndexByte(body, nl); i >= 0; {
			body[i] = ' '
			j := bytes.IndexByte(body[i+1:], nl)
			if j < 0 {
				break
			}
			i += 1 + j
		}
	}
	sid := r.Header.Get(headerSession)
	stateless := r.Header.Get(headerVersion) == statelessVersion || (sid == "" && m.Method == "server/discover")
	lf, refused := srv.applyPolicy(w, r, &m, body, stateless)
	if refused {
		return
	}
	if stateless {
		srv.postStateless(w, r, &m, body, lf)
		return
	}
	if sid == "" {
		if m.Kind == KindRequest && m.Method == "initialize" {
			if !srv.admit(w) {
				return
			}
			srv.initialize(w, r, &m, body)
			return
		}
		writeError(w, http.StatusBadRequest, requestID(&m), codeInvalidRequest,
			"mcpproxy: missing Mcp-Session-Id header: send initialize first")
		return
	}
	s := srv.lookup(sid, clientOf(r))
	if s == nil || !s.enter() {
		notFound(w, requestID(&m))
		return
	}
	defer s.leave()
	if !srv.admit(w) {
		return
	}
	if m.Kind == KindRequest {
		srv.serveCall(w, r, s, &m, body, false, lf)
		return
	}
	line, err := s.clientLine(&m, body)
	if err != nil {
		notFound(w, nil)
		return
	}
	if err := s.writeLine(line); err != nil {
		writeError(w, http.StatusBadGateway, nil, codeServerGone, err.Error())
		return
	}
	w.WriteHeader(http.StatusAccepted)
}

func (srv *stdioServer) initialize(w http.ResponseWriter, r *http.Request, m *Message, body []byte) {
	s, err := srv.startSession(false, clientOf(r))
	if err != nil {
		srv.startError(w, m.ID, err)
		return
	}
	s.enter()
	defer s.leave()
	if !srv.serveCall(w, r, s, m, body, true, nil) {
		// Nobody holds the session id: the child would only wait for the
		// idle timeout.
		s.end(errInitFail)
	}
}

// startError answers a request for which no child could be had.
func (srv *stdioServer) startError(w http.ResponseWriter, id []byte, err error) {
	if le, ok := asLimit(err); ok {
		srv.refused(le)
		writeLimit(w, id, le)
		return
	}
	switch {
	case errors.Is(err, errClosing):
		writeError(w, http.StatusServiceUnavailable, id, codeInternal, "mcpproxy: shutting down")
	default:
		srv.log.Error("cannot start server process", "err", err)
		srv.stats.failed("cannot start the server process: " + err.Error())
		writeError(w, http.StatusBadGateway, id, codeServerGone,
			fmt.Sprintf("mcpproxy: cannot start the process of server %q (see the agent's log)", srv.cfg.Name))
	}
}

// serveCall forwards request m and answers with the child's response:
// plain JSON if that is the first message for it, else an SSE stream of
// everything for it up to the response. For initialize it reports whether
// the session id went to the client.
func (srv *stdioServer) serveCall(w http.ResponseWriter, r *http.Request, s *session, m *Message, body []byte, init bool, lf *listFilter) (handedOut bool) {
	c, line, err := s.startCallFiltered(m, body, clientOf(r), lf)
	le, limited := asLimit(err)
	switch {
	case limited:
		srv.refused(le)
		writeLimit(w, m.ID, le)
		return false
	case errors.Is(err, errDuplicateID):
		writeError(w, http.StatusBadRequest, m.ID, codeInvalidRequest, "mcpproxy: "+err.Error())
		return false
	case err != nil:
		notFound(w, m.ID)
		return false
	}
	st := c.stream
	defer s.detach(st)
	if err := s.writeLine(line); err != nil {
		s.failCall(c, http.StatusBadGateway, codeServerGone, err.Error())
	}
	first := s.waitFirst(r.Context(), st)
	if first == nil {
		// The client went away. That is no cancellation: the answer will
		// wait in the replay buffer.
		return false
	}
	if init && !(first.response && first.isError) {
		srv.register(s)
		w.Header().Set(headerSession, s.id)
		handedOut = true
	}
	// A response that is the first message for the request goes as plain
	// JSON, unless the client prefers SSE; an error of ours with its own
	// HTTP status always does.
	if first.response && (first.status != 0 || !prefersSSE(r)) {
		w.Header().Set("Content-Type", "application/json")
		status := http.StatusOK
		if first.status != 0 {
			status = first.status
		}
		w.WriteHeader(status)
		if _, err := w.Write(first.data); err == nil {
			s.discard(first)
		}
		return handedOut
	}
	sw := srv.startSSE(w, r, st, st.primed)
	defer sw.finish()
	if last := s.pump(r.Context(), sw, st, st.primed); init && last != nil && last.response && last.isError {
		return false
	}
	return handedOut
}

// postStateless serves a POST of the 2026-07-28 era: no session, the
// server's shared child, and the request headers checked against the body
// as the child cannot see them.
func (srv *stdioServer) postStateless(w http.ResponseWriter, r *http.Request, m *Message, body []byte, lf *listFilter) {
	id := requestID(m)
	if r.Header.Get(headerLastID) != "" {
		writeError(w, http.StatusBadRequest, id, codeHeaderMismatch,
			"mcpproxy: Last-Event-ID is not supported in protocol version "+statelessVersion+": streams are not resumable")
		return
	}
	if m.Kind == KindRequest || m.Kind == KindNotification {
		switch hm := r.Header.Get("Mcp-Method"); {
		case hm == "" && m.Kind == KindRequest:
			writeError(w, http.StatusBadRequest, id, codeHeaderMismatch, "mcpproxy: Mcp-Method header is required")
			return
		case hm != "" && hm != m.Method:
			writeError(w, http.StatusBadRequest, id, codeHeaderMismatch,
				fmt.Sprintf("mcpproxy: Mcp-Method header %q does not match the body's method %q", hm, m.Method))
			return
		}
	}
	if m.Method == "tools/call" {
		name, ok := decodeHeaderValue(r.Header.Get("Mcp-Name"))
		if !ok {
			writeError(w, http.StatusBadRequest, id, codeHeaderMismatch,
				fmt.Sprintf("mcpproxy: Mcp-Name header %q: invalid base64", r.Header.Get("Mcp-Name")))
			return
		}
		if name != m.ToolName {
			writeError(w, http.StatusBadRequest, id, codeHeaderMismatch,
				fmt.Sprintf("mcpproxy: Mcp-Name header %q does not match the tool name %q", name, m.ToolName))
			return
		}
	}
	if !srv.admit(w) {
		return
	}
	var s *session
	for range 2 { // the shared child may end between lookup and enter
		var err error
		if s, err = srv.sharedSession(); err != nil {
			srv.startError(w, id, err)
			return
		}
		if s.enter() {
			break
		}
		s = nil
	}
	if s == nil {
		writeError(w, http.StatusServiceUnavailable, id, codeInternal, "mcpproxy: the server process is restarting")
		return
	}
	defer s.leave()
	if m.Kind != KindRequest {
		line, err := s.clientLine(m, body)
		if err == nil {
			err = s.writeLine(line)
		}
		if err != nil {
			writeError(w, http.StatusBadGateway, nil, codeServerGone, "mcpproxy: "+err.Error())
			return
		}
		w.WriteHeader(http.StatusAccepted)
		return
	}
	c, line, err := s.startCallFiltered(m, body, clientOf(r), lf)
	if le, ok := asLimit(err); ok {
		srv.refused(le)
		writeLimit(w, id, le)
		return
	}
	if err != nil {
		writeError(w, http.StatusBadGateway, id, codeServerGone, "mcpproxy: "+err.Error())
		return
	}
	st := c.stream
	defer s.detach(st)
	// Closing the stream before the response cancels the request.
	defer s.cancel(c, "the client closed the request's stream")
	if err := s.writeLine(line); err != nil {
		s.failCall(c, http.StatusBadGateway, codeServerGone, err.Error())
	}
	first := s.waitFirst(r.Context(), st)
	if first == nil {
		return
	}
	if first.response {
		status := http.StatusOK
		switch {
		case first.status != 0:
			status = first.status
		case first.isError:
			status = statelessErrorStatus(first.code)
		}
		// As in serveCall; an error whose HTTP status the era fixes is
		// always plain JSON, to carry that status.
		if status != http.StatusOK || !prefersSSE(r) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write(first.data)
			return
		}
	}
	sw := srv.startSSE(w, r, st, st.primed)
	defer sw.finish()
	s.pump(r.Context(), sw, st, st.primed)
}

// rejectStateless answers a GET or DELETE of the stateless era, which has
// neither.
func rejectStateless(w http.ResponseWriter, r *http.Request) bool {
	if r.Header.Get(headerVersion) != statelessVersion {
		return false
	}
	w.Header().Set("Allow", "POST")
	writeError(w, http.StatusMethodNotAllowed, nil, codeInvalidRequest,
		fmt.Sprintf("mcpproxy: protocol version %s has no %s on the MCP endpoint", statelessVersion, r.Method))
	return true
}

func (srv *stdioServer) get(w http.ResponseWriter, r *http.Request) {
	if rejectStateless(w, r) {
		return
	}
	if !acceptsAny(r, "text/event-stream") {
		writeError(w, http.StatusNotAcceptable, nil, codeInvalidRequest, "mcpproxy: GET needs Accept: text/event-stream")
		return
	}
	if !checkVersion(w, r) {
		return
	}
	sid := r.Header.Get(headerSession)
	if sid == "" {
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: missing Mcp-Session-Id header")
		return
	}
	s := srv.lookup(sid, clientOf(r))
	if s == nil || !s.enter() {
		notFound(w, nil)
		return
	}
	defer s.leave()
	st, cursor, err := s.resumePoint(r.Header.Get(headerLastID))
	if err != nil {
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: "+err.Error())
		return
	}
	if !srv.admit(w) {
		return
	}
	if !s.attach(st) {
		writeError(w, http.StatusConflict, nil, codeInvalidRequest,
			fmt.Sprintf("mcpproxy: stream %d of this session already has a connected client", st.num))
		return
	}
	defer s.detach(st)
	sw := srv.startSSE(w, r, st, cursor)
	defer sw.finish()
	s.pump(r.Context(), sw, st, cursor)
}

func (srv *stdioServer) delete(w http.ResponseWriter, r *http.Request) {
	if rejectStateless(w, r) {
		return
	}
	sid := r.Header.Get(headerSession)
	if sid == "" {
		writeError(w, http.StatusBadRequest, nil, codeInvalidRequest, "mcpproxy: missing Mcp-Session-Id header")
		return
	}
	s := srv.lookup(sid, clientOf(r))
	if s == nil {
		notFound(w, nil)
		return
	}
	if !srv.admit(w) {
		return
	}
	s.end(errDeleted)
	w.WriteHeader(http.StatusNoContent)
}

// sseWriter writes one SSE stream.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration // Options.WriteTimeout
}

// startSSE sends the stream's headers, the reconnection delay and (for
// clients of 2025-11-25 or later, which expect it) a priming event whose id
// lets the client resume from the stream's start.
func (srv *stdioServer) startSSE(w http.ResponseWriter, r *http.Request, st *stream, cursor uint64) *sseWriter {
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: http.NewResponseController(w), timeout: srv.h.opts.WriteTimeout}
	head := "retry: " + strconv.Itoa(sseRetryMillis) + "\n"
	if v := r.Header.Get(headerVersion); v >= "2025-11-25" && v < statelessVersion {
		head += "id: " + strconv.FormatInt(st.num, 10) + "." + strconv.FormatUint(cursor, 10) + "\ndata: \n"
	}
	_ = sw.write([]byte(head + "\n"))
	return sw
}

func (sw *sseWriter) write(parts ...[]byte) error {
	_ = sw.rc.SetWriteDeadline(time.Now().Add(sw.timeout))
	for _, p := range parts {
		if _, err := sw.w.Write(p); err != nil {
			return err
		}
	}
	return sw.rc.Flush()
}

func (sw *sseWriter) event(ev *event) error {
	return sw.write([]byte("id: "+ev.id()+"\nevent: message\ndata: "), ev.data, []byte("\n\n"))
}

func (sw *sseWriter) comment(text string) error {
	return sw.write([]byte(": " + text + "\n\n"))
}

// finish lifts the write deadline so the server can finish the response.
func (sw *sseWriter) finish() {
	_ = sw.rc.SetWriteDeadline(time.Time{})
}
