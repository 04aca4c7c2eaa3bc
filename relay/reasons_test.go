package relay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
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

// tcpAgents serves each agent over loopback TCP (real sockets, with their
// buffers: an agent can answer while the relay is still sending). dc1 is
// online; dc2 is known but offline; dc3 is online but no stream to it can
// be opened.
type tcpAgents struct{ addr string }

func (a tcpAgents) Offers(agent, server string) (bool, bool) {
	switch agent {
	case "dc1":
		return true, slices.Contains([]string{"notes", "hangup", "small", "garbage"}, server)
	case "dc3":
		return true, server == "notes"
	}
	return false, false
}

func (a tcpAgents) Dial(ctx context.Context, agent string) (net.Conn, error) {
	if agent != "dc1" {
		return nil, errors.New("no stream to that agent")
	}
	var d net.Dialer
	return d.DialContext(ctx, "tcp", a.addr)
}

// reasonAgent answers by server: notes echoes, hangup reads the request and
// closes without answering, small refuses a body over 1 MiB with 413 as
// the agent does, garbage answers with a broken head.
func reasonAgent() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/hangup/mcp", "/garbage/mcp":
			_, _ = io.Copy(io.Discard, r.Body)
			c, brw, err := w.(http.Hijacker).Hijack()
			if err != nil {
				return
			}
			if r.URL.Path == "/garbage/mcp" {
				_, _ = brw.WriteString("HTTP/1.1 two hundred\r\n\r\n")
				_ = brw.Flush()
			}
			_ = c.Close()
		case "/small/mcp":
			if _, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20)); err != nil {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusRequestEntityTooLarge)
				_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"too big","data":{"reason":"body_too_large"}}}`)
				return
			}
			_, _ = io.WriteString(w, "{}")
		default:
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":{}}`)
		}
	})
}

// newTCPRelay serves a Handler in front of reasonAgent as the relay binary
// serves clients (fast path first, net/http for the rest) and returns its
// address.
func newTCPRelay(t *testing.T) string {
	t.Helper()
	agentSrv := httptest.NewServer(reasonAgent())
	h, err := NewHandler(Config{
		Agents:      tcpAgents{addr: agentSrv.Listener.Addr().String()},
		KnownAgents: []string{"dc1", "dc2", "dc3"},
		Clients: []Client{
			{Name: "ci", TokenSHA256: hash("ci-token"), Allow: []string{"*/*"}},
			{Name: "wikionly", TokenSHA256: hash("wiki-token"), Allow: []string{"*/wiki"}},
			{Name: "throttled", TokenSHA256: hash("slow-token"), Allow: []string{"dc1/*"}, Rate: 0.001, Burst: 1},
		},
	})
	require.NoError(t, err)
	addr, _ := startFront(t, h, nil)
	t.Cleanup(func() { // before the front's: see newConnFixture
		agentSrv.CloseClientConnections()
		agentSrv.Close()
	})
	return addr
}

