package loadgen

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixture is a real mcp-go Streamable HTTP server on loopback, wrapped so the
// test can see every request.
type fixture struct {
	url   string
	calls atomic.Int64 // tools/call requests
	inits atomic.Int64 // initialize requests
	dels  atomic.Int64 // DELETE requests
	conns atomic.Int64 // TCP connections accepted
	sse   atomic.Int64 // answers sent as text/event-stream
	json  atomic.Int64 // answers sent as application/json

	// before, if set, runs for each tools/call before mcp-go sees it; it
	// returns true when it answered the request itself.
	before func(n int64, w http.ResponseWriter, r *http.Request) bool
}

func newFixture(t *testing.T, opts ...server.StreamableHTTPOption) *fixture {
	t.Helper()
	f := &fixture{}
	mcpSrv := server.NewMCPServer("fixture", "1.0.0", server.WithToolCapabilities(false))
	mcpSrv.AddTool(mcp.NewTool("echo", mcp.WithString("message")),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(req.GetString("message", "")), nil
		})
	mcpSrv.AddTool(mcp.NewTool("fail"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultError("boom"), nil
		})
	// notify_echo sends a notification first, which makes mcp-go answer the
	// POST with an event stream.
	mcpSrv.AddTool(mcp.NewTool("notify_echo", mcp.WithString("message")),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			err := server.ServerFromContext(ctx).SendNotificationToClient(ctx, "notifications/message",
				map[string]any{"level": "info", "data": "working"})
			if err != nil {
				return nil, err
			}
			return mcp.NewToolResultText(req.GetString("message", "")), nil
		})
	h := server.NewStreamableHTTPServer(mcpSrv, opts...)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodDelete {
			f.dels.Add(1)
		}
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			var m struct {
				Method string `json:"method"`
			}
			_ = json.Unmarshal(body, &m)
			switch m.Method {
			case "initialize":
				f.inits.Add(1)
			case "tools/call":
				n := f.calls.Add(1)
				if f.before != nil && f.before(n, w, r) {
					return
				}
				w = &typeWatcher{ResponseWriter: w, f: f}
			}
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			f.conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		require.NoError(t, h.Shutdown(context.Background()))
	})
	f.url = srv.URL + "/mcp"
	return f
}

// typeWatcher counts the Content-Type of tools/call answers.
type typeWatcher struct {
	http.ResponseWriter
	f    *fixture
	seen bool
}

func (tw *typeWatcher) WriteHeader(code int) {
	if !tw.seen {
		tw.seen = true
		switch tw.Header().Get("Content-Type") {
		case "text/event-stream":
			tw.f.sse.Add(1)
		case "application/json":
			tw.f.json.Add(1)
		}
	}
	tw.ResponseWriter.WriteHeader(code)
}

func (tw *typeWatcher) Write(b []byte) (int, error) {
	if !tw.seen {
		tw.WriteHeader(http.StatusOK)
	}
	return tw.ResponseWriter.Write(b)
}

func (tw *typeWatcher) Flush() {
	if f, ok := tw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func run(t *testing.T, cfg Config) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	res, err := Run(ctx, cfg)
	require.NoError(t, err)
	return res
}

func TestRequestsCountedExactly(t *testing.T) {
	f := newFixture(t)
	res := run(t, Config{URL: f.url, Sessions: 3, Requests: 57, PayloadBytes: 100})

	assert.EqualValues(t, 57, res.Requests)
	assert.EqualValues(t, 57, f.calls.Load(), "tools/call requests seen by the server")
	assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
	assert.EqualValues(t, 3, f.inits.Load())
	assert.EqualValues(t, 3, f.dels.Load(), "every session ends with DELETE")
	assert.EqualValues(t, 57, f.json.Load())
	// net/http may dial a spare connection when a request races the return
	// of the previous one to the idle pool, so assert reuse, not a count.
	assert.Less(t, f.conns.Load(), int64(57/2), "connections are kept alive")

	assert.Positive(t, res.P50)
	assert.LessOrEqual(t, res.Min, res.P50)
	assert.LessOrEqual(t, res.P50, res.P90)
	assert.LessOrEqual(t, res.P90, res.P99)
	assert.LessOrEqual(t, res.P99, res.Max)
	assert.Positive(t, res.RPS)
	assert.Greater(t, res.BytesSent, int64(57*100))
	assert.Greater(t, res.BytesReceived, int64(57*100), "echo returns the payload")
	assert.Equal(t, EraSessions, res.Era)
	assert.Equal(t, "echo", res.Tool)
}

