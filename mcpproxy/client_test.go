//go:build unix

package mcpproxy

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
)

type sampler struct{}

func (sampler) CreateMessage(ctx context.Context, req mcp.CreateMessageRequest) (*mcp.CreateMessageResult, error) {
	prompt := ""
	if len(req.Messages) > 0 {
		if tc, ok := req.Messages[0].Content.(mcp.TextContent); ok {
			prompt = tc.Text
		}
	}
	return &mcp.CreateMessageResult{
		SamplingMessage: mcp.SamplingMessage{Role: mcp.RoleAssistant, Content: mcp.NewTextContent("echo of " + prompt)},
		Model:           "test-model",
	}, nil
}

// newMCPClient connects mcp-go's Streamable HTTP client to url, with a
// sampling handler, and initializes it. With version "" it probes
// 2026-07-28 (server/discover) first, as it does by default.
func newMCPClient(t *testing.T, ctx context.Context, b *bridge, url, version string) *client.Client {
	t.Helper()
	tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPBasicClient(b.srv.Client()))
	if err != nil {
		t.Fatal(err)
	}
	c := client.NewClient(tr, client.WithSamplingHandler(sampler{}))
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_, err = c.Initialize(ctx, mcp.InitializeRequest{Params: mcp.InitializeParams{
		ProtocolVersion: version,
		ClientInfo:      mcp.Implementation{Name: "mcp-go-test", Version: "1"},
	}})
	if err != nil {
		t.Fatalf("initialize through the bridge: %v", err)
	}
	return c
}

// toolText returns the text of a successful tool call:
// toolText(t)(callTool(...)).
func toolText(t *testing.T) func(*mcp.CallToolResult, error) string {
	return func(res *mcp.CallToolResult, err error) string {
		t.Helper()
		return toolText1(t, res, err)
	}
}

func toolText1(t *testing.T, res *mcp.CallToolResult, err error) string {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if res.IsError || len(res.Content) == 0 {
		t.Fatalf("tool error: %+v", res)
	}
	tc, ok := res.Content[0].(mcp.TextContent)
	if !ok {
		t.Fatalf("content %T", res.Content[0])
	}
	return tc.Text
}

func callTool(ctx context.Context, c *client.Client, name string, args map[string]any, token mcp.ProgressToken) (*mcp.CallToolResult, error) {
	req := mcp.CallToolRequest{}
	req.Params.Name = name
	req.Params.Arguments = args
	if token != nil {
		req.Params.Meta = &mcp.Meta{ProgressToken: token}
	}
	return c.CallTool(ctx, req)
}

