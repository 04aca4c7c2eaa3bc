package exampleserver

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/mcp"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"todo", true},
		{"2026-01-02.meeting_notes", true},
		{"a", true},
		{strings.Repeat("a", 64), true},
		{strings.Repeat("a", 65), false},
		{"", false},
		{".hidden", false},
		{"-flag", false},
		{"../etc/passwd", false},
		{"a/b", false},
		{`a\b`, false},
		{"a..b", false},
		{"..", false},
		{"a b", false},
		{"naïve", false},
		{"a\x00b", false},
	}
	for _, tt := range tests {
		err := ValidateName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateName(%q) error %v is not ErrInvalidName", tt.name, err)
		}
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"todo", "../x", "a/b", "..", "a.b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName(name) != nil {
			return
		}
		if filepath.Base(name) != name || strings.Contains(name, "..") || filepath.IsAbs(name) || !filepath.IsLocal(name+noteExt) {
			t.Fatalf("ValidateName accepted %q", name)
		}
	})
}

func newClient(t *testing.T, dir string) *client.Client {
	t.Helper()
	c, err := client.NewInProcessClient(New(dir, "test"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Initialize(ctx, mcp.InitializeRequest{Params: mcp.InitializeParams{
		ProtocolVersion: mcp.LATEST_LEGACY_PROTOCOL_VERSION,
		ClientInfo:      mcp.Implementation{Name: "test", Version: "1"},
	}}); err != nil {
		t.Fatal(err)
	}
	return c
}

func call(t *testing.T, c *client.Client, tool string, args map[string]any) (string, bool) {
	t.Helper()
	res, err := c.CallTool(context.Background(), mcp.CallToolRequest{Params: mcp.CallToolParams{Name: tool, Arguments: args}})
	if err != nil {
		t.Fatalf("%s: %v", tool, err)
	}
	var b strings.Builder
	for _, c := range res.Content {
		if tc, ok := c.(mcp.TextContent); ok {
			b.WriteString(tc.Text)
		}
	}
	return b.String(), res.IsError
}

func TestNotesTools(t *testing.T) {
	dir := t.TempDir()
	c := newClient(t, dir)

	if text, isErr := call(t, c, "list_notes", nil); isErr || !strings.Contains(text, "No notes") {
		t.Fatalf("empty list: %q %v", text, isErr)
	}
	if text, isErr := call(t, c, "write_note", map[string]any{"name": "groceries", "content": "milk\nEggs\nbread\n"}); isErr {
		t.Fatalf("write: %s", text)
	}
	if text, isErr := call(t, c, "write_note", map[string]any{"name": "todo", "content": "buy eggs"}); isErr {
		t.Fatalf("write: %s", text)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "todo.md")); err != nil || string(b) != "buy eggs" {
		t.Fatalf("file: %q %v", b, err)
	}
	if text, isErr := call(t, c, "read_note", map[string]any{"name": "groceries"}); isErr || text != "milk\nEggs\nbread\n" {
		t.Fatalf("read: %q %v", text, isErr)
	}
	if text, _ := call(t, c, "list_notes", nil); !strings.Contains(text, "- groceries (16 bytes") || !strings.Contains(text, "- todo (8 bytes") {
		t.Fatalf("list: %q", text)
	}
	if text, _ := call(t, c, "search_notes", map[string]any{"query": "EGGS"}); text != "groceries:2: Eggs\ntodo:1: buy eggs\n" {
		t.Fatalf("search: %q", text)
	}
	if text, _ := call(t, c, "search_notes", map[string]any{"query": "zebra"}); text != "no matches\n" {
		t.Fatalf("search: %q", text)
	}
	if text, isErr := call(t, c, "delete_note", map[string]any{"name": "todo"}); isErr {
		t.Fatalf("delete: %s", text)
	}
	if text, isErr := call(t, c, "read_note", map[string]any{"name": "todo"}); !isErr || !strings.Contains(text, "not found") {
		t.Fatalf("read deleted: %q %v", text, isErr)
	}

	res, err := c.ReadResource(context.Background(), mcp.ReadResourceRequest{Params: mcp.ReadResourceParams{URI: "notes://groceries"}})
	if err != nil || len(res.Contents) != 1 || res.Contents[0].(mcp.TextResourceContents).Text != "milk\nEggs\nbread\n" {
		t.Fatalf("resource: %+v %v", res, err)
	}
	res, err = c.ReadResource(context.Background(), mcp.ReadResourceRequest{Params: mcp.ReadResourceParams{URI: "notes://index"}})
	if err != nil || !strings.Contains(res.Contents[0].(mcp.TextResourceContents).Text, "groceries") {
		t.Fatalf("index: %+v %v", res, err)
	}
	p, err := c.GetPrompt(context.Background(), mcp.GetPromptRequest{Params: mcp.GetPromptParams{Name: "summarize_note", Arguments: map[string]string{"name": "groceries"}}})
	if err != nil || len(p.Messages) != 2 {
		t.Fatalf("prompt: %+v %v", p, err)
	}
}

// TestNoEscape tries to reach outside the directory by name and by a
// symlink planted inside it.
func TestNoEscape(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "notes")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(parent, "secret.md")
	if err := os.WriteFile(secret, []byte("top secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(secret, filepath.Join(dir, "link.md")); err != nil {
		t.Fatal(err)
	}
	c := newClient(t, dir)
	for _, name := range []string{"../secret", "..", "/etc/passwd", "a/../../secret", "%2e%2e/secret"} {
		text, isErr := call(t, c, "read_note", map[string]any{"name": name})
		if !isErr || !strings.Contains(text, "invalid note name") {
			t.Errorf("read %q: %q isErr=%v", name, text, isErr)
		}
		text, isErr = call(t, c, "write_note", map[string]any{"name": name, "content": "x"})
		if !isErr || !strings.Contains(text, "invalid note name") {
			t.Errorf("write %q: %q isErr=%v", name, text, isErr)
		}
	}
	if text, isErr := call(t, c, "read_note", map[string]any{"name": "link"}); !isErr || strings.Contains(text, "top secret") {
		t.Fatalf("read through symlink: %q isErr=%v", text, isErr)
	}
	if _, err := c.ReadResource(context.Background(), mcp.ReadResourceRequest{Params: mcp.ReadResourceParams{URI: "notes://../secret"}}); err == nil {
		t.Fatal("resource notes://../secret was read")
	}
	if text, _ := call(t, c, "search_notes", map[string]any{"query": "secret"}); strings.Contains(text, "top secret") {
		t.Fatalf("search found the secret: %q", text)
	}
	if text, isErr := call(t, c, "write_note", map[string]any{"name": "big", "content": strings.Repeat("x", MaxNoteBytes+1)}); !isErr {
		t.Fatalf("oversized write accepted: %q", text)
	}
}

// TestServeStdio runs the server over a pipe pair with mcp-go's stdio client
// transport.
func TestServeStdio(t *testing.T) {
	dir := t.TempDir()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serveStdio(ctx, dir, inR, outW)
		outW.Close()
	}()
	tr := transport.NewIO(outR, inW, io.NopCloser(strings.NewReader("")))
	c := client.NewClient(tr)
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Initialize(ctx, mcp.InitializeRequest{Params: mcp.InitializeParams{
		ProtocolVersion: mcp.LATEST_LEGACY_PROTOCOL_VERSION, ClientInfo: mcp.Implementation{Name: "t", Version: "1"},
	}}); err != nil {
		t.Fatal(err)
	}
	if text, isErr := call(t, c, "write_note", map[string]any{"name": "n", "content": "hello"}); isErr {
		t.Fatal(text)
	}
	if text, _ := call(t, c, "read_note", map[string]any{"name": "n"}); text != "hello" {
		t.Fatalf("read: %q", text)
	}
	inW.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.Close()
	outR.Close()

	if err := serveStdio(context.Background(), filepath.Join(dir, "missing"), strings.NewReader(""), io.Discard); err == nil {
		t.Fatal("serveStdio on a missing directory succeeded")
	}
}