func TestDurationMode(t *testing.T) {
	f := newFixture(t)
	res := run(t, Config{URL: f.url, Sessions: 2, Duration: 200 * time.Millisecond})
	assert.Positive(t, res.Requests)
	assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
	assert.GreaterOrEqual(t, res.Duration, 200*time.Millisecond)
	assert.LessOrEqual(t, res.Requests, f.calls.Load())
	assert.EqualValues(t, 2, f.dels.Load())
}

// BeforeEnd runs once, after the last measured request and before any
// session is ended: a harness takes its last process sample there.
func TestBeforeEndPrecedesDelete(t *testing.T) {
	f := newFixture(t)
	var called int
	var delsThen, callsThen int64
	res := run(t, Config{URL: f.url, Sessions: 3, Requests: 20, BeforeEnd: func() {
		called++
		delsThen, callsThen = f.dels.Load(), f.calls.Load()
	}})
	assert.Equal(t, 1, called)
	assert.Zero(t, delsThen, "no session ended before BeforeEnd")
	assert.EqualValues(t, res.Requests, callsThen, "every measured request answered before BeforeEnd")
	assert.EqualValues(t, 3, f.dels.Load(), "sessions end after it")
}

// A paced run cannot go faster than its rate: ten requests at 50/s take at
// least the nine intervals between them, however many sessions wait.
func TestPacedRate(t *testing.T) {
	f := newFixture(t)
	res := run(t, Config{URL: f.url, Sessions: 4, Requests: 10, Rate: 50})
	assert.EqualValues(t, 10, res.Requests)
	assert.EqualValues(t, 10, f.calls.Load())
	assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
	assert.GreaterOrEqual(t, res.Duration, 170*time.Millisecond, "9 intervals of 20 ms")
	assert.Equal(t, 50.0, res.OfferedRPS)
	assert.EqualValues(t, 4, f.dels.Load())
}

// Paced latency counts from when a request was due: one session offered
// 1,000 req/s by a server that takes 10 ms per call falls further behind
// with every call, and the last one's latency shows the queue (at least
// 10 calls × 10 ms − 9 ms of slots), where a closed loop would report ~10 ms.
func TestPacedLatencyCountsQueueing(t *testing.T) {
	f := newFixture(t)
	f.before = func(int64, http.ResponseWriter, *http.Request) bool {
		time.Sleep(10 * time.Millisecond) // the server's own work
		return false
	}
	res := run(t, Config{URL: f.url, Sessions: 1, Requests: 10, Rate: 1000})
	assert.EqualValues(t, 10, res.Requests)
	assert.GreaterOrEqual(t, res.Max, 90*time.Millisecond)
	assert.Less(t, res.RPS, 1000.0, "one session cannot hold the offered rate")
}

func TestErrorsCounted(t *testing.T) {
	f := newFixture(t)
	for _, tc := range []struct {
		name, tool string
		want       string
		wantType   any
	}{
		{"tool isError", "fail", "tools/call fail: tool reported isError: boom", new(*ToolError)},
		{"JSON-RPC error", "nope", "tools/call: JSON-RPC error", new(*RPCError)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := run(t, Config{URL: f.url, Sessions: 2, Requests: 20, Tool: tc.tool})
			assert.EqualValues(t, 20, res.Requests)
			assert.EqualValues(t, 20, res.Errors)
			require.Len(t, res.ErrorSamples, 1, "one distinct message")
			assert.Contains(t, res.ErrorSamples[0], tc.want)
			assert.Zero(t, res.P50, "no latency figures without a success")
		})
	}
}

