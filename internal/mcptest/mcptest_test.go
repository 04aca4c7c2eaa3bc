package mcptest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/mcptun/mcptun/internal/conformance"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func startFixture(t *testing.T, cfg HTTPConfig) *HTTPServer {
	t.Helper()
	hs, err := StartHTTP("127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hs.Close(); err != nil {
			t.Error(err)
		}
	})
	return hs
}

// TestConformanceDirect runs the conformance suite against the fixture over
// HTTP and requires every scenario of the active suite to pass.
func TestConformanceDirect(t *testing.T) {
	conformance.RequireTools(t)
	hs := startFixture(t, HTTPConfig{})
	res, err := conformance.Run(context.Background(), hs.URL, conformance.WithTimeout(3*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fixture, direct:\n%s", res.Table())
	if len(res.Order) < 30 {
		t.Errorf("suite ran %d scenarios, want at least 30", len(res.Order))
	}
	if failed := res.Failed(); len(failed) > 0 {
		t.Fatalf("scenarios failed: %v", failed)
	}
}

// client speaks raw Streamable HTTP, to check what goes on which stream.
type client struct {
	t       *testing.T
	url     string
	session string
	hc      *http.Client
}

func newClient(t *testing.T, url string) *client {
	return &client{t: t, url: url, hc: &http.Client{Timeout: 20 * time.Second}}
}

func (c *client) do(method, body string, hdr map[string]string) *http.Response {
	c.t.Helper()
	req, err := http.NewRequest(method, c.url, strings.NewReader(body))
	if err != nil {
		c.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
		req.Header.Set("Mcp-Protocol-Version", "2025-11-25")
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, c.url, err)
	}
	return resp
}

func (c *client) initialize(caps string) {
	c.t.Helper()
	resp := c.do("POST", `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":`+caps+`,"clientInfo":{"name":"t","version":"1"}}}`, nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"serverInfo"`) {
		c.t.Fatalf("initialize: %d %s", resp.StatusCode, body)
	}
	c.session = resp.Header.Get("Mcp-Session-Id")
	if c.session == "" {
		c.t.Fatal("initialize: no Mcp-Session-Id")
	}
	resp = c.do("POST", `{"jsonrpc":"2.0","method":"notifications/initialized"}`, nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		c.t.Fatalf("initialized: %d", resp.StatusCode)
	}
}

// events reads the data of every SSE event of resp until it ends.
func events(t *testing.T, resp *http.Response) <-chan string {
	ch := make(chan string, 16)
	go func() {
		defer close(ch)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			if d, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				ch <- d
			}
		}
	}()
	return ch
}

func next(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case e, ok := <-ch:
		if !ok {
			t.Fatal("stream ended early")
		}
		return e
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return ""
	}
}

// TestProgressOnRequestStream checks what mcp-go's own transport gets wrong:
// with a GET stream open, every progress notification still arrives on the
// POST's stream, in order, before the result, with the token byte for byte
// (even above 2^53).
func TestProgressOnRequestStream(t *testing.T) {
	hs := startFixture(t, HTTPConfig{})
	c := newClient(t, hs.URL)
	c.initialize(`{}`)
	get := c.do("GET", "", map[string]string{"Accept": "text/event-stream"})
	if get.StatusCode != 200 {
		t.Fatalf("GET: %d", get.StatusCode)
	}
	getEvents := events(t, get)
	for i := range 5 {
		token := fmt.Sprintf("%d", uint64(1)<<60+uint64(i)*7+1)
		resp := c.do("POST", `{"jsonrpc":"2.0","id":"p`+fmt.Sprint(i)+`","method":"tools/call","params":{"name":"test_tool_with_progress","arguments":{},"_meta":{"progressToken":`+token+`}}}`, nil)
		if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
			t.Fatalf("content type %q", ct)
		}
		ev := events(t, resp)
		for _, p := range ProgressSteps {
			want := fmt.Sprintf(`"progress":%v,"progressToken":%s,"total":100`, p, token)
			if got := next(t, ev); !strings.Contains(got, want) {
				t.Fatalf("call %d: got %s, want progress containing %s", i, got, want)
			}
		}
		if got := next(t, ev); !strings.Contains(got, `"id":"p`+fmt.Sprint(i)+`","result"`) {
			t.Fatalf("call %d: got %s, want the result", i, got)
		}
	}
	// Nothing went to the GET stream, proven by order: the list_changed
	// broadcast, sent there after all the calls, must be its first event.
	resp := c.do("POST", `{"jsonrpc":"2.0","id":"b","method":"tools/call","params":{"name":"`+ToolBroadcastListChanged+`","arguments":{}}}`, nil)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if got := next(t, getEvents); !strings.Contains(got, `"method":"notifications/tools/list_changed"`) {
		t.Fatalf("GET stream got %s before the list_changed broadcast", got)
	}
	get.Body.Close()
}

// TestSamplingRoundTrip answers the fixture's sampling request, which must
// come on the tool call's own stream.
func TestSamplingRoundTrip(t *testing.T) {
	hs := startFixture(t, HTTPConfig{})
	c := newClient(t, hs.URL)
	c.initialize(`{"sampling":{},"elicitation":{}}`)
	resp := c.do("POST", `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"test_sampling","arguments":{"prompt":"hi"}}}`, nil)
	ev := events(t, resp)
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
		Params struct {
			Messages []struct {
				Content struct{ Text string } `json:"content"`
			} `json:"messages"`
		} `json:"params"`
	}
	if err := json.Unmarshal([]byte(next(t, ev)), &req); err != nil || req.Method != "sampling/createMessage" ||
		len(req.Params.Messages) != 1 || req.Params.Messages[0].Content.Text != "hi" {
		t.Fatalf("want sampling/createMessage for hi, got %+v (%v)", req, err)
	}
	answer := c.do("POST", `{"jsonrpc":"2.0","id":`+string(req.ID)+`,"result":{"role":"assistant","content":{"type":"text","text":"hello"},"model":"m"}}`, nil)
	answer.Body.Close()
	if answer.StatusCode != http.StatusAccepted {
		t.Fatalf("answer: %d", answer.StatusCode)
	}
	if got := next(t, ev); !strings.Contains(got, `"id":7`) || !strings.Contains(got, "LLM response: hello") {
		t.Fatalf("got %s", got)
	}
}

func TestSessionsAndGuard(t *testing.T) {
	hs := startFixture(t, HTTPConfig{AllowedHosts: []string{"relay.example"}, AllowedOrigins: []string{"https://app.example"}})
	c := newClient(t, hs.URL)
	c.initialize(`{}`)
	ping := `{"jsonrpc":"2.0","id":1,"method":"ping"}`
	tests := []struct {
		name    string
		session string
		hdr     map[string]string
		want    int
	}{
		{"ok", c.session, nil, 200},
		{"no session", "", nil, 400},
		{"unknown session", "0123", nil, 404},
		{"bad protocol version", c.session, map[string]string{"Mcp-Protocol-Version": "1999-01-01"}, 400},
		{"evil host", c.session, map[string]string{"Host": "evil.example.com"}, 403},
		{"evil origin", c.session, map[string]string{"Origin": "http://evil.example.com"}, 403},
		{"malformed origin", c.session, map[string]string{"Origin": "::"}, 403},
		{"loopback origin", c.session, map[string]string{"Origin": "http://localhost:5173"}, 200},
		{"allowed host", c.session, map[string]string{"Host": "relay.example:443"}, 200},
		{"allowed origin", c.session, map[string]string{"Origin": "https://app.example"}, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cc := *c
			cc.t = t
			cc.session = tt.session
			req, _ := http.NewRequest("POST", c.url, strings.NewReader(ping))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Accept", "application/json, text/event-stream")
			if tt.session != "" {
				req.Header.Set("Mcp-Session-Id", tt.session)
			}
			for k, v := range tt.hdr {
				req.Header.Set(k, v)
			}
			if h, ok := tt.hdr["Host"]; ok {
				req.Host = h
			}
			resp, err := cc.hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.want, body)
			}
			if tt.want >= 400 && !bytes.Contains(body, []byte(`"error"`)) {
				t.Fatalf("error without a JSON-RPC error body: %s", body)
			}
		})
	}
	del := c.do("DELETE", "", nil)
	del.Body.Close()
	if del.StatusCode != 200 {
		t.Fatalf("DELETE: %d", del.StatusCode)
	}
	after := c.do("POST", ping, nil)
	after.Body.Close()
	if after.StatusCode != 404 {
		t.Fatalf("after DELETE: %d, want 404", after.StatusCode)
	}
}

func TestStdioEchoesBigProgressTokens(t *testing.T) {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- ServeStdio(ctx, inR, outW, nil)
		outW.Close()
	}()
	defer func() {
		inW.Close()
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	send := func(s string) {
		if _, err := io.WriteString(inW, s+"\n"); err != nil {
			t.Fatal(err)
		}
	}
	send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`)
	if got := next(t, lines); !strings.Contains(got, `"serverInfo"`) {
		t.Fatalf("initialize: %s", got)
	}
	send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	const token = "9007199254740993" // 2^53+1: a float64 would say ...992
	send(`{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"test_tool_with_progress","arguments":{},"_meta":{"progressToken":` + token + `}}}`)
	for range ProgressSteps {
		if got := next(t, lines); !strings.Contains(got, `"progressToken":`+token+`,`) {
			t.Fatalf("got %s, want progress with token %s", got, token)
		}
	}
	if got := next(t, lines); !strings.Contains(got, `"id":2`) {
		t.Fatalf("got %s, want the result", got)
	}
}

