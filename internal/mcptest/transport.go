package mcptest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// Why the fixture has its own Streamable HTTP transport for the session-based
// protocol era (2025-03-26 to 2025-11-25):
//
// mcp-go v1.2.1's StreamableHTTPServer gives a POST and the session's GET
// stream one shared notification channel, read by both. A progress or log
// notification sent by a tool lands on either stream at random, and the suite
// then misses it (tools-call-with-logging and tools-call-with-progress fail
// about half the time; mcp-go's own conformance baseline lists both). And it
// sends sampling/createMessage only on the GET stream. A fixture that the
// tunnel is compared against must be deterministic, so this transport routes
// every message a request causes (notifications, sampling, elicitation,
// roots) onto that request's own POST stream, in the order the handler sent
// them, ahead of the response. Only messages not caused by a request
// (broadcasts) go to the GET stream. Everything else is mcp-go's MCPServer.
//
// Requests of the stateless era (2026-07-28) go to mcp-go's own handler,
// which has no GET stream and so no such race.

// maxQueued bounds the messages waiting for one stream. mcp-go drops a
// notification (with ErrNotificationChannelBlocked) when its channel is full.
const maxQueued = 256

// supportedLegacyVersions are the MCP-Protocol-Version values this transport
// accepts; the header is optional and means 2025-03-26 when absent.
var supportedLegacyVersions = []string{
	mcp.ProtocolVersion20251125, mcp.ProtocolVersion20250618, mcp.ProtocolVersion20250326,
}

type streamable struct {
	srv    *server.MCPServer
	modern http.Handler
	logger *slog.Logger

	nextID atomic.Int64 // IDs of server-to-client requests

	mu       sync.Mutex
	sessions map[string]*session
}

func newStreamable(s *server.MCPServer, logger *slog.Logger) *streamable {
	return &streamable{
		srv: s,
		modern: server.NewStreamableHTTPServer(s,
			server.WithDisableLocalhostProtection(true), // the guard in front checks Host and Origin
			server.WithStreamableHTTPLogger(logger)),
		logger:   logger,
		sessions: make(map[string]*session),
	}
}

func (t *streamable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := r.Context().Value(rawMessageKey{}).([]byte)
	if isModern(r.Header, body) {
		t.modern.ServeHTTP(w, r)
		return
	}
	if v := r.Header.Get(mcp.HeaderProtocolVersion); v != "" && !slices.Contains(supportedLegacyVersions, v) {
		writeJSONRPCError(w, http.StatusBadRequest, fmt.Sprintf("unsupported %s %q", mcp.HeaderProtocolVersion, v))
		return
	}
	switch r.Method {
	case http.MethodPost:
		t.post(w, r, body)
	case http.MethodGet:
		t.get(w, r)
	case http.MethodDelete:
		t.delete(w, r)
	default:
		w.Header().Set("Allow", "GET, POST, DELETE")
		writeJSONRPCError(w, http.StatusMethodNotAllowed, "method "+r.Method+" not allowed")
	}
}

// isModern reports whether a request speaks the stateless 2026-07-28 era,
// by its header or by the version in params._meta, as mcp-go decides.
func isModern(h http.Header, body []byte) bool {
	if mcp.IsModernProtocol(h.Get(mcp.HeaderProtocolVersion)) {
		return true
	}
	var m struct {
		Params struct {
			Meta *mcp.Meta `json:"_meta"`
		} `json:"params"`
	}
	return len(body) > 0 && json.Unmarshal(body, &m) == nil && mcp.IsModernProtocol(m.Params.Meta.ProtocolVersion())
}

// lookup returns the session a request names, or writes the error the spec
// asks for: 400 without a session ID, 404 for an unknown or ended one.
func (t *streamable) lookup(w http.ResponseWriter, r *http.Request) *session {
	id := r.Header.Get(server.HeaderKeySessionID)
	if id == "" {
		writeJSONRPCError(w, http.StatusBadRequest, "missing "+server.HeaderKeySessionID+" header")
		return nil
	}
	t.mu.Lock()
	s := t.sessions[id]
	t.mu.Unlock()
	if s == nil {
		writeJSONRPCError(w, http.StatusNotFound, "unknown or ended session")
		return nil
	}
	return s
}