func TestSSEAnswersFromMCPGo(t *testing.T) {
	f := newFixture(t)
	// 40 KiB lines overflow the reader's buffer and take the long-line path.
	for _, size := range []int{10, 40 << 10} {
		f.sse.Store(0)
		f.conns.Store(0)
		res := run(t, Config{URL: f.url, Sessions: 2, Requests: 30, Tool: "notify_echo", PayloadBytes: size})
		assert.EqualValues(t, 30, res.Requests)
		assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
		assert.EqualValues(t, 30, f.sse.Load(), "answers were event streams")
		assert.Less(t, f.conns.Load(), int64(30/2), "connections survive event-stream answers")
		assert.Greater(t, res.BytesReceived, int64(30*size))
	}
}

// sseHandler answers tools/call with a hand-written event stream: a priming
// event, a comment, a notification, a server request that reuses our ID, a
// multi-line data field, CRLF line endings, then the response.
func sseHandler(t *testing.T, body func(id json.RawMessage) string, keepOpen bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var m struct {
			ID     json.RawMessage `json:"id"`
			Method string          `json:"method"`
		}
		if err := json.NewDecoder(r.Body).Decode(&m); err != nil && r.Method == http.MethodPost {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		switch {
		case r.Method == http.MethodDelete:
			w.WriteHeader(http.StatusOK)
		case m.Method == "initialize":
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Mcp-Session-Id", "s1")
			fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-11-25","capabilities":{},"serverInfo":{"name":"x","version":"1"}}}`, m.ID)
		case m.Method == "notifications/initialized":
			w.WriteHeader(http.StatusAccepted)
		case m.Method == "tools/call":
			if r.Header.Get("Mcp-Session-Id") != "s1" {
				http.Error(w, "no session", http.StatusBadRequest)
				return
			}
			w.Header().Set("Content-Type", "text/event-stream")
			io.WriteString(w, body(m.ID))
			if keepOpen {
				w.(http.Flusher).Flush()
				<-r.Context().Done()
			}
		default:
			http.Error(w, "unexpected "+m.Method, http.StatusBadRequest)
		}
	})
}

func TestSSEHandWritten(t *testing.T) {
	for _, tc := range []struct {
		name       string
		body       func(id json.RawMessage) string
		wantErrors bool
		want       string
	}{
		{
			name: "full stream",
			body: func(id json.RawMessage) string {
				return "id: 1\ndata:\n\n" +
					": keep-alive\n\n" +
					"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n" +
					"data: {\"jsonrpc\":\"2.0\",\"id\":" + string(id) + ",\"method\":\"sampling/createMessage\",\"params\":{}}\n\n" +
					"id: 2\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":" + string(id) + ",\r\ndata: \"result\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\r\n\r\n"
			},
		},
		{
			name: "last event without blank line",
			body: func(id json.RawMessage) string {
				return "data: {\"jsonrpc\":\"2.0\",\"id\":" + string(id) + ",\"result\":{}}"
			},
		},
		{
			name: "stream ends early",
			body: func(id json.RawMessage) string {
				return "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\n"
			},
			wantErrors: true,
			want:       "tools/call: event stream ended without the response",
		},
		{
			name: "isError on the stream",
			body: func(id json.RawMessage) string {
				return "data: {\"jsonrpc\":\"2.0\",\"id\":" + string(id) + ",\"result\":{\"isError\":true,\"content\":[{\"type\":\"text\",\"text\":\"bad input\"}]}}\n\n"
			},
			wantErrors: true,
			want:       "tools/call echo: tool reported isError: bad input",
		},
		{
			name: "garbage data",
			body: func(id json.RawMessage) string {
				return "data: <html>\n\n"
			},
			wantErrors: true,
			want:       "tools/call: answer is not JSON-RPC: <html>",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(sseHandler(t, tc.body, false))
			defer srv.Close()
			res := run(t, Config{URL: srv.URL, Sessions: 2, Requests: 10})
			assert.EqualValues(t, 10, res.Requests)
			if !tc.wantErrors {
				assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
				return
			}
			assert.EqualValues(t, 10, res.Errors)
			require.NotEmpty(t, res.ErrorSamples)
			assert.Contains(t, res.ErrorSamples[0], tc.want)
		})
	}
}

