//go:build unix

package mcpproxy

import (
	"bufio"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestRawFidelity(t *testing.T) {
	b := newBridge(t, Options{})
	sid := b.initialize(t)

	// An id no float64 holds, unknown members, _meta, pretty-printing.
	req := "{\n  \"jsonrpc\": \"2.0\",\n  \"id\": 9007199254740993,\n  \"method\": \"tools/call\",\n" +
		"  \"params\": {\"name\": \"echo\", \"arguments\": {\"text\": \"hi\\nthere\"},\n" +
		"    \"_meta\": {\"x-trace\": 12345678901234567890}, \"unknownField\": [1, 2]},\n  \"extra\": true\n}"
	out := b.call(t, sid, req)
	if !strings.HasPrefix(out, `{"jsonrpc":"2.0","id":9007199254740993,`) || !strings.Contains(out, `hi\nthere`) {
		t.Fatalf("reply does not carry the exact id: %s", out)
	}

	// A string id with escapes comes back byte for byte.
	out = b.call(t, sid, `{"jsonrpc":"2.0","id":"a\"b\u00e9\/","method":"ping"}`)
	if !strings.Contains(out, `"id":"a\"b\u00e9\/"`) {
		t.Fatalf("string id changed: %s", out)
	}

	// Same id again once the first finished is fine; two at once are not
	// (checked in TestStatusCodes via the progress tool).
	out = b.call(t, sid, `{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/list"}`)
	if !strings.Contains(out, `"echo"`) {
		t.Fatalf("tools/list: %s", out)
	}
}

func TestStatusCodes(t *testing.T) {
	b := newBridge(t, Options{MaxMessageBytes: 1 << 20})
	sid := b.initialize(t)
	ping := `{"jsonrpc":"2.0","id":5,"method":"ping"}`

	type tc struct {
		name       string
		method     string
		path       string // default: the ts endpoint
		sid        string
		body       string
		hdr        []string
		status     int
		wantInBody string
	}
	tests := []tc{
		{name: "unknown session", method: "POST", sid: "0123456789abcdef0123456789abcdef", body: ping, status: 404, wantInBody: `"id":5`},
		{name: "missing session", method: "POST", body: ping, status: 400, wantInBody: "Mcp-Session-Id"},
		{name: "unsupported version", method: "POST", sid: sid, body: ping, hdr: []string{"Mcp-Protocol-Version", "1999-01-01"}, status: 400, wantInBody: `"supported":["2026-07-28","2025-11-25"`},
		{name: "stateless without Mcp-Method", method: "POST", body: `{"jsonrpc":"2.0","id":1,"method":"server/discover"}`, hdr: []string{"Mcp-Protocol-Version", "2026-07-28"}, status: 400, wantInBody: "-32020"},
		{name: "stateless Mcp-Method mismatch", method: "POST", body: `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, hdr: []string{"Mcp-Protocol-Version", "2026-07-28", "Mcp-Method", "tools/call"}, status: 400, wantInBody: "does not match"},
		{name: "stateless Mcp-Name mismatch", method: "POST", body: `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}`, hdr: []string{"Mcp-Protocol-Version", "2026-07-28", "Mcp-Method", "tools/call", "Mcp-Name", "=?base64?ZWNobzI=?="}, status: 400, wantInBody: `"echo2\" does not match`},
		{name: "stateless GET", method: "GET", hdr: []string{"Mcp-Protocol-Version", "2026-07-28"}, status: 405},
		{name: "stateless DELETE", method: "DELETE", hdr: []string{"Mcp-Protocol-Version", "2026-07-28"}, status: 405},
		{name: "batch", method: "POST", sid: sid, body: "[" + ping + "]", status: 400, wantInBody: "batches"},
		{name: "invalid json", method: "POST", sid: sid, body: `{"jsonrpc":`, status: 400, wantInBody: "-32700"},
		{name: "not json-rpc", method: "POST", sid: sid, body: `{"hello":1}`, status: 400, wantInBody: "-32600"},
		{name: "too big", method: "POST", sid: sid, body: `{"jsonrpc":"2.0","method":"x","params":{"a":"` + strings.Repeat("a", 1<<20) + `"}}`, status: 413, wantInBody: "limit"},
		{name: "wrong content type", method: "POST", sid: sid, body: ping, hdr: []string{"Content-Type", "text/plain"}, status: 415},
		{name: "not acceptable", method: "POST", sid: sid, body: ping, hdr: []string{"Accept", "text/html"}, status: 406},
		{name: "wildcard accept", method: "POST", sid: sid, body: ping, hdr: []string{"Accept", "*/*"}, status: 200, wantInBody: `"result":{}`},
		{name: "no accept", method: "POST", sid: sid, body: ping, hdr: []string{"Accept", ""}, status: 200},
		{name: "sse preferred", method: "POST", sid: sid, body: ping, hdr: []string{"Accept", "text/event-stream, application/json"}, status: 200,
			wantInBody: "retry: 2000\nid: "},
		{name: "notification", method: "POST", sid: sid, body: `{"jsonrpc":"2.0","method":"notifications/whatever"}`, status: 202},
		{name: "put", method: "PUT", sid: sid, body: ping, status: 405},
		{name: "get without session", method: "GET", status: 400},
		{name: "get unknown session", method: "GET", sid: "nope", status: 404},
		{name: "get bad last-event-id", method: "GET", sid: sid, hdr: []string{"Last-Event-ID", "banana"}, status: 400},
		{name: "get evicted stream", method: "GET", sid: sid, hdr: []string{"Last-Event-ID", "999.1"}, status: 400},
		{name: "get not acceptable", method: "GET", sid: sid, hdr: []string{"Accept", "application/json"}, status: 406},
		{name: "delete unknown", method: "DELETE", sid: "nope", status: 404},
		{name: "delete without session", method: "DELETE", status: 400},
		{name: "unknown server", method: "POST", path: "/nope/mcp", body: ping, status: 404},
		{name: "sub path", method: "POST", path: "/ts/mcp/x", body: ping, status: 404},
		{name: "root", method: "GET", path: "/", status: 404},
		{name: "escaped slash", method: "POST", path: "/ts%2Fmcp/mcp", body: ping, status: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := b.url
			if tt.path != "" {
				u = b.srv.URL + tt.path
			}
			orig := b.url
			b.url = u
			resp := b.do(t, tt.method, tt.sid, tt.body, tt.hdr...)
			b.url = orig
			body := readBody(t, resp)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d; body %s", resp.StatusCode, tt.status, body)
			}
			if tt.wantInBody != "" && !strings.Contains(body, tt.wantInBody) {
				t.Fatalf("body %s lacks %q", body, tt.wantInBody)
			}
			if resp.StatusCode >= 400 && !json.Valid([]byte(body)) {
				t.Fatalf("error body is not JSON: %q", body)
			}
			if tt.status == 405 && resp.Header.Get("Allow") != "GET, POST, DELETE" && resp.Header.Get("Allow") != "POST" {
				t.Fatalf("Allow = %q", resp.Header.Get("Allow"))
			}
		})
	}

	// A second GET on the standalone stream while one is open: 409.
	get := b.do(t, http.MethodGet, sid, "")
	defer get.Body.Close()
	if get.StatusCode != 200 {
		t.Fatalf("GET: %d", get.StatusCode)
	}
	if resp := b.do(t, http.MethodGet, sid, ""); resp.StatusCode != http.StatusConflict {
		t.Fatalf("second GET: %d %s", resp.StatusCode, readBody(t, resp))
	} else {
		resp.Body.Close()
	}

	// A request id already in flight: 400.
	first := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":"dup","method":"tools/call","params":{"name":"progress","arguments":{"steps":1},"_meta":{"progressToken":"d"}}}`)
	defer first.Body.Close()
	if ct := first.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("progress call answered %s", ct)
	}
	if resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":"dup","method":"ping"}`); resp.StatusCode != 400 {
		t.Fatalf("duplicate id: %d", resp.StatusCode)
	} else {
		readBody(t, resp)
	}
	b.call(t, sid, `{"jsonrpc":"2.0","id":"rel","method":"tools/call","params":{"name":"release"}}`)
	if body := readBody(t, first); !strings.Contains(body, "progress done") {
		t.Fatalf("progress stream: %s", body)
	}
}