func TestToolArgumentsValidated(t *testing.T) {
	hs := startFixture(t, HTTPConfig{})
	c := newClient(t, hs.URL)
	c.initialize(`{}`)
	tests := []struct{ args, want string }{
		{`{"name":"sleep","arguments":{"ms":-1}}`, `"isError":true`},
		{`{"name":"large_output","arguments":{"bytes":1e12}}`, `"isError":true`},
		{`{"name":"large_output","arguments":{"bytes":30}}`, `"text":"abcdefghijklmnopqrstuvwxyzabcd"`},
		{`{"name":"echo","arguments":{"text":"héllo \u0000"}}`, `"text":"héllo \u0000"`},
		{`{"name":"echo","arguments":{}}`, `"isError":true`},
	}
	for _, tt := range tests {
		resp := c.do("POST", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":`+tt.args+`}`, nil)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), tt.want) {
			t.Errorf("%s: got %s, want %s", tt.args, body, tt.want)
		}
	}
}

func TestSleepStopsWhenCancelled(t *testing.T) {
	hs := startFixture(t, HTTPConfig{})
	c := newClient(t, hs.URL)
	c.initialize(`{}`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "POST", c.url, strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sleep","arguments":{"ms":600000}}}`))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Session-Id", c.session)
	errc := make(chan error, 1)
	var answer []byte
	go func() {
		resp, err := c.hc.Do(req)
		if err == nil {
			answer, err = io.ReadAll(resp.Body)
			resp.Body.Close()
		}
		errc <- err
	}()
	// Cancel through the protocol. The notification may overtake the call,
	// when it cancels nothing, so repeat it until the call ends.
	deadline := time.After(10 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		note := c.do("POST", `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}`, nil)
		note.Body.Close()
		select {
		case err := <-errc:
			if err != nil {
				t.Fatalf("cancelled call: %v", err)
			}
			// Ended by the cancellation, not answered at once for some
			// other reason (a refused argument, an unknown tool).
			if !strings.Contains(string(answer), "sleep interrupted: context canceled") {
				t.Fatalf("the sleep call ended with %s, not by its cancellation", answer)
			}
			return
		case <-deadline:
			cancel()
			<-errc
			t.Fatal("sleep did not stop within 10s of notifications/cancelled")
		case <-tick.C:
		}
	}
}