// statelessServer is a 2026-07-28 endpoint of our own that rejects any
// request whose headers disagree with its body, and any sign of a session.
type statelessServer struct {
	t        *testing.T
	versions string // supportedVersions answered by server/discover
	calls    atomic.Int64
	discover atomic.Int64
	mu       sync.Mutex
	problems []string
}

func (s *statelessServer) fail(w http.ResponseWriter, id json.RawMessage, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	s.mu.Lock()
	s.problems = append(s.problems, msg)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusBadRequest)
	fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"error":{"code":-32020,"message":%q}}`, orNull(id), msg)
}

func orNull(id json.RawMessage) string {
	if len(id) == 0 {
		return "null"
	}
	return string(id)
}

func (s *statelessServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		s.fail(w, nil, "%s is not part of 2026-07-28", r.Method)
		return
	}
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params struct {
			Name string                     `json:"name"`
			Meta map[string]json.RawMessage `json:"_meta"`
		} `json:"params"`
	}
	if err := json.NewDecoder(r.Body).Decode(&m); err != nil {
		s.fail(w, nil, "bad body: %v", err)
		return
	}
	if v := r.Header.Get("Mcp-Session-Id"); v != "" {
		s.fail(w, m.ID, "unexpected Mcp-Session-Id %q", v)
		return
	}
	if v := r.Header.Get("Mcp-Protocol-Version"); v != EraStateless {
		s.fail(w, m.ID, "Mcp-Protocol-Version %q", v)
		return
	}
	if v := string(m.Params.Meta["io.modelcontextprotocol/protocolVersion"]); v != `"`+EraStateless+`"` {
		s.fail(w, m.ID, "_meta protocolVersion %s", v)
		return
	}
	if v := r.Header.Get("Mcp-Method"); v != m.Method {
		s.fail(w, m.ID, "Mcp-Method %q, body method %q", v, m.Method)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch m.Method {
	case "server/discover":
		s.discover.Add(1)
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"supportedVersions":%s,"capabilities":{"tools":{}},"serverInfo":{"name":"x","version":"1"}}}`, m.ID, s.versions)
	case "tools/call":
		name := r.Header.Get("Mcp-Name")
		if enc, ok := strings.CutPrefix(name, "=?base64?"); ok {
			dec, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(enc, "?="))
			if err != nil {
				s.fail(w, m.ID, "Mcp-Name %q: %v", name, err)
				return
			}
			name = string(dec)
		}
		if name != m.Params.Name {
			s.fail(w, m.ID, "Mcp-Name %q, params.name %q", name, m.Params.Name)
			return
		}
		s.calls.Add(1)
		fmt.Fprintf(w, `{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"ok"}]}}`, m.ID)
	default:
		s.fail(w, m.ID, "unexpected method %q", m.Method)
	}
}

func TestStatelessEra(t *testing.T) {
	for _, tool := range []string{"echo", "écho ünïcode"} {
		t.Run(tool, func(t *testing.T) {
			ss := &statelessServer{t: t, versions: `["2026-07-28","2025-11-25"]`}
			srv := httptest.NewServer(ss)
			defer srv.Close()
			res := run(t, Config{URL: srv.URL, Sessions: 3, Requests: 40, Era: EraStateless, Tool: tool})
			assert.Empty(t, ss.problems)
			assert.EqualValues(t, 40, res.Requests)
			assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
			assert.EqualValues(t, 40, ss.calls.Load())
			assert.EqualValues(t, 3, ss.discover.Load(), "each session discovers once")
			assert.Equal(t, EraStateless, res.Era)
		})
	}
}

func TestStatelessEraAgainstMCPGo(t *testing.T) {
	f := newFixture(t, server.WithStateLess(true))
	res := run(t, Config{URL: f.url, Sessions: 2, Requests: 25, Era: EraStateless})
	assert.EqualValues(t, 25, res.Requests)
	assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
	assert.EqualValues(t, 25, f.calls.Load())
	assert.Zero(t, f.inits.Load(), "no initialize in the stateless era")
	assert.Zero(t, f.dels.Load(), "no DELETE in the stateless era")
}