func TestProgressAndStreams(t *testing.T) {
	b := newBridge(t, Options{})
	sid := b.initialize(t)

	// Progress notifications ride on the stream of the request whose token
	// they name, before its response.
	resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"progress","arguments":{"steps":3},"_meta":{"progressToken":9007199254740993}}}`)
	defer resp.Body.Close()
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != want {
			t.Fatalf("%s = %q, want %q", k, got, want)
		}
	}
	sse := newSSEReader(resp.Body)
	prime, err := sse.next()
	if err != nil || prime.data != "" || prime.id == "" || sse.retry != "2000" {
		t.Fatalf("priming event: %+v retry %q err %v", prime, sse.retry, err)
	}
	seen := map[string]bool{prime.id: true}
	for i := 1; i <= 3; i++ {
		ev := sse.nextData(t)
		if !strings.Contains(ev.data, `"progressToken":9007199254740993`) || !strings.Contains(ev.data, fmt.Sprintf(`"progress":%d`, i)) {
			t.Fatalf("event %d: %s", i, ev.data)
		}
		if seen[ev.id] || !strings.HasPrefix(ev.id, strings.Split(prime.id, ".")[0]+".") {
			t.Fatalf("event id %q not unique or not of this stream (%q)", ev.id, prime.id)
		}
		seen[ev.id] = true
	}
	// Release it from a second request: that one is plain JSON.
	if out := b.call(t, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"release"}}`); !strings.Contains(out, "released") {
		t.Fatalf("release: %s", out)
	}
	ev := sse.nextData(t)
	if !strings.HasPrefix(ev.data, `{"jsonrpc":"2.0","id":1,`) || !strings.Contains(ev.data, "progress done") {
		t.Fatalf("response event: %s", ev.data)
	}
	if _, err := sse.next(); err == nil {
		t.Fatal("stream went on after the response")
	}

	// A server notification with no request in flight waits for, then goes
	// on, the standalone GET stream.
	notify := `{"jsonrpc":"2.0","method":"notifications/roots/list_changed"}`
	if code, body := b.status(t, http.MethodPost, sid, notify); code != 202 {
		t.Fatalf("notification: %d (%s)", code, body)
	}
	get := b.do(t, http.MethodGet, sid, "")
	gs := newSSEReader(get.Body)
	first := gs.nextData(t)
	if !strings.Contains(first.data, "roots changed") {
		t.Fatalf("GET stream: %s", first.data)
	}
	get.Body.Close()

	// Resume: what was sent while no GET was open arrives after the last id.
	if code, body := b.status(t, http.MethodPost, sid, notify); code != 202 {
		t.Fatalf("notification: %d (%s)", code, body)
	}
	// The old connection may still hold the stream for a moment.
	var resumed *http.Response
	eventually(t, 5*time.Second, "GET to reattach", func() bool {
		resumed = b.do(t, http.MethodGet, sid, "", "Last-Event-ID", first.id)
		if resumed.StatusCode == http.StatusConflict {
			resumed.Body.Close()
			return false
		}
		return true
	})
	defer resumed.Body.Close()
	rs := newSSEReader(resumed.Body)
	if p, err := rs.next(); err != nil || p.id != first.id {
		t.Fatalf("resumed priming id %q, want %q (%v)", p.id, first.id, err)
	}
	second := rs.nextData(t)
	if !strings.Contains(second.data, "roots changed") || second.id == first.id {
		t.Fatalf("resumed stream: %+v after %q", second, first.id)
	}
}

