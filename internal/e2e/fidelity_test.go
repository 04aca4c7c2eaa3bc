package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// echoBin is mcptest-echo, the raw stdio echo server, built on first use
// next to the other binaries (TestMain removes that directory).
var (
	echoOnce sync.Once
	echoBin  string
	echoErr  error
)

func echoBinary(t *testing.T) string {
	t.Helper()
	echoOnce.Do(func() {
		out := filepath.Join(filepath.Dir(mcptunBin), "mcptest-echo")
		cmd := exec.Command("go", "build", "-o", out, "github.com/mcptun/mcptun/internal/mcptest/cmd/mcptest-echo")
		if b, err := cmd.CombinedOutput(); err != nil {
			echoErr = fmt.Errorf("build mcptest-echo: %w\n%s", err, b)
			return
		}
		echoBin = out
	})
	require.NoError(t, echoErr)
	return echoBin
}

// echoRequest is what the HTTP echo server received.
type echoRequest struct {
	method string
	header http.Header
	body   []byte
}

// httpEcho is the url: counterpart of mcptest-echo: a raw HTTP MCP server
// that records every request exactly and answers a request whose params
// carry "reply" with those lines, verbatim ($ID and $TOKEN filled in from the
// raw request): one line as an application/json body, several as SSE
// events. params.status sets the answer's status. Its answers carry
// X-Echo-Upstream: yes.
type httpEcho struct {
	URL string
	srv *http.Server
	mu  sync.Mutex
	got []echoRequest
	// written is the exact answer body of each request, in order.
	written [][]byte
}

func startHTTPEcho(t *testing.T) *httpEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	e := &httpEcho{URL: "http://" + ln.Addr().String() + "/mcp"}
	e.srv = &http.Server{Handler: http.HandlerFunc(e.serve)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = e.srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = e.srv.Close()
		<-done
	})
	return e
}

func (e *httpEcho) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	e.mu.Lock()
	e.got = append(e.got, echoRequest{r.Method, r.Header.Clone(), body})
	e.mu.Unlock()
	var m struct {
		ID     json.RawMessage `json:"id"`
		Method *string         `json:"method"`
		Params struct {
			Reply  []string `json:"reply"`
			Status int      `json:"status"`
			Meta   struct {
				ProgressToken json.RawMessage `json:"progressToken"`
			} `json:"_meta"`
		} `json:"params"`
	}
	w.Header().Set("X-Echo-Upstream", "yes")
	if json.Unmarshal(body, &m) != nil || m.Method == nil || len(m.ID) == 0 {
		w.WriteHeader(http.StatusAccepted)
		return
	}
	reply := m.Params.Reply
	if reply == nil {
		reply = []string{`{"jsonrpc":"2.0","id":$ID,"result":{}}`}
	}
	status := http.StatusOK
	if m.Params.Status != 0 {
		status = m.Params.Status
	}
	var out bytes.Buffer
	for i, line := range reply {
		b := bytes.ReplaceAll([]byte(line), []byte("$ID"), m.ID)
		b = bytes.ReplaceAll(b, []byte("$TOKEN"), m.Params.Meta.ProgressToken)
		if len(reply) == 1 {
			out.Write(b)
			break
		}
		// Deliberately unusual but valid SSE: a comment, an id, no
		// event name on the odd events, CRLF line ends on the last.
		nl := "\n"
		if i == len(reply)-1 {
			nl = "\r\n"
		}
		fmt.Fprintf(&out, ": upstream comment %d%sid: up-%d%s", i, nl, i, nl)
		if i%2 == 0 {
			out.WriteString("event: message" + nl)
		}
		out.WriteString("data: ")
		out.Write(b)
		out.WriteString(nl + nl)
	}
	e.mu.Lock()
	e.written = append(e.written, out.Bytes())
	e.mu.Unlock()
	if len(reply) == 1 {
		w.Header().Set("Content-Type", "application/json")
	} else {
		w.Header().Set("Content-Type", "text/event-stream")
	}
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}