type incoming struct {
	ID     json.RawMessage `json:"id"`
	Method string          `json:"method"`
	Result json.RawMessage `json:"result"`
	Error  json.RawMessage `json:"error"`
}

func (t *streamable) post(w http.ResponseWriter, r *http.Request, body []byte) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(strings.ToLower(strings.TrimSpace(ct)), "application/json") {
		writeJSONRPCError(w, http.StatusUnsupportedMediaType, "Content-Type must be application/json")
		return
	}
	var msg incoming
	if err := json.Unmarshal(body, &msg); err != nil {
		writeJSONRPCError(w, http.StatusBadRequest, "body is not one JSON-RPC message: "+err.Error())
		return
	}
	if msg.Method == string(mcp.MethodInitialize) {
		t.initialize(w, r, body)
		return
	}
	s := t.lookup(w, r)
	if s == nil {
		return
	}
	switch {
	case msg.Method == "" && len(msg.ID) > 0:
		s.deliverResponse(msg)
		w.WriteHeader(http.StatusAccepted)
	case len(msg.ID) == 0 || bytes.Equal(msg.ID, []byte("null")):
		if resp := t.srv.HandleMessage(t.srv.WithContext(r.Context(), s), body); resp != nil {
			t.logger.Warn("mcptest: notification produced a response", "method", msg.Method)
		}
		w.WriteHeader(http.StatusAccepted)
	default:
		t.serveRequest(w, r, s, body)
	}
}

func (t *streamable) initialize(w http.ResponseWriter, r *http.Request, body []byte) {
	s := t.newSession()
	rs := s.forRequest()
	resp := t.srv.HandleMessage(t.srv.WithContext(r.Context(), rs), body)
	if _, failed := resp.(mcp.JSONRPCError); !failed && resp != nil {
		t.mu.Lock()
		t.sessions[s.id] = s
		t.mu.Unlock()
		if err := t.srv.RegisterSession(r.Context(), s); err != nil {
			t.logger.Error("mcptest: register session", "session", s.id, "err", err)
		}
		w.Header().Set(server.HeaderKeySessionID, s.id)
	}
	out := newStreamWriter(w)
	out.sse = prefersSSE(r)
	for len(rs.notifications) > 0 {
		out.event(<-rs.notifications)
	}
	out.final(resp)
}

func (t *streamable) newSession() *session {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand never fails on Linux
	return &session{
		id:            hex.EncodeToString(b[:]),
		t:             t,
		notifications: make(chan mcp.JSONRPCNotification, maxQueued),
		ended:         make(chan struct{}),
		logLevel:      mcp.LoggingLevelInfo,
	}
}

// serveRequest runs one request and writes, on its response, every message
// the handler sent while it ran, then the response itself.
func (t *streamable) serveRequest(w http.ResponseWriter, r *http.Request, s *session, body []byte) {
	out := newStreamWriter(w)
	out.sse = prefersSSE(r)
	runRequest(r.Context(), t.srv, s.forRequest(), body, out)
}

// sink is where one request's messages go: its POST stream, or stdout.
type sink interface {
	event(msg any)
	final(resp mcp.JSONRPCMessage)
}

// runRequest handles one request with handler-sent messages routed to out,
// in the order the handler sent them, ahead of the response.
func runRequest(ctx context.Context, srv *server.MCPServer, rs *requestSession, body []byte, out sink) {
	ctx = srv.WithContext(ctx, rs)
	done := make(chan mcp.JSONRPCMessage, 1)
	go func() { done <- srv.HandleMessage(ctx, body) }()
	drain := func() {
		for {
			select {
			case n := <-rs.notifications:
				out.event(n)
			default:
				return
			}
		}
	}
	for {
		select {
		case n := <-rs.notifications:
			out.event(n)
		case q := <-rs.requests:
			// Notifications the handler sent before this request are
			// already queued: write them first, to keep the handler's order.
			drain()
			out.event(q)
		case resp := <-done:
			drain()
			out.final(resp)
			return
		}
	}
}