func TestDisconnectIsNotCancellation(t *testing.T) {
	b := newBridge(t, Options{})
	sid := b.initialize(t)
	resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":"slow","method":"tools/call","params":{"name":"progress","arguments":{"steps":1},"_meta":{"progressToken":"p"}}}`)
	sse := newSSEReader(resp.Body)
	prime, err := sse.next()
	if err != nil || prime.id == "" {
		t.Fatalf("priming: %+v %v", prime, err)
	}
	progress := sse.nextData(t)
	resp.Body.Close() // the client goes away mid-request

	b.call(t, sid, `{"jsonrpc":"2.0","id":"r","method":"tools/call","params":{"name":"release"}}`)

	// Resuming from the priming event replays the progress and the response.
	var get *http.Response
	eventually(t, 5*time.Second, "POST stream to be released", func() bool {
		get = b.do(t, http.MethodGet, sid, "", "Last-Event-ID", prime.id)
		if get.StatusCode == http.StatusConflict {
			get.Body.Close()
			return false
		}
		return true
	})
	defer get.Body.Close()
	if get.StatusCode != 200 {
		t.Fatalf("resume: %d %s", get.StatusCode, readBody(t, get))
	}
	rs := newSSEReader(get.Body)
	if ev := rs.nextData(t); ev.id != progress.id {
		t.Fatalf("replayed %q, want the progress event %q", ev.id, progress.id)
	}
	if ev := rs.nextData(t); !strings.Contains(ev.data, `"id":"slow"`) || !strings.Contains(ev.data, "progress done") {
		t.Fatalf("replayed response: %s", ev.data)
	}
	if _, err := rs.next(); err == nil {
		t.Fatal("resumed stream did not end after the response")
	}
}