// TestModernEraDelegated checks that a stateless 2026-07-28 request reaches
// mcp-go's own handler and is served without a session.
func TestModernEraDelegated(t *testing.T) {
	hs := startFixture(t, HTTPConfig{})
	c := newClient(t, hs.URL)
	resp := c.do("POST", `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"},`+
		`"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}`,
		map[string]string{"Mcp-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "echo"})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"text":"hi"`) || resp.Header.Get("Mcp-Session-Id") != "" {
		t.Fatalf("modern tools/call: %d %s (session %q)", resp.StatusCode, body, resp.Header.Get("Mcp-Session-Id"))
	}
}

// TestAnswerFollowsAccept: a client ranking text/event-stream first gets
// an SSE answer even for a lone response, like from mcptun's bridge; the
// usual "application/json, text/event-stream" gets plain JSON.
func TestAnswerFollowsAccept(t *testing.T) {
	hs := startFixture(t, HTTPConfig{})
	c := newClient(t, hs.URL)
	c.initialize(`{}`)
	for _, tc := range []struct{ accept, want string }{
		{"application/json, text/event-stream", "application/json"},
		{"text/event-stream, application/json", "text/event-stream"},
		{"application/json;q=0.5, text/event-stream", "text/event-stream"},
	} {
		resp := c.do("POST", `{"jsonrpc":"2.0","id":7,"method":"ping"}`, map[string]string{"Accept": tc.accept})
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != tc.want || !strings.Contains(string(body), `"id":7`) {
			t.Errorf("Accept %q: %d %s %s, want %s", tc.accept, resp.StatusCode, ct, body, tc.want)
		}
	}
}

// lockedBuffer is a nonce log the test can read while the server writes.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRecordLogsEachExecution: the record_nonce tool writes one line per
// execution (a repeated nonce twice), refuses nonces that would break the
// log's lines, and is absent unless a log is configured.
func TestRecordLogsEachExecution(t *testing.T) {
	var log lockedBuffer
	hs, err := ServeHTTP(NewServer(ServerOptions{NonceLog: &log}), "127.0.0.1:0", HTTPConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := hs.Close(); err != nil {
			t.Error(err)
		}
	})
	c := newClient(t, hs.URL)
	c.initialize(`{}`)
	tests := []struct{ args, want string }{
		{`{"name":"record_nonce","arguments":{"nonce":"a-1"}}`, `"text":"recorded a-1"`},
		{`{"name":"record_nonce","arguments":{"nonce":"a-2","ms":1}}`, `"text":"recorded a-2"`},
		{`{"name":"record_nonce","arguments":{"nonce":"a-1"}}`, `"text":"recorded a-1"`},
		{`{"name":"record_nonce","arguments":{"nonce":"two words"}}`, `"isError":true`},
		{`{"name":"record_nonce","arguments":{"nonce":""}}`, `"isError":true`},
		{`{"name":"record_nonce","arguments":{"nonce":"a-3","ms":-1}}`, `"isError":true`},
		{`{"name":"record_nonce","arguments":{}}`, `"isError":true`},
	}
	for _, tt := range tests {
		resp := c.do("POST", `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":`+tt.args+`}`, nil)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), tt.want) {
			t.Errorf("%s: got %s, want %s", tt.args, body, tt.want)
		}
	}
	pid := os.Getpid()
	if got, want := log.String(), fmt.Sprintf("a-1 %d\na-2 %d\na-1 %d\n", pid, pid, pid); got != want {
		t.Errorf("nonce log %q, want %q", got, want)
	}

	plain := startFixture(t, HTTPConfig{})
	pc := newClient(t, plain.URL)
	pc.initialize(`{}`)
	resp := pc.do("POST", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, nil)
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), `"name":"record_nonce"`) {
		t.Errorf("record_nonce listed without a nonce log: %s", body)
	}
}
