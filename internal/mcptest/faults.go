package mcptest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// ToolRecord is the tool of NewRecordServer: it logs its "nonce" argument
// in the server's NonceLog and returns it.
const ToolRecord = "record"

// NonceLog counts how often each nonce was executed by ToolRecord, so a
// test can tell a call that ran twice (a request sent again) from one that
// ran once. It is safe for concurrent use.
type NonceLog struct {
	mu sync.Mutex
	n  map[string]int
}

func (l *NonceLog) add(nonce string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.n == nil {
		l.n = make(map[string]int)
	}
	l.n[nonce]++
}

// Count returns how often nonce was executed.
func (l *NonceLog) Count(nonce string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n[nonce]
}

// Stats returns the number of distinct nonces executed and how many of
// them were executed more than once.
func (l *NonceLog) Stats() (executed, twice int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.n {
		executed++
		if c > 1 {
			twice++
		}
	}
	return executed, twice
}

// NewRecordServer returns an MCP server with one tool, ToolRecord, which
// logs each call's nonce in log: the fixture for "was this call executed,
// and how often".
func NewRecordServer(log *NonceLog) *server.MCPServer {
	s := server.NewMCPServer(conformanceServerName, conformanceServerVersion, server.WithToolCapabilities(false))
	s.AddTool(mcp.NewTool(ToolRecord, mcp.WithDescription("Logs its nonce as executed and returns it."),
		mcp.WithString("nonce", mcp.Required())),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			nonce, err := req.RequireString("nonce")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			log.add(nonce)
			return mcp.NewToolResultText(nonce), nil
		})
	return s
}

// hangUp serves a POST that HTTPConfig.HangUp picked in full (the tool
// runs) and then closes the connection instead of answering: an upstream
// that read the request, acted on it and died before its answer left.
func hangUp(next http.Handler, w http.ResponseWriter, r *http.Request) {
	next.ServeHTTP(httptest.NewRecorder(), r)
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("mcptest: HangUp needs an HTTP/1.1 server")
	}
	c, _, err := hj.Hijack()
	if err == nil {
		_ = c.Close()
	}
}