func TestSampling(t *testing.T) {
	b := newBridge(t, Options{})
	sid := b.initialize(t)
	resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"sample","arguments":{"prompt":"2+2?"}}}`)
	defer resp.Body.Close()
	sse := newSSEReader(resp.Body)
	ev := sse.nextData(t)
	var req struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if err := json.Unmarshal([]byte(ev.data), &req); err != nil || req.Method != "sampling/createMessage" {
		t.Fatalf("expected a sampling request on the POST stream, got %s (%v)", ev.data, err)
	}
	answer := `{"jsonrpc":"2.0","id":` + string(req.ID) + `,"result":{"role":"assistant","content":{"type":"text","text":"4"},"model":"m1"}}`
	if code, body := b.status(t, http.MethodPost, sid, answer); code != 202 {
		t.Fatalf("answer: %d %s", code, body)
	}
	ev = sse.nextData(t)
	if !strings.HasPrefix(ev.data, `{"jsonrpc":"2.0","id":10,`) || !strings.Contains(ev.data, "sampled: 4 by m1") {
		t.Fatalf("tool result: %s", ev.data)
	}
}

func TestBigMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("moves 64 MiB")
	}
	b := newBridge(t, Options{})
	sid := b.initialize(t)
	const size = 16 << 20

	out := b.call(t, sid, fmt.Sprintf(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"big","arguments":{"size":%d}}}`, size))
	if len(out) < size || !strings.HasPrefix(out, `{"jsonrpc":"2.0","id":1,`) {
		t.Fatalf("big result: %d bytes, starts %.80s", len(out), out)
	}

	text := strings.Repeat("y", size)
	out = b.call(t, sid, `{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"`+text+`"}}}`)
	if !strings.Contains(out, text) {
		t.Fatalf("big echo: %d bytes", len(out))
	}
}

func TestOversizedChildMessage(t *testing.T) {
	b := newBridge(t, Options{MaxMessageBytes: 1 << 20})
	sid := b.initialize(t)
	resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":"huge","method":"tools/call","params":{"name":"big","arguments":{"size":2000000}}}`)
	body := readBody(t, resp)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `"id":"huge"`) || !strings.Contains(body, "over the limit of 1048576 bytes") {
		t.Fatalf("oversized answer: %d %s", resp.StatusCode, body)
	}
	// The session survives.
	if out := b.call(t, sid, `{"jsonrpc":"2.0","id":3,"method":"ping"}`); !strings.Contains(out, `"result"`) {
		t.Fatalf("after oversized: %s", out)
	}
	if b.logs.find("exceeds MaxMessageBytes") == "" {
		t.Fatal("oversized message not logged")
	}
}