func TestMCPGoClient(t *testing.T) {
	// The session era, with everything a session has.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := newBridge(t, Options{})
	c := newMCPClient(t, ctx, b, b.url, "2025-11-25")
	if c.GetSessionId() == "" {
		t.Fatal("no session after initialize")
	}

	tools, err := c.ListTools(ctx, mcp.ListToolsRequest{})
	if err != nil || len(tools.Tools) < 5 {
		t.Fatalf("ListTools: %v %v", tools, err)
	}
	if got := toolText(t)(callTool(ctx, c, "echo", map[string]any{"text": "héllo"}, nil)); got != "héllo" {
		t.Fatalf("echo: %q", got)
	}

	// Sampling: the child asks the client mid-call; the client answers
	// with a POST; the tool's result comes back on the original stream.
	if got := toolText(t)(callTool(ctx, c, "sample", map[string]any{"prompt": "2+2"}, nil)); got != "sampled: echo of 2+2 by test-model" {
		t.Fatalf("sample: %q", got)
	}

	// Progress: notifications arrive while the call waits for release.
	var mu sync.Mutex
	var progress []float64
	got3 := make(chan struct{})
	c.OnNotification(func(n mcp.JSONRPCNotification) {
		if n.Method != "notifications/progress" {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if n.Params.AdditionalFields["progressToken"] != "tok-1" {
			t.Errorf("progress token %v", n.Params.AdditionalFields["progressToken"])
		}
		p, _ := n.Params.AdditionalFields["progress"].(float64)
		progress = append(progress, p)
		if len(progress) == 3 {
			close(got3)
		}
	})
	done := make(chan string, 1)
	go func() {
		res, err := callTool(ctx, c, "progress", map[string]any{"steps": 3}, "tok-1")
		if err != nil {
			done <- "error: " + err.Error()
			return
		}
		done <- res.Content[0].(mcp.TextContent).Text
	}()
	select {
	case <-got3:
	case <-ctx.Done():
		t.Fatal("progress notifications did not arrive")
	}
	toolText(t)(callTool(ctx, c, "release", nil, nil))
	if got := <-done; got != "progress done" {
		t.Fatalf("progress call: %s", got)
	}
	mu.Lock()
	if progress[0] != 1 || progress[2] != 3 {
		t.Errorf("progress values %v", progress)
	}
	mu.Unlock()

	if testing.Short() {
		return
	}
	// Bigger than any buffer on the way; 16 MiB is TestBigMessages' (the
	// client decoding it under -race would take seconds).
	big := toolText(t)(callTool(ctx, c, "big", map[string]any{"size": 2 << 20}, nil))
	if len(big) != 2<<20 {
		t.Fatalf("big: %d bytes", len(big))
	}
}

func TestMCPGoClientCloseEndsChild(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := newBridge(t, Options{})
	c := newMCPClient(t, ctx, b, b.url, "2025-06-18")
	pid, err := strconv.Atoi(toolText(t)(callTool(ctx, c, "pid", nil, nil)))
	if err != nil {
		t.Fatal(err)
	}
	sid := c.GetSessionId()
	c.Close() // DELETE
	eventually(t, 10*time.Second, "the child to exit after the client closed", func() bool { return processGone(pid) })
	if code, body := b.status(t, http.MethodPost, sid, `{"jsonrpc":"2.0","id":1,"method":"ping"}`); code != http.StatusNotFound || !strings.Contains(body, "session not found") {
		t.Fatalf("after close: %d %s", code, body)
	}
}

func TestMCPGoClientStateless(t *testing.T) {
	// mcp-go's default: 2026-07-28 through server/discover, no session,
	// one shared child.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b := newBridge(t, Options{})
	c := newMCPClient(t, ctx, b, b.url, "")
	if c.GetSessionId() != "" {
		t.Fatalf("stateless client got session %q", c.GetSessionId())
	}
	if got := toolText(t)(callTool(ctx, c, "echo", map[string]any{"text": "stateless"}, nil)); got != "stateless" {
		t.Fatalf("echo: %q", got)
	}
	pid1 := toolText(t)(callTool(ctx, c, "pid", nil, nil))

	// Progress on the request's own stream, while a second call runs
	// concurrently on the same child.
	progress := make(chan struct{}, 8)
	c.OnNotification(func(n mcp.JSONRPCNotification) {
		if n.Method == "notifications/progress" && n.Params.AdditionalFields["progressToken"] == "st" {
			progress <- struct{}{}
		}
	})
	done := make(chan error, 1)
	go func() {
		_, err := callTool(ctx, c, "progress", map[string]any{"steps": 2}, "st")
		done <- err
	}()
	for range 2 {
		select {
		case <-progress:
		case <-ctx.Done():
			t.Fatal("no progress on the stateless stream")
		}
	}
	toolText(t)(callTool(ctx, c, "release", nil, nil))
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// A second client shares the child.
	c2 := newMCPClient(t, ctx, b, b.url, "")
	if pid2 := toolText(t)(callTool(ctx, c2, "pid", nil, nil)); pid2 != pid1 {
		t.Fatalf("second stateless client on another child: %s vs %s", pid2, pid1)
	}
}