// TestErrorReasons provokes every answer the relay makes on its own and
// checks its status and data.reason, on the fast path and on net/http's
// where both serve it ("Connection: X-Force" sends an exchange to
// net/http).
func TestErrorReasons(t *testing.T) {
	addr := newTCPRelay(t)
	const auth = "Authorization: Bearer ci-token"
	big := strings.Repeat("x", 8<<20)
	for _, tc := range []struct {
		name   string
		req    string // the whole request; {big} is replaced by 8 MiB
		repeat int    // send it this many times, check the last answer
		status int
		reason string
	}{
		{"no token", "POST /dc1/notes/mcp HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}", 1, 401, "unauthorized"},
		{"out of scope", "POST /dc1/notes/mcp HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer wiki-token\r\nContent-Length: 2\r\n\r\n{}", 1, 403, "forbidden"},
		{"foreign origin", "POST /dc1/notes/mcp HTTP/1.1\r\nHost: h\r\nOrigin: http://evil.example\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 403, "origin_not_allowed"},
		{"unknown agent", "POST /nope/notes/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 404, "unknown_agent"},
		{"unknown server", "POST /dc1/files/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 404, "unknown_server"},
		{"no endpoint", "GET /dc1 HTTP/1.1\r\nHost: h\r\n" + auth + "\r\n\r\n", 1, 404, "not_found"},
		{"over rate limit", "POST /dc1/notes/mcp HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer slow-token\r\nContent-Length: 2\r\n\r\n{}", 2, 429, "rate_limited"},
		{"agent offline", "POST /dc2/notes/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 503, "agent_offline"},
		{"no stream to agent", "POST /dc3/notes/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 503, "agent_offline"},
		{"malformed head", "POST /dc1/notes/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nX A: 1\r\n\r\n", 1, 400, "bad_request"},
		{"bad chunk size", "POST /dc1/notes/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 1, 400, "bad_request"},
		{"body over the agent's limit", "POST /dc1/small/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 8388608\r\n\r\n{big}", 1, 413, "body_too_large"},
		{"body over the agent's limit, net/http", "POST /dc1/small/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nConnection: X-Force\r\nX-Force: 1\r\nContent-Length: 8388608\r\n\r\n{big}", 1, 413, "body_too_large"},
		{"agent hangs up mid-exchange", "POST /dc1/hangup/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 502, "upstream_outcome_unknown"},
		{"agent hangs up mid-exchange, net/http", "POST /dc1/hangup/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nConnection: X-Force\r\nX-Force: 1\r\nContent-Length: 2\r\n\r\n{}", 1, 502, "upstream_outcome_unknown"},
		{"broken answer from the agent", "POST /dc1/garbage/mcp HTTP/1.1\r\nHost: h\r\n" + auth + "\r\nContent-Length: 2\r\n\r\n{}", 1, 502, "tunnel_error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var resp *http.Response
			var body []byte
			for range tc.repeat {
				c, err := net.Dial("tcp", addr)
				require.NoError(t, err)
				require.NoError(t, c.SetDeadline(time.Now().Add(connTimeout)))
				// The client reads while it sends, as clients do: an
				// early answer must reach it.
				var wg sync.WaitGroup
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = io.WriteString(c, strings.Replace(tc.req, "{big}", big, 1))
				}()
				resp, err = http.ReadResponse(bufio.NewReader(c), nil)
				require.NoError(t, err)
				body, err = io.ReadAll(resp.Body)
				require.NoError(t, err)
				_ = c.Close()
				wg.Wait()
			}
			require.Equal(t, tc.status, resp.StatusCode, "body: %s", body)
			require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
			var eb errorBody
			require.NoError(t, json.Unmarshal(body, &eb), "body is JSON: %s", body)
			require.Equal(t, "2.0", eb.JSONRPC)
			require.Equal(t, tc.reason, eb.Error.Data.Reason, "body: %s", body)
			require.NotEmpty(t, eb.Error.Message)
			if tc.status == 503 {
				require.Equal(t, "5", resp.Header.Get("Retry-After"))
			}
		})
	}
}

// TestReasonTableComplete keeps the README's reason tables and the code in
// step: every reason code the code can answer with (relay, agent, any
// package) is a row of a table whose first column is a status, and every
// such row's code is one the code uses. The codes are collected from the
// source: constants named reason…, values keyed "reason" or Reason, and
// the relay's writeError and errorJSON called with a literal.
func TestReasonTableComplete(t *testing.T) {
	inCode := codesInSource(t, "..")
	inREADME := codesInREADME(t, filepath.Join("..", "README.md"))
	require.NotEmpty(t, inCode)
	for code, where := range inCode {
		if !inREADME[code] {
			t.Errorf("reason %q (%s) has no row in the README's reason tables", code, where)
		}
	}
	for code := range inREADME {
		if _, ok := inCode[code]; !ok {
			t.Errorf("README lists reason %q, which no code answers with", code)
		}
	}
}

var reasonCode = regexp.MustCompile(`^[a-z][a-z0-9]*(_[a-z0-9]+)*$`)

// codesInSource returns the reason codes in the non-test Go files under
// root, each with where it was found.
func codesInSource(t *testing.T, root string) map[string]string {
	t.Helper()
	codes := make(map[string]string)
	fset := token.NewFileSet()
	add := func(lit ast.Expr) {
		bl, ok := lit.(*ast.BasicLit)
		if !ok || bl.Kind != token.STRING {
			return
		}
		v, err := strconv.Unquote(bl.Value)
		if err != nil || !reasonCode.MatchString(v) {
			return
		}
		if _, seen := codes[v]; !seen {
			codes[v] = fset.Position(bl.Pos()).String()
		}
	}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != root || d.Name() == "testdata" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.ValueSpec:
				for i, name := range n.Names {
					if strings.HasPrefix(name.Name, "reason") && len(name.Name) > 6 && i < len(n.Values) {
						add(n.Values[i])
					}
				}
			case *ast.KeyValueExpr:
				switch k := n.Key.(type) {
				case *ast.Ident:
					if k.Name == "reason" || k.Name == "Reason" {
						add(n.Value)
					}
				case *ast.BasicLit:
					if k.Value == `"reason"` {
						add(n.Value)
					}
				}
			case *ast.CallExpr:
				var name string
				switch fn := n.Fun.(type) {
				case *ast.Ident:
					name = fn.Name
				case *ast.SelectorExpr:
					name = fn.Sel.Name
				}
				switch {
				case name == "writeError" && len(n.Args) == 4:
					add(n.Args[2])
				case name == "errorJSON" && len(n.Args) == 2:
					add(n.Args[0])
				}
			}
			return true
		})
		return nil
	})
	require.NoError(t, err)
	return codes
}

// codesInREADME returns the codes in the second column of the README's
// table rows that begin with a status.
func codesInREADME(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	row := regexp.MustCompile(`^\| *[1-5][0-9][0-9] *\|([^|]*)\|`)
	code := regexp.MustCompile("`([a-z][a-z0-9_]*)`")
	out := make(map[string]bool)
	for _, line := range strings.Split(string(b), "\n") {
		m := row.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		for _, c := range code.FindAllStringSubmatch(m[1], -1) {
			out[c[1]] = true
		}
	}
	require.NotEmpty(t, out, "no reason table in %s", path)
	return out
}