func (e *httpEcho) last() (echoRequest, []byte) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var w []byte
	if len(e.written) > 0 {
		w = e.written[len(e.written)-1]
	}
	return e.got[len(e.got)-1], w
}

// fidelityCase is one exchange. msg is the client's message with
// placeholders: $ID and $TOKEN for the client's raw id and progress token,
// $REPLY for the JSON array of reply lines (which keep their own $ID and
// $TOKEN for the server to fill in with what it saw).
type fidelityCase struct {
	name      string
	msg       string
	id, token string
	reply     []string
	// answer is the client's answer to a request the server sends (the
	// first reply line), posted after the exchange; it must reach the
	// server byte for byte.
	answer string
	// unrouted lists the reply lines that name no request (a notification
	// without progress token or subscription id). In a session they go to
	// the request in flight; the stateless bridge drops them, as it cannot
	// tell which of the clients sharing the child they are for.
	unrouted []int
}

func (fc fidelityCase) replyJSON() string {
	if fc.reply == nil {
		return "null"
	}
	b, err := json.Marshal(fc.reply)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// clientBytes is what the client sends.
func (fc fidelityCase) clientBytes() string {
	s := strings.ReplaceAll(fc.msg, "$ID", fc.id)
	s = strings.ReplaceAll(s, "$TOKEN", fc.token)
	return strings.ReplaceAll(s, "$REPLY", fc.replyJSON())
}

// serverPattern matches what a stdio server must see: the client's bytes,
// but for its id and progress token, which the bridge replaces by small
// integers of its own (submatches 1 and, with a token, 2).
func (fc fidelityCase) serverPattern() *regexp.Regexp {
	var b strings.Builder
	b.WriteString("^")
	rest := fc.msg
	for rest != "" {
		i := strings.IndexByte(rest, '$')
		if i < 0 {
			b.WriteString(regexp.QuoteMeta(rest))
			break
		}
		b.WriteString(regexp.QuoteMeta(rest[:i]))
		rest = rest[i:]
		switch {
		case strings.HasPrefix(rest, "$ID"):
			b.WriteString(`([0-9]+)`)
			rest = rest[3:]
		case strings.HasPrefix(rest, "$TOKEN"):
			b.WriteString(`([0-9]+)`)
			rest = rest[6:]
		case strings.HasPrefix(rest, "$REPLY"):
			b.WriteString(regexp.QuoteMeta(fc.replyJSON()))
			rest = rest[6:]
		default:
			b.WriteString(`\$`)
			rest = rest[1:]
		}
	}
	b.WriteString("$")
	return regexp.MustCompile(b.String())
}

// clientReply is what the client must receive for reply line i: the line
// with the client's own id and token.
func (fc fidelityCase) clientReply(i int) string {
	s := strings.ReplaceAll(fc.reply[i], "$ID", fc.id)
	return strings.ReplaceAll(s, "$TOKEN", fc.token)
}

// fidelityCases are messages that are not ours to change: unknown methods
// and members, _meta, ids and progress tokens no float64 holds, string ids
// that need escapes, error data, unusual but valid JSON numbers and
// escapes, server requests and the client's answers.
var fidelityCases = []fidelityCase{
	{
		name: "unknown method, big ids and tokens, _meta, progress",
		msg: `{"jsonrpc":"2.0", "id" : $ID,"method":"x-vendor/do","params":{"reply":$REPLY,"_meta":{"progressToken":$TOKEN,` +
			`"io.example/trace":{"n":[1.0,-0,1E+2,1e400,0.1000000000000000055511151231257827],"s":"\u00e9\ud83d\ude00\/\u2028"}},` +
			`"unknown":{"nested":[null,true,{"id":1}]}},"extra":"top-level member"}`,
		id: "9007199254740993", token: "18446744073709551617",
		reply: []string{
			`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":$TOKEN,"progress":1,"total":2,"message":"half \u00e9","_meta":{"k":12345678901234567890}},"extra":{}}`,
			`{"jsonrpc":"2.0","method":"x-vendor/notice","params":{"_meta":{"io.example/x":[1e400]},"v":-0.0}}`,
			`{"result":{"content":[],"_meta":{"io.example/r":"\u0000"},"unknownResult":[1,2,3]},"id":$ID,"jsonrpc":"2.0","extra":1}`,
		},
		unrouted: []int{1},
	},
	{
		name: "string id with escapes, error with data",
		msg:  `{"jsonrpc":"2.0","id":$ID,"method":"tools/call","params":{"name":"x","arguments":{"big":123456789012345678901234567890},"reply":$REPLY}}`,
		id:   `"\u00e4-\u0001-\"quoted\"-id"`,
		reply: []string{
			`{"jsonrpc":"2.0","id":$ID,"error":{"code":-32042,"message":"vendor error","data":{"big":123456789012345678901234567890,"x":[{"y":null}],"s":"\ud83d\ude00"},"extra":true}}`,
		},
	},
	{
		name: "negative id, string token, a server request and the client's answer",
		msg:  `{"jsonrpc":"2.0","id":$ID,"method":"tools/call","params":{"name":"ask","_meta":{"progressToken":$TOKEN},"reply":$REPLY}}`,
		id:   "-42", token: `"tok-\u00e9"`,
		reply: []string{
			`{"jsonrpc":"2.0","id":"srv-1","method":"x-vendor/ask","params":{"q":9007199254740993,"_meta":{"k":"v"}}}`,
			`{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":$TOKEN,"progress":0.5}}`,
			`{"jsonrpc":"2.0","id":$ID,"result":{"answer":42}}`,
		},
		answer: `{"jsonrpc":"2.0","id":"srv-1","result":{"a":12345678901234567890,"_meta":{"io.example/m":{}},"unknown":[1e400]}}`,
	},
}

// clientNotification is a notification of an unknown method: 202, and it
// reaches the server byte for byte.
const clientNotification = `{"jsonrpc":"2.0","method":"x-vendor/notify","params":{"_meta":{"a":[1e400,-0.0],"progressToken":9007199254740993},"z":"\u2028"},"extra":[]}`

// post sends body to url through the relay with the given MCP headers and
// returns the answer.
func fidelityPost(t *testing.T, url, body string, hdr ...string) rawResp {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Authorization", "Bearer "+clientToken)
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return rawResp{resp.StatusCode, resp.Header, string(b)}
}

// sseData returns the data of each event of an SSE body, skipping events
// without data (priming events).
func sseData(body string) []string {
	var out []string
	for _, ev := range strings.Split(strings.ReplaceAll(body, "\r\n", "\n"), "\n\n") {
		var data []string
		for _, line := range strings.Split(ev, "\n") {
			if d, ok := strings.CutPrefix(line, "data:"); ok {
				data = append(data, strings.TrimPrefix(d, " "))
			}
		}
		if d := strings.Join(data, "\n"); strings.TrimSpace(d) != "" {
			out = append(out, d)
		}
	}
	return out
}

// TestByteFidelityURL sends each case through relay, tunnel and agent to a
// url: server that records and answers raw bytes: requests, answers (JSON
// and SSE, status and headers) and the headers the client sent pass through
// unchanged; only the client's credential and the relay's own header stay
// behind.
func TestByteFidelityURL(t *testing.T) {
	echo := startHTTPEcho(t)
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", servers: fmt.Sprintf("  - {name: echo, url: %q}\n", echo.URL)})
	d.waitOnline(t, "echo")
	url := d.relayURL + "/dc1/echo/mcp"

	hdr := []string{
		"MCP-Protocol-Version", "2026-07-28",
		"Mcp-Method", "x-vendor/do",
		"Mcp-Name", "=?base64?w6k=?=",
		"Mcp-Param-Region", "eu-west-1",
		"Mcp-Param-Unknown-To-Us", "inner  spaces,\ttab; and=signs",
		"X-Custom-Unknown", "kept",
	}
	for _, fc := range fidelityCases {
		t.Run(fc.name, func(t *testing.T) {
			sent := fc.clientBytes()
			resp := fidelityPost(t, url, sent, hdr...)
			got, written := echo.last()
			require.Equal(t, sent, string(got.body), "request body at the server")
			require.Equal(t, http.MethodPost, got.method)
			for i := 0; i+1 < len(hdr); i += 2 {
				require.Equal(t, []string{hdr[i+1]}, got.header.Values(hdr[i]), "header %s at the server", hdr[i])
			}
			require.Empty(t, got.header.Values("Authorization"), "the client's credential stays at the relay")
			for k := range got.header {
				require.False(t, strings.HasPrefix(strings.ToLower(k), "x-mcptun-"), "relay header %s reached the server", k)
			}
			require.Equal(t, http.StatusOK, resp.StatusCode)
			require.Equal(t, "yes", resp.Header.Get("X-Echo-Upstream"))
			require.Equal(t, string(written), resp.Body, "answer body at the client")
			if len(fc.reply) == 1 {
				require.Equal(t, fc.clientReply(0), resp.Body)
			} else {
				require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
				data := sseData(resp.Body)
				require.Len(t, data, len(fc.reply))
				for i := range fc.reply {
					require.Equal(t, fc.clientReply(i), data[i])
				}
			}
			if fc.answer != "" {
				r := fidelityPost(t, url, fc.answer, hdr[:2]...)
				require.Equal(t, http.StatusAccepted, r.StatusCode)
				got, _ := echo.last()
				require.Equal(t, fc.answer, string(got.body))
			}
		})
	}
	t.Run("notification", func(t *testing.T) {
		r := fidelityPost(t, url, clientNotification)
		require.Equal(t, http.StatusAccepted, r.StatusCode)
		got, _ := echo.last()
		require.Equal(t, clientNotification, string(got.body))
	})
	t.Run("status and error body", func(t *testing.T) {
		body := `{"jsonrpc":"2.0","id":"s","method":"nope","params":{"status":404,"reply":["{\"jsonrpc\":\"2.0\",\"id\":$ID,\"error\":{\"code\":-32601,\"message\":\"no\",\"data\":[9007199254740993]}}"]}}`
		r := fidelityPost(t, url, body, hdr...)
		require.Equal(t, http.StatusNotFound, r.StatusCode)
		require.Equal(t, `{"jsonrpc":"2.0","id":"s","error":{"code":-32601,"message":"no","data":[9007199254740993]}}`, r.Body)
	})
}

// TestByteFidelityStdio sends each case through relay, tunnel and the
// agent's bridge to mcptest-echo, a stdio server that logs the lines it
// reads and writes scripted lines, in a session (2025-11-25) and in the
// stateless era (the shared child). The only changes allowed are the
// documented splices: the request id and progress token the child sees are
// small integers of the bridge's, and the client gets its own back exactly.
func TestByteFidelityStdio(t *testing.T) {
	bin := echoBinary(t)
	log := filepath.Join(t.TempDir(), "echo.log")
	d := deploy(t, relayOpts{}, agentOpts{transport: "quic", servers: fmt.Sprintf(
		"  - {name: echo, command: [%q], env: {MCPTEST_ECHO_LOG: %q}}\n", bin, log)})
	d.waitOnline(t, "echo")
	url := d.relayURL + "/dc1/echo/mcp"

	// logSize is where the child's next line will start in its log.
	logSize := func(t *testing.T) int {
		t.Helper()
		b, err := os.ReadFile(log)
		if errors.Is(err, fs.ErrNotExist) {
			return 0
		}
		require.NoError(t, err)
		return len(b)
	}
	// waitLogged waits until the child logged a line matching re at or
	// after offset from, so that a line an earlier step logged (the
	// session era's copy of the same message) cannot satisfy it.
	waitLogged := func(t *testing.T, from int, re *regexp.Regexp) []string {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			b, _ := os.ReadFile(log)
			if len(b) < from {
				t.Fatalf("the child's log shrank below offset %d", from)
			}
			b = b[from:]
			for _, line := range strings.Split(string(b), "\n") {
				if m := re.FindStringSubmatch(line); m != nil {
					return m
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("the child logged no line matching %s; it logged:\n%s", re, b)
			}
			<-tick.C
		}
	}

	init := fidelityPost(t, url, `{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"fidelity","version":"1"}}}`)
	require.Equal(t, http.StatusOK, init.StatusCode, init.Body)
	sid := init.Header.Get("Mcp-Session-Id")
	require.NotEmpty(t, sid)

	for _, era := range []struct {
		name string
		hdr  []string
	}{
		{"session", []string{"Mcp-Session-Id", sid, "MCP-Protocol-Version", "2025-11-25"}},
		{"stateless", []string{"MCP-Protocol-Version", "2026-07-28"}},
	} {
		t.Run(era.name, func(t *testing.T) {
			for _, fc := range fidelityCases {
				t.Run(fc.name, func(t *testing.T) {
					hdr := era.hdr
					if era.name == "stateless" {
						var m struct {
							Method string `json:"method"`
							Params struct {
								Name string `json:"name"`
							} `json:"params"`
						}
						require.NoError(t, json.Unmarshal([]byte(fc.clientBytes()), &m))
						hdr = append(hdr, "Mcp-Method", m.Method, "Mcp-Name", m.Params.Name)
					}
					from := logSize(t)
					resp := fidelityPost(t, url, fc.clientBytes(), hdr...)
					require.Equal(t, http.StatusOK, resp.StatusCode, resp.Body)

					// The child saw the client's bytes but for id and token,
					// which are the bridge's own small integers.
					m := waitLogged(t, from, fc.serverPattern())
					requireBridgeNumber(t, m[1], fc.id, "request id")
					if fc.token != "" {
						requireBridgeNumber(t, m[2], fc.token, "progress token")
					}

					var want []string
					for i := range fc.reply {
						// The stateless era has no server requests (the first
						// line of a case with an answer): the bridge refuses
						// them itself, and no client sees them.
						stray := slices.Contains(fc.unrouted, i) || (fc.answer != "" && i == 0)
						if era.name != "stateless" || !stray {
							want = append(want, fc.clientReply(i))
						}
					}
					if len(fc.reply) == 1 {
						require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
						require.Equal(t, want[0], resp.Body)
					} else {
						require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
						require.Equal(t, "no", resp.Header.Get("X-Accel-Buffering"))
						require.Equal(t, want, sseData(resp.Body), resp.Body)
					}
					switch {
					case fc.answer != "" && era.name == "stateless":
						waitLogged(t, from, regexp.MustCompile(`^\{"jsonrpc":"2.0","id":"srv-1","error":\{"code":-32601,`))
					case fc.answer != "":
						from := logSize(t)
						r := fidelityPost(t, url, fc.answer, hdr...)
						require.Equal(t, http.StatusAccepted, r.StatusCode, r.Body)
						waitLogged(t, from, regexp.MustCompile("^"+regexp.QuoteMeta(fc.answer)+"$"))
					}
				})
			}
			t.Run("notification", func(t *testing.T) {
				// A distinct copy per era, to find it in the log.
				n := strings.Replace(clientNotification, `"extra":[]`, `"extra":[`+strconv.Quote(era.name)+`]`, 1)
				hdr := era.hdr
				if era.name == "stateless" {
					hdr = append(hdr, "Mcp-Method", "x-vendor/notify")
				}
				from := logSize(t)
				r := fidelityPost(t, url, n, hdr...)
				require.Equal(t, http.StatusAccepted, r.StatusCode, r.Body)
				waitLogged(t, from, regexp.MustCompile("^"+regexp.QuoteMeta(n)+"$"))
			})
		})
	}
}

// requireBridgeNumber checks that got, what a stdio child saw in place of
// the client's id or progress token (client), is one of the bridge's own:
// a small non-negative integer in canonical form, never the client's value.
func requireBridgeNumber(t *testing.T, got, client, what string) {
	t.Helper()
	n, err := strconv.ParseUint(got, 10, 32)
	require.NoError(t, err, "%s %q at the child is not a small integer", what, got)
	require.Equal(t, strconv.FormatUint(n, 10), got, "%s %q at the child is not canonical", what, got)
	require.Less(t, n, uint64(1<<20), "%s %d at the child is not one of the bridge's small integers", what, n)
	require.NotEqual(t, client, got, "the child saw the client's %s", what)
}