func (t *streamable) get(w http.ResponseWriter, r *http.Request) {
	if !strings.Contains(r.Header.Get("Accept"), "text/event-stream") {
		writeJSONRPCError(w, http.StatusNotAcceptable, "GET needs Accept: text/event-stream")
		return
	}
	s := t.lookup(w, r)
	if s == nil {
		return
	}
	if !s.listening.CompareAndSwap(false, true) {
		writeJSONRPCError(w, http.StatusConflict, "the session already has a GET stream")
		return
	}
	defer s.listening.Store(false)
	out := newStreamWriter(w)
	out.start()
	for {
		select {
		case n := <-s.notifications:
			out.event(n)
		case <-s.ended:
			return
		case <-r.Context().Done():
			return
		}
	}
}

func (t *streamable) delete(w http.ResponseWriter, r *http.Request) {
	s := t.lookup(w, r)
	if s == nil {
		return
	}
	t.mu.Lock()
	delete(t.sessions, s.id)
	t.mu.Unlock()
	t.srv.UnregisterSession(r.Context(), s.id)
	s.end()
	w.WriteHeader(http.StatusOK)
}

// closeAll ends every session, so that GET streams and pending server
// requests return.
func (t *streamable) closeAll() {
	t.mu.Lock()
	all := t.sessions
	t.sessions = make(map[string]*session)
	t.mu.Unlock()
	for id, s := range all {
		t.srv.UnregisterSession(context.Background(), id)
		s.end()
	}
}

// streamWriter writes a POST's answer: plain JSON if the handler sent nothing
// first (and the client does not prefer SSE), else an SSE stream that ends
// with the response.
type streamWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	sse     bool // answer with SSE even if the response comes first
	started bool
	broken  bool
}

func newStreamWriter(w http.ResponseWriter) *streamWriter {
	return &streamWriter{w: w, rc: http.NewResponseController(w)}
}

func (sw *streamWriter) start() {
	if sw.started {
		return
	}
	sw.started = true
	h := sw.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	sw.w.WriteHeader(http.StatusOK)
	if err := sw.rc.Flush(); err != nil {
		sw.broken = true
	}
}

func (sw *streamWriter) event(msg any) {
	sw.start()
	if sw.broken {
		return
	}
	b, err := json.Marshal(msg)
	if err != nil {
		b, _ = json.Marshal(mcp.NewJSONRPCError(mcp.NewRequestId(nil), mcp.INTERNAL_ERROR, "mcptest: encode message: "+err.Error(), nil))
	}
	if _, err := fmt.Fprintf(sw.w, "event: message\ndata: %s\n\n", b); err != nil {
		sw.broken = true
		return
	}
	if err := sw.rc.Flush(); err != nil {
		sw.broken = true
	}
}

func (sw *streamWriter) final(resp mcp.JSONRPCMessage) {
	if resp == nil {
		if !sw.started {
			sw.w.WriteHeader(http.StatusAccepted)
		}
		return
	}
	if sw.started || sw.sse {
		sw.event(resp)
		return
	}
	b, err := json.Marshal(resp)
	if err != nil {
		writeJSONRPCError(sw.w, http.StatusInternalServerError, "mcptest: encode response: "+err.Error())
		return
	}
	sw.w.Header().Set("Content-Type", "application/json")
	sw.w.WriteHeader(http.StatusOK)
	_, _ = sw.w.Write(append(b, '\n'))
}

