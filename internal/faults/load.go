package faults

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"
)

const protocolVersion = "2025-11-25"

// outcome is how one attempt of a call (or of an initialize) ended, as a
// client that may retry sees it.
type outcome int

const (
	// answered: a 200 whose JSON-RPC message is the result (or error)
	// of the call.
	answered outcome = iota
	// notRun: an answer that says the request never reached the server,
	// so the client may send it again: a status other than 200 whose
	// reason is not an outcome-unknown one, or a connection refused
	// before anything was sent.
	notRun
	// sessionGone: 404, the session ended (its child, agent or upstream
	// went away): the request did not run; the client initializes a new
	// session and sends it again.
	sessionGone
	// unknown: the request may have run, and the answer says so (an
	// outcome-unknown reason) or cannot say (the connection broke after
	// the request was sent, a 200 with a broken body). Not retried.
	unknown
	// lost: no answer within the call deadline: the client hung.
	lost
)

// isOutcomeUnknown reports whether a refusal's reason says the request
// may have been carried out: upstream_outcome_unknown (the exchange broke
// after the request was sent), any other code ending in outcome_unknown,
// and the drain's relay_shutdown and agent_shutdown (the grace ran out
// before the answer). Every other reason promises the request did not run.
func isOutcomeUnknown(reason string) bool {
	switch reason {
	case "relay_shutdown", "agent_shutdown":
		return true
	}
	return strings.HasSuffix(reason, "outcome_unknown")
}

// attempt is the classified result of one HTTP exchange.
type attempt struct {
	kind   outcome
	label  string // for errors: "503 agent_offline", "transport: EOF", ...
	result []byte // answered: the JSON-RPC message
	header http.Header
}

// errorReason extracts error.data.reason (or "" ) from a JSON-RPC shaped body.
func errorReason(body []byte) string {
	var m struct {
		Error struct {
			Data struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	if json.Unmarshal(body, &m) != nil {
		return ""
	}
	return m.Error.Data.Reason
}

// classifyStatus labels a non-200 answer and says whether it promises the
// request did not run.
func classifyStatus(status int, body []byte) attempt {
	reason := errorReason(body)
	label := fmt.Sprintf("%d %s", status, reason)
	if reason == "" {
		label = fmt.Sprintf("%d (no reason)", status)
	}
	switch {
	case isOutcomeUnknown(reason):
		return attempt{kind: unknown, label: label}
	case status == http.StatusNotFound && (reason == "" || reason == "session_not_found"):
		// The session ended: the fixture's 404 carries no reason, the
		// bridge's session_not_found (or none, before it had codes); the
		// relay's own 404s (unknown_agent, ...) are something else.
		return attempt{kind: sessionGone, label: label}
	}
	return attempt{kind: notRun, label: label}
}

// classifyTransport labels an error from the HTTP client. A connection
// the relay refused carried nothing; anything else may have sent the
// request. ctxDeadline says the attempt's own deadline passed: no answer.
func classifyTransport(err error, deadlinePassed bool) attempt {
	if deadlinePassed {
		return attempt{kind: lost, label: "no answer"}
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return attempt{kind: notRun, label: "transport: connect: " + shortErr(err)}
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return attempt{kind: notRun, label: "transport: connection refused"}
	}
	return attempt{kind: unknown, label: "transport: " + shortErr(err)}
}

// shortErr keeps the innermost part of an error chain, the part that
// names what happened (EOF, connection reset), so labels group.
func shortErr(err error) string {
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		s = s[i+2:]
	}
	return s
}

// client is one MCP client session against one relay endpoint, doing
// what a careful client does: a new session when its session is gone, a
// retry only when the answer promises the request did not run.
type client struct {
	hc       *http.Client
	url      string
	token    string
	deadline time.Duration // per attempt: no answer within it is lost
	session  string
}

func (c *client) post(ctx context.Context, body []byte, withSession bool) attempt {
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return attempt{kind: notRun, label: "request: " + err.Error()}
	}
	c.headers(req, withSession)
	resp, err := c.hc.Do(req)
	if err != nil {
		return classifyTransport(err, ctx.Err() != nil)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		if ctx.Err() != nil {
			return attempt{kind: lost, label: "no answer"}
		}
		return classifyStatus(resp.StatusCode, b)
	}
	msg, err := readMessage(resp)
	if err != nil {
		if ctx.Err() != nil {
			return attempt{kind: lost, label: "no answer"}
		}
		return attempt{kind: unknown, label: "200, then: " + shortErr(err)}
	}
	return attempt{kind: answered, result: msg, header: resp.Header}
}