func TestSetupErrors(t *testing.T) {
	answer := func(status int, ctype, body string, hdr ...string) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			for i := 0; i+1 < len(hdr); i += 2 {
				w.Header().Set(hdr[i], hdr[i+1])
			}
			if ctype != "" {
				w.Header().Set("Content-Type", ctype)
			}
			w.WriteHeader(status)
			io.WriteString(w, body)
		}))
		t.Cleanup(srv.Close)
		return srv.URL + "/mcp"
	}
	// A port nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closedURL := "http://" + ln.Addr().String() + "/mcp"
	ln.Close()

	unsupported := httptest.NewServer(&statelessServer{t: t, versions: `["2025-11-25"]`})
	defer unsupported.Close()

	for _, tc := range []struct {
		name   string
		url    string
		era    string
		want   string
		status int // expected *HTTPError status, 0 for another error type
	}{
		{"401", answer(401, "text/plain", "missing token\n", "WWW-Authenticate", `Bearer resource_metadata="x"`), "",
			`initialize: HTTP 401 Unauthorized: missing token (WWW-Authenticate: Bearer resource_metadata="x")`, 401},
		{"403", answer(403, "", "scope"), "", "initialize: HTTP 403 Forbidden: scope", 403},
		{"404", answer(404, "", "404 page not found"), "", "initialize: HTTP 404 Not Found: 404 page not found", 404},
		{"redirect", answer(302, "", "", "Location", "/elsewhere"), "", "initialize: HTTP 302 Found: (Location: /elsewhere)", 302},
		{"stateless 401", answer(401, "", "no"), EraStateless, "server/discover: HTTP 401 Unauthorized: no", 401},
		{"html", answer(200, "text/html", "<html><body>hello</body></html>"), "",
			"initialize: not an MCP answer: HTTP 200 OK, Content-Type text/html: <html><body>hello</body></html>", 0},
		{"json not JSON-RPC", answer(200, "application/json", `{"status":"ok"}`), "",
			`initialize: answer is not the response to the request: {"status":"ok"}`, 0},
		{"not JSON", answer(200, "application/json", `hello`), "", "initialize: answer is not JSON-RPC: hello", 0},
		{"no protocolVersion", answer(200, "application/json", `{"jsonrpc":"2.0","id":1,"result":{}}`), "",
			"initialize: result has no protocolVersion", 0},
		{"JSON-RPC error", answer(200, "application/json", `{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad version"}}`), "",
			"initialize: JSON-RPC error -32602: bad version", 0},
		{"202", answer(202, "", ""), "", "initialize: HTTP 202 Accepted without a response", 0},
		{"connection refused", closedURL, "", "initialize: POST " + closedURL + ": dial tcp", 0},
		{"discover without 2026", unsupported.URL, EraStateless,
			"server/discover: server does not support protocol version 2026-07-28 (it supports: 2025-11-25)", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			res, err := Run(ctx, Config{URL: tc.url, Sessions: 2, Requests: 5, Era: tc.era})
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.Zero(t, res.Requests)
			var he *HTTPError
			if tc.status != 0 {
				require.ErrorAs(t, err, &he)
				assert.Equal(t, tc.status, he.StatusCode)
			} else {
				assert.False(t, errors.As(err, &he), "not an HTTP status error: %v", err)
			}
		})
	}
}