// session is one MCP session of the 2025 era. Registered with the MCPServer,
// its NotificationChannel feeds the GET stream; requests see it through a
// requestSession instead.
type session struct {
	id            string
	t             *streamable
	notifications chan mcp.JSONRPCNotification
	ended         chan struct{}
	endOnce       sync.Once
	listening     atomic.Bool
	initialized   atomic.Bool
	pending       sync.Map // server-to-client request ID (int64) → chan incoming

	mu              sync.Mutex
	logLevel        mcp.LoggingLevel
	clientInfo      mcp.Implementation
	clientCaps      mcp.ClientCapabilities
	protocolVersion string
}

func (s *session) SessionID() string { return s.id }
func (s *session) Initialize()       { s.initialized.Store(true) }
func (s *session) Initialized() bool { return s.initialized.Load() }
func (s *session) NotificationChannel() chan<- mcp.JSONRPCNotification {
	return s.notifications
}

func (s *session) SetLogLevel(l mcp.LoggingLevel) { s.mu.Lock(); s.logLevel = l; s.mu.Unlock() }
func (s *session) GetLogLevel() mcp.LoggingLevel {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.logLevel
}
func (s *session) GetClientInfo() mcp.Implementation {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientInfo
}
func (s *session) SetClientInfo(i mcp.Implementation) { s.mu.Lock(); s.clientInfo = i; s.mu.Unlock() }
func (s *session) GetClientCapabilities() mcp.ClientCapabilities {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.clientCaps
}
func (s *session) SetClientCapabilities(c mcp.ClientCapabilities) {
	s.mu.Lock()
	s.clientCaps = c
	s.mu.Unlock()
}

// SetProtocolVersion records the negotiated version (mcp-go calls it).
func (s *session) SetProtocolVersion(v string) { s.mu.Lock(); s.protocolVersion = v; s.mu.Unlock() }

func (s *session) end() { s.endOnce.Do(func() { close(s.ended) }) }

func (s *session) forRequest() *requestSession {
	return &requestSession{
		session:       s,
		notifications: make(chan mcp.JSONRPCNotification, maxQueued),
		requests:      make(chan mcp.JSONRPCRequest, 1),
	}
}

func (s *session) deliverResponse(msg incoming) {
	var id int64
	if err := json.Unmarshal(msg.ID, &id); err != nil {
		s.t.logger.Warn("mcptest: response with a foreign id", "session", s.id, "id", string(msg.ID))
		return
	}
	ch, ok := s.pending.LoadAndDelete(id)
	if !ok {
		s.t.logger.Warn("mcptest: response to no pending request", "session", s.id, "id", id)
		return
	}
	ch.(chan incoming) <- msg // buffered, one sender: LoadAndDelete
}

// requestSession is the session as one request's handler sees it: whatever
// the handler sends goes to that request's stream.
type requestSession struct {
	*session
	notifications chan mcp.JSONRPCNotification
	requests      chan mcp.JSONRPCRequest
}

func (rs *requestSession) NotificationChannel() chan<- mcp.JSONRPCNotification {
	return rs.notifications
}

// ClientError is a JSON-RPC error the client answered a server request with.
type ClientError struct {
	Method string
	Code   int
	Msg    string
}

func (e *ClientError) Error() string {
	return fmt.Sprintf("client answered %s with error %d: %s", e.Method, e.Code, e.Msg)
}

// errSessionEnded is returned to a handler whose server request can no
// longer be answered.
var errSessionEnded = errors.New("mcptest: session ended")