// pidOf asks the session's child for its pid.
func (b *bridge) pidOf(t *testing.T, sid, tool string) int {
	t.Helper()
	out := b.call(t, sid, `{"jsonrpc":"2.0","id":"pid","method":"tools/call","params":{"name":"`+tool+`"}}`)
	var res struct {
		Result struct {
			Content []struct{ Text string } `json:"content"`
		} `json:"result"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Result.Content) == 0 {
		t.Fatalf("%s: %s (%v)", tool, out, err)
	}
	pid, err := strconv.Atoi(res.Result.Content[0].Text)
	if err != nil {
		t.Fatal(err)
	}
	return pid
}

func TestNoOrphans(t *testing.T) {
	t.Run("delete", func(t *testing.T) {
		b := newBridge(t, Options{})
		sid := b.initialize(t)
		child, grandchild := b.pidOf(t, sid, "pid"), b.pidOf(t, sid, "spawn")
		if processGone(child) || processGone(grandchild) {
			t.Fatal("processes not running before DELETE")
		}
		if code, body := b.status(t, http.MethodDelete, sid, ""); code != http.StatusNoContent {
			t.Fatalf("DELETE: %d (%s)", code, body)
		}
		if code, body := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`); code != 404 {
			t.Fatalf("after DELETE: %d (%s)", code, body)
		}
		eventually(t, 10*time.Second, "child and grandchild to exit", func() bool {
			return processGone(child) && processGone(grandchild)
		})
	})
	t.Run("idle", func(t *testing.T) {
		b := newBridge(t, Options{IdleTimeout: 300 * time.Millisecond})
		sid := b.initialize(t)
		child, grandchild := b.pidOf(t, sid, "pid"), b.pidOf(t, sid, "spawn")
		eventually(t, 10*time.Second, "idle session's processes to exit", func() bool {
			return processGone(child) && processGone(grandchild)
		})
		if code, body := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`); code != 404 {
			t.Fatalf("after idle timeout: %d (%s)", code, body)
		}
		if b.logs.find("session ended", "idle") == "" {
			t.Fatal("idle end not logged")
		}
	})
	t.Run("open GET is not idle", func(t *testing.T) {
		b := newBridge(t, Options{IdleTimeout: 200 * time.Millisecond, KeepAlive: 50 * time.Millisecond})
		sid := b.initialize(t)
		get := b.do(t, http.MethodGet, sid, "")
		gs := newSSEReader(get.Body)
		// Several keep-alives later the session still serves.
		for i := 0; i < 8; i++ {
			line, err := gs.br.ReadString('\n')
			if err != nil {
				t.Fatalf("GET stream ended: %v", err)
			}
			_ = line
		}
		if out := b.call(t, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`); !strings.Contains(out, "result") {
			t.Fatal(out)
		}
		get.Body.Close()
	})
	t.Run("close", func(t *testing.T) {
		b := newBridge(t, Options{})
		var pids []int
		for range 3 {
			sid := b.initialize(t)
			pids = append(pids, b.pidOf(t, sid, "pid"), b.pidOf(t, sid, "spawn"))
		}
		// A request in flight gets an error when the handler closes.
		resp := b.do(t, http.MethodPost, b.initialize(t), `{"jsonrpc":"2.0","id":"w","method":"tools/call","params":{"name":"progress","arguments":{"steps":1},"_meta":{"progressToken":1}}}`)
		sse := newSSEReader(resp.Body)
		sse.nextData(t)
		if err := b.h.Close(); err != nil {
			t.Fatal(err)
		}
		for _, pid := range pids {
			if !processGone(pid) {
				eventually(t, 5*time.Second, fmt.Sprintf("pid %d to exit", pid), func() bool { return processGone(pid) })
			}
		}
		ev := sse.nextData(t)
		if !strings.Contains(ev.data, `"id":"w"`) || !strings.Contains(ev.data, "shutting down") {
			t.Fatalf("in-flight request at Close: %s", ev.data)
		}
		resp.Body.Close()
		if code, body := b.status(t, http.MethodPost, "", initBody); code != http.StatusServiceUnavailable {
			t.Fatalf("initialize after Close: %d (%s)", code, body)
		}
	})
	t.Run("child exits", func(t *testing.T) {
		b := newBridge(t, Options{})
		sid := b.initialize(t)
		resp := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":"x","method":"tools/call","params":{"name":"exit"}}`)
		body := readBody(t, resp)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, `"id":"x"`) || !strings.Contains(body, "exit status 3") {
			t.Fatalf("request to exiting child: %d %s", resp.StatusCode, body)
		}
		eventually(t, 5*time.Second, "session to be gone", func() bool {
			r := b.do(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`)
			readBody(t, r)
			return r.StatusCode == http.StatusNotFound
		})
	})
}

func TestMaxSessions(t *testing.T) {
	b := newBridge(t, Options{MaxSessions: 1})
	sid := b.initialize(t)
	// Another client: the same one would replace its idle session.
	resp := b.do(t, http.MethodPost, "", initBody, ClientHeader, "other")
	if body := readBody(t, resp); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, "maximum of 1 sessions") {
		t.Fatalf("second session: %d %s", resp.StatusCode, body)
	}
	b.do(t, http.MethodDelete, sid, "").Body.Close()
	eventually(t, 5*time.Second, "a session slot", func() bool {
		r := b.do(t, http.MethodPost, "", initBody)
		readBody(t, r)
		return r.StatusCode == http.StatusOK
	})
}

func TestChildEnvironmentAndStderr(t *testing.T) {
	t.Setenv("MCPTUN_AGENT_SECRET", "do-not-leak")
	b := newBridge(t, Options{})
	sid := b.initialize(t)
	out := b.call(t, sid, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"env"}}`)
	if !strings.Contains(out, "FIXTURE_VAR=given") || !strings.Contains(out, "PATH=") || strings.Contains(out, "do-not-leak") {
		t.Fatalf("child environment: %s", out)
	}
	if b.logs.find("server stderr", "testserver ready", "server=ts", "session="+sid[:8]) == "" {
		t.Fatalf("stderr line not logged with server and session; logs: %v", b.logs.records)
	}
}

func TestNewHandlerValidates(t *testing.T) {
	tests := []struct {
		name string
		cfg  []ServerConfig
		want string
	}{
		{"none", nil, "no servers"},
		{"bad name", []ServerConfig{{Name: "a/b", Command: []string{"x"}}}, "invalid name"},
		{"both", []ServerConfig{{Name: "a", Command: []string{"x"}, URL: "http://h"}}, "not both"},
		{"neither", []ServerConfig{{Name: "a"}}, "set Command"},
		{"dup", []ServerConfig{{Name: "a", Command: []string{"x"}}, {Name: "a", Command: []string{"y"}}}, "duplicate"},
		{"bad url", []ServerConfig{{Name: "a", URL: "ftp://h"}}, "http://"},
		{"headers on command", []ServerConfig{{Name: "a", Command: []string{"x"}, Headers: map[string]string{"A": "b"}}}, "URL servers only"},
		{"env on url", []ServerConfig{{Name: "a", URL: "http://h", Env: map[string]string{"A": "b"}}}, "Command servers only"},
		{"bad header", []ServerConfig{{Name: "a", URL: "http://h", Headers: map[string]string{"A b": "c"}}}, "invalid header"},
		{"hop header", []ServerConfig{{Name: "a", URL: "http://h", Headers: map[string]string{"connection": "c"}}}, "hop-by-hop"},
		{"crlf header", []ServerConfig{{Name: "a", URL: "http://h", Headers: map[string]string{"A": "b\r\nX: y"}}}, "CR"},
		{"empty program", []ServerConfig{{Name: "a", Command: []string{""}}}, "empty program"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := NewHandler(tt.cfg, Options{})
			if err == nil {
				h.Close()
				t.Fatal("no error")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %q lacks %q", err, tt.want)
			}
		})
	}
}

func TestStartFailure(t *testing.T) {
	logs := &logSink{}
	h, err := NewHandler([]ServerConfig{{Name: "bad", Command: []string{"/nonexistent/server"}}}, Options{Logger: slog.New(logs)})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/bad/mcp", strings.NewReader(initBody)))
	if rec.Code != http.StatusBadGateway || !strings.Contains(rec.Body.String(), "cannot start") || strings.Contains(rec.Body.String(), "nonexistent") {
		t.Fatalf("start failure: %d %s", rec.Code, rec.Body)
	}
	if logs.find("cannot start", "nonexistent") == "" {
		t.Fatal("start failure not logged with its cause")
	}
}

// statelessPost sends a 2026-07-28 request the way a client of that era
// does: version header and _meta, Mcp-Method and Mcp-Name, no session.
func (b *bridge) statelessPost(t *testing.T, id, method, tool, args, token string) *http.Response {
	t.Helper()
	meta := `"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"},"io.modelcontextprotocol/clientCapabilities":{}`
	if token != "" {
		meta += `,"progressToken":` + token
	}
	params := `{"_meta":{` + meta + `}`
	if tool != "" {
		params += `,"name":"` + tool + `","arguments":` + args
	}
	params += "}"
	hdr := []string{"Mcp-Protocol-Version", "2026-07-28", "Mcp-Method", method}
	if tool != "" {
		hdr = append(hdr, "Mcp-Name", tool)
	}
	return b.do(t, http.MethodPost, "", `{"jsonrpc":"2.0","id":`+id+`,"method":"`+method+`","params":`+params+`}`, hdr...)
}

func TestStatelessRaw(t *testing.T) {
	b := newBridge(t, Options{})

	// Two clients use the same id at once on the one shared child.
	a := b.statelessPost(t, "7", "tools/call", "progress", `{"steps":1}`, "9007199254740993")
	defer a.Body.Close()
	if a.StatusCode != 200 || a.Header.Get("Content-Type") != "text/event-stream" || a.Header.Get("Mcp-Session-Id") != "" {
		t.Fatalf("progress call: %d %s session %q", a.StatusCode, a.Header.Get("Content-Type"), a.Header.Get("Mcp-Session-Id"))
	}
	as := newSSEReader(a.Body)
	if ev := as.nextData(t); !strings.Contains(ev.data, `"progressToken":9007199254740993`) {
		t.Fatalf("progress: %s", ev.data)
	}
	rel := b.statelessPost(t, "7", "tools/call", "release", `{}`, "")
	if body := readBody(t, rel); rel.StatusCode != 200 || !strings.HasPrefix(body, `{"jsonrpc":"2.0","id":7,`) || !strings.Contains(body, "released") {
		t.Fatalf("release: %d %s", rel.StatusCode, body)
	}
	if ev := as.nextData(t); !strings.HasPrefix(ev.data, `{"jsonrpc":"2.0","id":7,`) || !strings.Contains(ev.data, "progress done") {
		t.Fatalf("progress result: %s", ev.data)
	}

	// Exact id bytes, and error status codes of the era.
	resp := b.statelessPost(t, "9007199254740993", "tools/list", "", "", "")
	if body := readBody(t, resp); !strings.HasPrefix(body, `{"jsonrpc":"2.0","id":9007199254740993,`) {
		t.Fatalf("tools/list: %s", body)
	}
	resp = b.statelessPost(t, `"x"`, "no/such/method", "", "", "")
	if body := readBody(t, resp); resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "-32601") {
		t.Fatalf("unknown method: %d %s", resp.StatusCode, body)
	}

	// Closing the stream cancels the request in the child.
	c := b.statelessPost(t, "8", "tools/call", "progress", `{"steps":1}`, `"c"`)
	newSSEReader(c.Body).nextData(t)
	c.Body.Close()
	eventually(t, 10*time.Second, "the child to see the cancellation", func() bool {
		r := b.statelessPost(t, "9", "tools/call", "cancelled", `{}`, "")
		return strings.Contains(readBody(t, r), `"text":"1"`)
	})

	// The shared child exiting fails its requests; the next one gets a new
	// child.
	pid := func() string {
		r := b.statelessPost(t, "10", "tools/call", "pid", `{}`, "")
		return readBody(t, r)
	}
	before := pid()
	resp = b.statelessPost(t, "11", "tools/call", "exit", `{}`, "")
	if body := readBody(t, resp); resp.StatusCode != http.StatusBadGateway || !strings.Contains(body, "exit status 3") {
		t.Fatalf("exit: %d %s", resp.StatusCode, body)
	}
	eventually(t, 10*time.Second, "a new shared child", func() bool {
		after := pid()
		return strings.Contains(after, `"result"`) && after != before
	})

	// Session-era requests still get their own children beside it.
	sid := b.initialize(t)
	if out := b.call(t, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`); !strings.Contains(out, "result") {
		t.Fatal(out)
	}
}

// TestKeepAlive: an idle SSE stream gets ": keepalive" comments, on the
// standalone GET stream of a session and on a stateless request's stream.
func TestKeepAlive(t *testing.T) {
	b := newBridge(t, Options{KeepAlive: 20 * time.Millisecond})
	sid := b.initialize(t)
	waitComment := func(t *testing.T, resp *http.Response) {
		t.Helper()
		lines := make(chan string)
		go func() {
			defer close(lines)
			br := bufio.NewReader(resp.Body)
			for {
				line, err := br.ReadString('\n')
				if err != nil {
					return
				}
				select {
				case lines <- strings.TrimRight(line, "\n"):
				case <-time.After(5 * time.Second):
					return
				}
			}
		}()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatal("stream ended before a keep-alive comment")
				}
				if l == ": keepalive" {
					resp.Body.Close()
					for range lines {
					}
					return
				}
			case <-deadline:
				t.Fatal("no keep-alive comment within 5s")
			}
		}
	}
	get := b.do(t, http.MethodGet, sid, "")
	if get.StatusCode != 200 || get.Header.Get("X-Accel-Buffering") != "no" {
		t.Fatalf("GET: %d, X-Accel-Buffering %q", get.StatusCode, get.Header.Get("X-Accel-Buffering"))
	}
	waitComment(t, get)

	// A stateless call that sends progress, then waits for release.
	call := b.statelessPost(t, "1", "tools/call", "progress", `{"steps":1}`, `"k"`)
	if call.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("progress call answered %s", call.Header.Get("Content-Type"))
	}
	waitComment(t, call)
	rel := b.statelessPost(t, "2", "tools/call", "release", `{}`, "")
	readBody(t, rel)
}