func (c *client) headers(req *http.Request, withSession bool) {
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if withSession && c.session != "" {
		req.Header.Set("Mcp-Session-Id", c.session)
		req.Header.Set("Mcp-Protocol-Version", protocolVersion)
	}
}

// readMessage returns the first JSON-RPC message of a 200 answer, JSON or
// SSE (an answer of 202 has none: it returns nil).
func readMessage(resp *http.Response) ([]byte, error) {
	body := io.LimitReader(resp.Body, 1<<20)
	if resp.StatusCode == http.StatusAccepted {
		_, err := io.Copy(io.Discard, body)
		return nil, err
	}
	if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		b, err := io.ReadAll(body)
		if err == nil && len(bytes.TrimSpace(b)) == 0 {
			err = errors.New("empty body")
		}
		return b, err
	}
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 4096), 1<<20)
	var data []byte
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 {
			// A message with an id is the answer; notifications
			// (progress, logs) come before it.
			if len(bytes.TrimSpace(data)) > 0 && bytes.Contains(data, []byte(`"id"`)) {
				return data, nil
			}
			data = data[:0]
			continue
		}
		if v, ok := bytes.CutPrefix(line, []byte("data:")); ok {
			data = append(data, bytes.TrimPrefix(v, []byte(" "))...)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(bytes.TrimSpace(data)) > 0 {
		return data, nil
	}
	return nil, errors.New("event stream ended without an answer")
}

// initialize opens a session: initialize, then notifications/initialized.
func (c *client) initialize(ctx context.Context) attempt {
	c.session = ""
	a := c.post(ctx, []byte(`{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"`+protocolVersion+
		`","capabilities":{},"clientInfo":{"name":"mcptun-faults","version":"1"}}}`), false)
	if a.kind != answered {
		return a
	}
	id := a.header.Get("Mcp-Session-Id")
	if id == "" {
		return attempt{kind: notRun, label: "initialize: no Mcp-Session-Id"}
	}
	c.session = id
	n := c.post(ctx, []byte(`{"jsonrpc":"2.0","method":"notifications/initialized"}`), true)
	if n.kind != answered {
		c.session = ""
		return n
	}
	return a
}

// end deletes the session (best effort: a session that is gone is gone).
func (c *client) end(ctx context.Context) {
	if c.session == "" {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.deadline)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodDelete, c.url, nil)
	if err != nil {
		return
	}
	c.headers(req, true)
	if resp, err := c.hc.Do(req); err == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}
	c.session = ""
}

// callResult is the final fate of one call (all its attempts).
type callResult struct {
	nonce    string
	kind     outcome // answered, notRun (gave up), unknown, lost
	label    string  // error label; for answered, "" if the result is right
	attempts int
	history  []string // the labels of the attempts that were refused, in order
	took     time.Duration
}

// retryPause is the wait before sending again a request that did not run.
const retryPause = 100 * time.Millisecond