func TestTimeouts(t *testing.T) {
	t.Run("stalled answer", func(t *testing.T) {
		f := newFixture(t)
		f.before = func(n int64, w http.ResponseWriter, r *http.Request) bool {
			if n == 2 {
				<-r.Context().Done() // the generator gives up and closes
				return true
			}
			return false
		}
		res := run(t, Config{URL: f.url, Requests: 4, Timeout: 200 * time.Millisecond})
		assert.EqualValues(t, 4, res.Requests)
		assert.EqualValues(t, 1, res.Errors)
		require.Len(t, res.ErrorSamples, 1)
		assert.Contains(t, res.ErrorSamples[0], "tools/call: POST "+f.url+": ")
		assert.Contains(t, res.ErrorSamples[0], "no complete answer within 200ms")
	})
	t.Run("stalled initialize", func(t *testing.T) {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// net/http notices the client closing only once the body is read.
			_, _ = io.Copy(io.Discard, r.Body)
			<-r.Context().Done()
		}))
		defer srv.Close()
		_, err := Run(t.Context(), Config{URL: srv.URL, Requests: 1, Timeout: 100 * time.Millisecond})
		var te *TransportError
		require.ErrorAs(t, err, &te)
		assert.Equal(t, "initialize", te.Op)
		assert.Contains(t, err.Error(), "no complete answer within 100ms")
	})
	t.Run("event stream left open after the response", func(t *testing.T) {
		srv := httptest.NewServer(sseHandler(t, func(id json.RawMessage) string {
			return "data: {\"jsonrpc\":\"2.0\",\"id\":" + string(id) + ",\"result\":{}}\n\n"
		}, true))
		defer srv.Close()
		res := run(t, Config{URL: srv.URL, Requests: 3})
		assert.EqualValues(t, 3, res.Requests)
		assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
	})
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"empty URL", Config{}, "URL"},
		{"bad scheme", Config{URL: "ftp://127.0.0.1/mcp"}, "URL"},
		{"no host", Config{URL: "http:///mcp"}, "URL"},
		{"unparsable", Config{URL: "http://[::1"}, "URL"},
		{"negative sessions", Config{URL: "http://127.0.0.1/", Sessions: -1}, "Sessions"},
		{"negative duration", Config{URL: "http://127.0.0.1/", Duration: -time.Second}, "Duration"},
		{"negative requests", Config{URL: "http://127.0.0.1/", Requests: -5}, "Requests"},
		{"negative rate", Config{URL: "http://127.0.0.1/", Rate: -1}, "Rate"},
		{"NaN rate", Config{URL: "http://127.0.0.1/", Rate: math.NaN()}, "Rate"},
		{"infinite rate", Config{URL: "http://127.0.0.1/", Rate: math.Inf(1)}, "Rate"},
		{"args not object", Config{URL: "http://127.0.0.1/", Arguments: json.RawMessage(`[1]`)}, "Arguments"},
		{"args invalid", Config{URL: "http://127.0.0.1/", Arguments: json.RawMessage(`{"a":`)}, "Arguments"},
		{"args and payload", Config{URL: "http://127.0.0.1/", Arguments: json.RawMessage(`{}`), PayloadBytes: 3}, "Arguments"},
		{"bad era", Config{URL: "http://127.0.0.1/", Era: "2024-11-05"}, "Era"},
		{"bad header name", Config{URL: "http://127.0.0.1/", Headers: map[string]string{"X Bad": "1"}}, "Headers"},
		{"bad header value", Config{URL: "http://127.0.0.1/", Headers: map[string]string{"X-Ok": "a\nb"}}, "Headers"},
		{"bad token", Config{URL: "http://127.0.0.1/", Token: "a\r\nb"}, "Token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Run(t.Context(), Config(tc.cfg))
			var ce *ConfigError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, tc.field, ce.Field)
		})
	}
}

func TestHeadersTokenAndArguments(t *testing.T) {
	var seen sync.Map
	f := newFixture(t)
	f.before = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		seen.Store("auth", r.Header.Get("Authorization"))
		seen.Store("x", r.Header.Get("X-Bench"))
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		seen.Store("body", string(body))
		return false
	}
	res := run(t, Config{URL: f.url, Requests: 3, Token: "s3cret", Headers: map[string]string{"X-Bench": "yes"},
		Arguments: json.RawMessage(`{ "message" : "hello" }`)})
	assert.Zero(t, res.Errors, "samples: %v", res.ErrorSamples)
	auth, _ := seen.Load("auth")
	assert.Equal(t, "Bearer s3cret", auth)
	x, _ := seen.Load("x")
	assert.Equal(t, "yes", x)
	body, _ := seen.Load("body")
	assert.Contains(t, body, `"arguments":{"message":"hello"}`)
	assert.Greater(t, res.BytesReceived, int64(3*len("hello")))
}