// roundTrip sends a server-to-client request on the request's stream and
// waits for the client's answer, posted back in another request.
func (rs *requestSession) roundTrip(ctx context.Context, method mcp.MCPMethod, params any) (json.RawMessage, error) {
	id := rs.t.nextID.Add(1)
	answer := make(chan incoming, 1)
	rs.pending.Store(id, answer)
	defer rs.pending.Delete(id)
	req := mcp.JSONRPCRequest{JSONRPC: mcp.JSONRPC_VERSION, ID: mcp.NewRequestId(id), Params: params, Request: mcp.Request{Method: string(method)}}
	select {
	case rs.requests <- req:
	case <-ctx.Done():
		return nil, fmt.Errorf("mcptest: send %s: %w", method, ctx.Err())
	}
	select {
	case msg := <-answer:
		if len(msg.Error) > 0 && !bytes.Equal(msg.Error, []byte("null")) {
			var e struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}
			_ = json.Unmarshal(msg.Error, &e)
			return nil, &ClientError{Method: string(method), Code: e.Code, Msg: e.Message}
		}
		return msg.Result, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("mcptest: wait for %s answer: %w", method, ctx.Err())
	case <-rs.ended:
		return nil, fmt.Errorf("%w while waiting for %s answer", errSessionEnded, method)
	}
}

func (rs *requestSession) RequestSampling(ctx context.Context, req mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
	raw, err := rs.roundTrip(ctx, mcp.MethodSamplingCreateMessage, req.CreateMessageParams)
	if err != nil {
		return nil, err
	}
	var res mcp.CreateMessageResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("mcptest: decode sampling result: %w", err)
	}
	content, err := mcp.ParseSamplingContent(res.Content)
	if err != nil {
		return nil, fmt.Errorf("mcptest: decode sampling content: %w", err)
	}
	res.Content = content
	return &res, nil
}

func (rs *requestSession) RequestElicitation(ctx context.Context, req mcp.ElicitationRequest) (*mcp.ElicitationResult, error) {
	raw, err := rs.roundTrip(ctx, mcp.MethodElicitationCreate, req.Params)
	if err != nil {
		return nil, err
	}
	var res mcp.ElicitationResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("mcptest: decode elicitation result: %w", err)
	}
	return &res, nil
}

func (rs *requestSession) ListRoots(ctx context.Context, _ mcp.ListRootsRequest) (*mcp.ListRootsResult, error) {
	raw, err := rs.roundTrip(ctx, mcp.MethodListRoots, nil)
	if err != nil {
		return nil, err
	}
	var res mcp.ListRootsResult
	if err := json.Unmarshal(raw, &res); err != nil {
		return nil, fmt.Errorf("mcptest: decode roots result: %w", err)
	}
	return &res, nil
}

// floodChunk is the payload size of one notification flood_get_stream
// pushes.
const floodChunk = 64 << 10

// toolFloodGetStream starts pushing notifications into the session's GET
// stream. The pushing goroutine belongs to the session: it ends when the
// session ends (DELETE, or the server closing) or when all is pushed; a
// GET stream nobody reads holds it blocked until then.
func toolFloodGetStream(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	n, err := req.RequireInt("bytes")
	if err != nil || n < 0 || n > maxFloodBytes {
		return mcp.NewToolResultError(fmt.Sprintf("bytes must be an integer from 0 to %d", maxFloodBytes)), nil
	}
	rs, ok := server.ClientSessionFromContext(ctx).(*requestSession)
	if !ok {
		return mcp.NewToolResultError("flood_get_stream needs a session of the HTTP transport (it has the GET stream)"), nil
	}
	s := rs.session
	log := loggerFrom(ctx)
	payload := LargeOutput(floodChunk)
	go func() {
		pushed := 0
		defer func() { log.Info("mcptest: flood ended", "session", s.id, "pushed", pushed, "asked", n) }()
		for pushed < n {
			note := mcp.JSONRPCNotification{JSONRPC: mcp.JSONRPC_VERSION, Notification: mcp.Notification{
				Method: "notifications/message",
				Params: mcp.NotificationParams{AdditionalFields: map[string]any{"level": "info", "data": payload}},
			}}
			select {
			case s.notifications <- note:
				pushed += floodChunk
			case <-s.ended:
				return
			}
		}
	}()
	return mcp.NewToolResultText(fmt.Sprintf("flooding %d bytes", n)), nil
}