// call runs the record_nonce tool with nonce until it is answered, its outcome
// is unknown or lost, or budget has passed on refusals that promised the
// request did not run (then the last refusal is the call's error).
func (c *client) call(ctx context.Context, nonce string, ms int, budget time.Duration) (r callResult) {
	body := fmt.Appendf(nil, `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"record_nonce","arguments":{"nonce":%q,"ms":%d}}}`, nonce, ms)
	start := time.Now()
	giveUp := start.Add(budget)
	r = callResult{nonce: nonce}
	defer func() { r.took = time.Since(start) }()
	for {
		var a attempt
		if c.session == "" {
			if a = c.initialize(ctx); a.kind == answered {
				continue
			}
			a.label = "initialize: " + a.label
			if a.kind == unknown || a.kind == sessionGone {
				// An initialize is safe to repeat whatever happened to it.
				a.kind = notRun
			}
		} else {
			r.attempts++
			a = c.post(ctx, body, true)
		}
		switch a.kind {
		case answered:
			r.kind = answered
			r.label = checkResult(a.result, nonce)
			return r
		case sessionGone:
			// It did not run; a new session, and again (within the
			// budget, in case every new session is gone at once too).
			c.session = ""
			a.kind = notRun
		case unknown, lost:
			r.kind, r.label = a.kind, a.label
			return r
		}
		// notRun: send it again, after a pause, while the budget lasts.
		r.kind, r.label = notRun, a.label
		r.history = append(r.history, a.label)
		if time.Now().Add(retryPause).After(giveUp) || ctx.Err() != nil {
			return r
		}
		select {
		case <-time.After(retryPause):
		case <-ctx.Done():
			return r
		}
	}
}

// checkResult returns "" when msg is the record_nonce tool's result for nonce,
// else a label saying what came instead.
func checkResult(msg []byte, nonce string) string {
	var m struct {
		Result *struct {
			IsError bool `json:"isError"`
			Content []struct {
				Text string `json:"text"`
			} `json:"content"`
		} `json:"result"`
		Error *struct {
			Code int `json:"code"`
			Data struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	if err := json.Unmarshal(msg, &m); err != nil {
		return "200, not JSON-RPC"
	}
	switch {
	case m.Error != nil && m.Error.Data.Reason != "":
		return fmt.Sprintf("200 JSON-RPC error %d %s", m.Error.Code, m.Error.Data.Reason)
	case m.Error != nil:
		return fmt.Sprintf("200 JSON-RPC error %d", m.Error.Code)
	case m.Result == nil:
		return "200 without result"
	case m.Result.IsError:
		return "200 tool error"
	case len(m.Result.Content) != 1 || m.Result.Content[0].Text != "recorded "+nonce:
		return "200 wrong result"
	}
	return ""
}

// load is the steady traffic of a phase: workers per target, each a
// client session calling record_nonce with fresh nonces back to back.
type load struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []callResult
}

// target is one endpoint: an agent's server through the relay.
type target struct{ agent, server string }

// startLoad starts workers sessions per target; nonces are prefix-W-N.
// Each worker initializes its own session, calls until stop, then
// deletes its session.
func startLoad(c *cluster, targets []target, prefix string) *load {
	ctx, cancel := context.WithCancel(context.Background())
	l := &load{cancel: cancel}
	w := 0
	for _, t := range targets {
		for range c.o.Workers {
			w++
			cl := &client{
				hc:       &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2, DisableCompression: true}},
				url:      c.relayHTTP + "/" + t.agent + "/" + t.server + "/mcp",
				token:    c.clientToken,
				deadline: c.o.CallDeadline,
			}
			name := fmt.Sprintf("%s-%s.%s-w%d", prefix, t.agent, t.server, w)
			l.wg.Add(1)
			go func() {
				defer l.wg.Done()
				defer cl.hc.CloseIdleConnections()
				for i := 0; ctx.Err() == nil; i++ {
					// A call in flight when the load stops finishes:
					// its own context is not the load's.
					r := cl.call(context.Background(), fmt.Sprintf("%s-%d", name, i), c.o.CallMS, c.o.RetryBudget)
					l.mu.Lock()
					l.results = append(l.results, r)
					l.mu.Unlock()
					if r.kind == lost {
						// The session may be wedged; start afresh.
						cl.session = ""
					}
				}
				cl.end(context.Background())
			}()
		}
	}
	return l
}

// stop ends the load and waits for the calls in flight (each bounded by
// the call deadline and retry budget).
func (l *load) stop() []callResult {
	l.cancel()
	l.wg.Wait()
	return l.results
}