func TestSession404Reinitializes(t *testing.T) {
	f := newFixture(t)
	f.before = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n == 5 {
			http.Error(w, "session not found", http.StatusNotFound)
			return true
		}
		return false
	}
	res := run(t, Config{URL: f.url, Requests: 10})
	assert.EqualValues(t, 10, res.Requests)
	assert.EqualValues(t, 1, res.Errors)
	assert.Equal(t, []string{"tools/call: HTTP 404 Not Found: session not found"}, res.ErrorSamples)
	assert.EqualValues(t, 2, f.inits.Load(), "the session re-initialized after 404")
	assert.EqualValues(t, 1, f.dels.Load(), "the current session is deleted")
}

func TestWarmupExcluded(t *testing.T) {
	f := newFixture(t)
	// The first call fails. It starts during the warm-up unless the machine
	// stalls for the whole warm-up, which WarmupRequests then tells.
	f.before = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n == 1 {
			http.Error(w, "first", http.StatusInternalServerError)
			return true
		}
		return false
	}
	res := run(t, Config{URL: f.url, Requests: 5, Warmup: 100 * time.Millisecond})
	assert.EqualValues(t, 5, res.Requests)
	assert.Equal(t, f.calls.Load(), res.Requests+res.WarmupRequests, "every call is either warm-up or measured")
	if res.WarmupRequests > 0 {
		assert.Zero(t, res.Errors, "the failed warm-up call is not counted")
	} else {
		assert.EqualValues(t, 1, res.Errors)
	}
}

func TestCancelReturnsPartialResult(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	f := newFixture(t)
	f.before = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n == 20 {
			cancel()
		}
		return false
	}
	res, err := Run(ctx, Config{URL: f.url, Sessions: 2, Duration: time.Hour})
	require.ErrorIs(t, err, context.Canceled)
	assert.GreaterOrEqual(t, res.Requests, int64(18))
	assert.EqualValues(t, 2, f.dels.Load(), "sessions are deleted after an interrupt too")
}

// lineWriter delivers each written line on a channel.
type lineWriter struct{ lines chan string }

func (lw lineWriter) Write(p []byte) (int, error) {
	select {
	case lw.lines <- string(p):
	default:
	}
	return len(p), nil
}

func TestProgress(t *testing.T) {
	lw := lineWriter{lines: make(chan string, 1)}
	got := make(chan string, 1)
	f := newFixture(t)
	f.before = func(n int64, w http.ResponseWriter, r *http.Request) bool {
		if n == 3 {
			// Hold the run until a progress line came out.
			select {
			case line := <-lw.lines:
				got <- line
			case <-r.Context().Done():
			}
		}
		return false
	}
	res := run(t, Config{URL: f.url, Requests: 5, Progress: lw, progressEvery: 5 * time.Millisecond})
	assert.EqualValues(t, 5, res.Requests)
	select {
	case line := <-got:
		assert.Regexp(t, `^\d+\S*: \d+ requests, \d+ req/s \(now \d+\), 0 errors\n$`, line)
	default:
		t.Fatal("no progress line")
	}
}

func TestWriteTableAndJSON(t *testing.T) {
	res := Result{URL: "http://127.0.0.1/mcp", Era: EraSessions, Tool: "echo", Sessions: 2,
		Requests: 1000, Errors: 3, Duration: 2 * time.Second, RPS: 500,
		Min: 100 * time.Microsecond, Mean: 1234567, P50: 1234567, P90: 2 * time.Millisecond, P99: 5 * time.Millisecond, Max: 9 * time.Millisecond,
		BytesSent: 2048, BytesReceived: 3 << 20, ErrorSamples: []string{"tools/call: HTTP 500"}}
	var buf bytes.Buffer
	require.NoError(t, res.WriteTable(&buf))
	out := buf.String()
	for _, want := range []string{"http://127.0.0.1/mcp", "1000 in 2s, 500.0 req/s", "3 (0.30%)", "p50 1.235ms", "p99 5ms",
		"sent 2.0 KiB, received 3.0 MiB", "tools/call: HTTP 500"} {
		assert.Contains(t, out, want)
	}
	b, err := json.Marshal(res)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(b, &m))
	assert.EqualValues(t, 1234567, m["p50_ns"])
	assert.EqualValues(t, 1000, m["requests"])
	assert.EqualValues(t, 500, m["rps"])
}
