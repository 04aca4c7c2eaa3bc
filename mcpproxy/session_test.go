//go:build unix

package mcpproxy

import (
	"fmt"
	"log/slog"
	"testing"
	"time"
)

// bareSession is a session with no child, for the bookkeeping alone.
func bareSession(t *testing.T, logs *logSink) *session {
	t.Helper()
	h := &Handler{log: slog.New(logs), opts: Options{IdleTimeout: time.Hour, KeepAlive: time.Hour, MaxSessions: defaultMaxSessions}}
	srv := newStdioServer(h, ServerConfig{Name: "bare"})
	s := newSession(srv, nil, "")
	t.Cleanup(func() { s.idle.Stop() })
	return s
}

func mustPeek(t *testing.T, s string) *Message {
	t.Helper()
	m, err := Peek([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return &m
}

func TestIDAndTokenMapping(t *testing.T) {
	s := bareSession(t, &logSink{})
	body := `{"jsonrpc":"2.0","id":9007199254740993,"method":"tools/call","params":{"_meta":{"progressToken":"tok\u00e9"},"name":"x"}}`
	c, line, err := s.startCall(mustPeek(t, body), []byte(body), "")
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"progressToken":1},"name":"x"}}` + "\n"; string(line) != want {
		t.Fatalf("line to child:\n%s\nwant\n%s", line, want)
	}
	if _, _, err := s.startCall(mustPeek(t, body), []byte(body), ""); err != errDuplicateID {
		t.Fatalf("same id in flight: %v", err)
	}

	// Cancellation names the client's id; the child gets ours. Unknown ids
	// pass unchanged.
	cancel := `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":9007199254740993}}`
	out, err := s.clientLine(mustPeek(t, cancel), []byte(cancel))
	if err != nil || string(out) != `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}`+"\n" {
		t.Fatalf("cancel: %s %v", out, err)
	}
	other := `{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}`
	if out, _ := s.clientLine(mustPeek(t, other), []byte(other)); string(out) != other+"\n" {
		t.Fatalf("unknown cancel changed: %s", out)
	}

	// From the child: progress and response get the client's bytes back.
	s.fromChild([]byte(`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":0.5}}`))
	s.fromChild([]byte(`{"jsonrpc":"2.0","id":1,"result":{"content":[]}}`))
	evs, complete, _ := s.eventsAfter(c.stream, c.stream.primed)
	if len(evs) != 2 || !complete {
		t.Fatalf("events %d complete %v", len(evs), complete)
	}
	if got := string(evs[0].data); got != `{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok\u00e9","progress":0.5}}` {
		t.Fatalf("progress: %s", got)
	}
	if got := string(evs[1].data); got != `{"jsonrpc":"2.0","id":9007199254740993,"result":{"content":[]}}` || !evs[1].response {
		t.Fatalf("response: %s", got)
	}
	// The id is free again, and the token is forgotten.
	if len(s.pending) != 0 || len(s.byClientID) != 0 || len(s.tokens) != 0 {
		t.Fatalf("leftover state: %d %d %d", len(s.pending), len(s.byClientID), len(s.tokens))
	}
}

func TestRouting(t *testing.T) {
	logs := &logSink{}
	s := bareSession(t, logs)
	start := func(id int) *call {
		body := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"m"}`, id)
		c, _, err := s.startCall(mustPeek(t, body), []byte(body), "")
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a, b := start(10), start(11)
	note := []byte(`{"jsonrpc":"2.0","method":"notifications/message","params":{}}`)
	where := func() *stream {
		s.fromChild(note)
		return s.events[len(s.events)-1].stream
	}
	if where() != b.stream {
		t.Fatal("not on the most recent request's stream")
	}
	s.detach(b.stream)
	if where() != a.stream {
		t.Fatal("not on the connected request's stream")
	}
	s.detach(a.stream)
	if where() != s.standalone {
		t.Fatal("not on the standalone stream")
	}
	// Garbage and strays are logged, not routed.
	n := len(s.events)
	s.fromChild([]byte(`not json`))
	s.fromChild([]byte(`{"jsonrpc":"2.0","id":99,"result":{}}`))
	if len(s.events) != n || logs.find("not a JSON-RPC message") == "" || logs.find("not in flight") == "" {
		t.Fatal("bad lines not just logged")
	}
}

func TestReplayBuffer(t *testing.T) {
	logs := &logSink{}
	s := bareSession(t, logs)
	live := s.standalone
	live.attached = true
	s.mu.Lock()
	for i := range replayMaxEvents + 10 {
		s.appendLocked(live, &event{data: []byte(fmt.Sprint(i))})
	}
	s.mu.Unlock()
	if len(s.events) != replayMaxEvents+10 {
		t.Fatalf("a connected stream lost undelivered events: %d left", len(s.events))
	}
	// Delivered, they make room.
	evs, _, _ := s.eventsAfter(live, 0)
	for _, ev := range evs[:20] {
		s.markDelivered(ev)
	}
	s.mu.Lock()
	s.appendLocked(live, &event{data: []byte("x")})
	s.mu.Unlock()
	if len(s.events) != replayMaxEvents || string(s.events[0].data) != "11" {
		t.Fatalf("after delivery: %d events, oldest %s", len(s.events), s.events[0].data)
	}
	// Nobody connected: undelivered events go too (after the 9 delivered
	// ones left), logged.
	s.detach(live)
	s.mu.Lock()
	for range 15 {
		s.appendLocked(live, &event{data: []byte("y")})
	}
	s.mu.Unlock()
	if len(s.events) != replayMaxEvents || s.dropped != 6 {
		t.Fatalf("detached: %d events, %d dropped", len(s.events), s.dropped)
	}
	if logs.find("replay buffer full", "dropped_so_far=1") == "" {
		t.Fatal("drop not logged")
	}
	// Bytes bound too, but the newest event always stays.
	s.mu.Lock()
	s.appendLocked(live, &event{data: make([]byte, replayMaxBytes+1)})
	s.mu.Unlock()
	if len(s.events) != 1 || s.bufBytes != replayMaxBytes+1 {
		t.Fatalf("byte bound: %d events, %d bytes", len(s.events), s.bufBytes)
	}
	// Resume points.
	if _, _, err := s.resumePoint("0.999999"); err == nil {
		t.Fatal("future event id accepted")
	}
	if st, cur, err := s.resumePoint(fmt.Sprintf("0.%d", s.seq-1)); err != nil || st != live || cur != s.seq-1 {
		t.Fatalf("resume: %v %v %v", st, cur, err)
	}
}
