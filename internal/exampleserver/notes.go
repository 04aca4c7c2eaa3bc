// Package exampleserver is a small, real MCP server to run behind mcptun: a
// notes store over one directory. Each note is a Markdown file NAME.md in
// that directory; a name is 1 to 64 letters, digits, '.', '_' or '-',
// starting with a letter or digit, without "..". Every file operation goes
// through os.Root, so neither a crafted name nor a symlink planted in the
// directory can reach a file outside it.
//
// Tools: list_notes, read_note, write_note, search_notes, delete_note.
// Resources: notes://index (the list, as Markdown) and the template
// notes://{name} (one note). Prompt: summarize_note.
package exampleserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// Limits that keep one request cheap.
const (
	MaxNoteBytes   = 1 << 20 // per note
	MaxSearchHits  = 100
	MaxQueryLength = 256
	noteExt        = ".md"
	indexURI       = "notes://index"
	noteURIPrefix  = "notes://"
)

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ErrInvalidName is returned (wrapped) for a note name that is not allowed.
var ErrInvalidName = errors.New("invalid note name")

// ErrNotFound is returned (wrapped) for a note that does not exist.
var ErrNotFound = errors.New("note not found")

// ValidateName checks a note name: 1 to 64 of [A-Za-z0-9._-], starting with
// a letter or digit, with no "..". It rejects path separators and therefore
// every path traversal.
func ValidateName(name string) error {
	if !validName.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("%w %q: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no \"..\"", ErrInvalidName, name)
	}
	return nil
}

// store is the notes directory. It opens the directory per operation, so a
// server keeps no file descriptor and reports a missing directory per call.
type store struct{ dir string }

func (s store) root() (*os.Root, error) {
	r, err := os.OpenRoot(s.dir)
	if err != nil {
		return nil, fmt.Errorf("notes: open directory: %w", err)
	}
	return r, nil
}

// Note describes one stored note.
type Note struct {
	Name     string
	Size     int64
	Modified time.Time
}

func (s store) list() ([]Note, error) {
	r, err := s.root()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	entries, err := fs.ReadDir(r.FS(), ".")
	if err != nil {
		return nil, fmt.Errorf("notes: list: %w", err)
	}
	var notes []Note
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), noteExt)
		if !ok || !e.Type().IsRegular() || ValidateName(name) != nil {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		notes = append(notes, Note{Name: name, Size: info.Size(), Modified: info.ModTime().UTC()})
	}
	sort.Slice(notes, func(i, j int) bool { return notes[i].Name < notes[j].Name })
	return notes, nil
}

func (s store) read(name string) (string, error) {
	if err := ValidateName(name); err != nil {
		return "", err
	}
	r, err := s.root()
	if err != nil {
		return "", err
	}
	defer r.Close()
	f, err := r.Open(name + noteExt)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if err != nil {
		return "", fmt.Errorf("notes: read %q: %w", name, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxNoteBytes+1))
	if err != nil {
		return "", fmt.Errorf("notes: read %q: %w", name, err)
	}
	if len(b) > MaxNoteBytes {
		return "", fmt.Errorf("notes: %q is larger than %d bytes", name, MaxNoteBytes)
	}
	return string(b), nil
}

// write replaces a note atomically: a reader sees the old or the new text.
func (s store) write(name, content string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if len(content) > MaxNoteBytes {
		return fmt.Errorf("notes: content of %q is %d bytes, more than %d", name, len(content), MaxNoteBytes)
	}
	r, err := s.root()
	if err != nil {
		return err
	}
	defer r.Close()
	tmp := fmt.Sprintf(".%s.%d.tmp", name, time.Now().UnixNano())
	if err := r.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return fmt.Errorf("notes: write %q: %w", name, err)
	}
	if err := r.Rename(tmp, name+noteExt); err != nil {
		_ = r.Remove(tmp)
		return fmt.Errorf("notes: write %q: %w", name, err)
	}
	return nil
}

func (s store) remove(name string) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	r, err := s.root()
	if err != nil {
		return err
	}
	defer r.Close()
	if err := r.Remove(name + noteExt); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	} else if err != nil {
		return fmt.Errorf("notes: delete %q: %w", name, err)
	}
	return nil
}

// Hit is one line of a note that matches a search.
type Hit struct {
	Name string
	Line int
	Text string
}

func (s store) search(ctx context.Context, query string) ([]Hit, bool, error) {
	q := strings.ToLower(strings.TrimSpace(query))
	if q == "" || len(q) > MaxQueryLength {
		return nil, false, fmt.Errorf("notes: query must be 1 to %d bytes", MaxQueryLength)
	}
	notes, err := s.list()
	if err != nil {
		return nil, false, err
	}
	var hits []Hit
	for _, n := range notes {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		text, err := s.read(n.Name)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, false, err
		}
		sc := bufio.NewScanner(strings.NewReader(text))
		sc.Buffer(nil, MaxNoteBytes+1)
		for line := 1; sc.Scan(); line++ {
			if strings.Contains(strings.ToLower(sc.Text()), q) {
				if len(hits) == MaxSearchHits {
					return hits, true, nil
				}
				hits = append(hits, Hit{Name: n.Name, Line: line, Text: sc.Text()})
			}
		}
	}
	return hits, false, nil
}

// New returns the notes server over dir (which must exist).
func New(dir string, version string) *server.MCPServer {
	st := store{dir: dir}
	s := server.NewMCPServer("mcptun-notes", version,
		server.WithToolCapabilities(false),
		server.WithResourceCapabilities(false, false),
		server.WithPromptCapabilities(false),
		server.WithRecovery(),
		server.WithInstructions("A notes store. list_notes shows what exists; read_note and write_note take a note name "+
			"(letters, digits, '.', '_', '-'); search_notes finds lines containing a text."),
	)
	s.AddTool(mcp.NewTool("list_notes",
		mcp.WithDescription("Lists the notes: name, size in bytes, last modified (UTC)."),
		mcp.WithReadOnlyHintAnnotation(true)),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			notes, err := st.list()
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			return mcp.NewToolResultText(indexText(notes)), nil
		})
	s.AddTool(mcp.NewTool("read_note",
		mcp.WithDescription("Returns the text of one note."),
		mcp.WithString("name", mcp.Required(), mcp.Description("Note name")),
		mcp.WithReadOnlyHintAnnotation(true)),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			name, err := req.RequireString("name")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			text, err := st.read(name)
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			return mcp.NewToolResultText(text), nil
		})
	s.AddTool(mcp.NewTool("write_note",
		mcp.WithDescription(fmt.Sprintf("Creates or replaces a note (at most %d bytes).", MaxNoteBytes)),
		mcp.WithString("name", mcp.Required(), mcp.Description("Note name")),
		mcp.WithString("content", mcp.Required(), mcp.Description("Markdown text")),
		mcp.WithDestructiveHintAnnotation(true)),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			name, err := req.RequireString("name")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			content, err := req.RequireString("content")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			if err := st.write(name, content); err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			return mcp.NewToolResultText(fmt.Sprintf("saved %s (%d bytes)", name, len(content))), nil
		})
	s.AddTool(mcp.NewTool("delete_note",
		mcp.WithDescription("Deletes a note."),
		mcp.WithString("name", mcp.Required(), mcp.Description("Note name")),
		mcp.WithDestructiveHintAnnotation(true)),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			name, err := req.RequireString("name")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			if err := st.remove(name); err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			return mcp.NewToolResultText("deleted " + name), nil
		})
	s.AddTool(mcp.NewTool("search_notes",
		mcp.WithDescription(fmt.Sprintf("Finds note lines containing a text (case-insensitive); at most %d hits, as name:line: text.", MaxSearchHits)),
		mcp.WithString("query", mcp.Required(), mcp.Description("Text to look for")),
		mcp.WithReadOnlyHintAnnotation(true)),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			query, err := req.RequireString("query")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			hits, more, err := st.search(ctx, query)
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			var b strings.Builder
			for _, h := range hits {
				fmt.Fprintf(&b, "%s:%d: %s\n", h.Name, h.Line, h.Text)
			}
			if more {
				fmt.Fprintf(&b, "(more than %d hits; refine the query)\n", MaxSearchHits)
			}
			if len(hits) == 0 {
				b.WriteString("no matches\n")
			}
			return mcp.NewToolResultText(b.String()), nil
		})

	s.AddResource(mcp.NewResource(indexURI, "index",
		mcp.WithResourceDescription("The list of notes"), mcp.WithMIMEType("text/markdown")),
		func(context.Context, mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			notes, err := st.list()
			if err != nil {
				return nil, err
			}
			return []mcp.ResourceContents{mcp.TextResourceContents{URI: indexURI, MIMEType: "text/markdown", Text: indexText(notes)}}, nil
		})
	s.AddResourceTemplate(mcp.NewResourceTemplate(noteURIPrefix+"{name}", "note",
		mcp.WithTemplateDescription("One note, by name"), mcp.WithTemplateMIMEType("text/markdown")),
		func(_ context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			name := strings.TrimPrefix(req.Params.URI, noteURIPrefix)
			text, err := st.read(name)
			if err != nil {
				return nil, err
			}
			return []mcp.ResourceContents{mcp.TextResourceContents{URI: req.Params.URI, MIMEType: "text/markdown", Text: text}}, nil
		})

	s.AddPrompt(mcp.NewPrompt("summarize_note",
		mcp.WithPromptDescription("Asks the model to summarize one note"),
		mcp.WithArgument("name", mcp.ArgumentDescription("Note name"), mcp.RequiredArgument())),
		func(_ context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			name := req.Params.Arguments["name"]
			text, err := st.read(name)
			if err != nil {
				return nil, err
			}
			return mcp.NewGetPromptResult("Summarize note "+name, []mcp.PromptMessage{
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewEmbeddedResource(mcp.TextResourceContents{
					URI: noteURIPrefix + name, MIMEType: "text/markdown", Text: text,
				})),
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent("Summarize the note above in three bullet points.")),
			}), nil
		})
	return s
}

func indexText(notes []Note) string {
	if len(notes) == 0 {
		return "No notes yet.\n"
	}
	var b bytes.Buffer
	for _, n := range notes {
		fmt.Fprintf(&b, "- %s (%d bytes, modified %s)\n", n.Name, n.Size, n.Modified.Format(time.RFC3339))
	}
	return b.String()
}

// ServeStdio serves the notes server over dir on stdin and stdout until
// stdin ends or ctx is done.
func ServeStdio(ctx context.Context, dir string) error {
	return serveStdio(ctx, dir, os.Stdin, os.Stdout)
}

func serveStdio(ctx context.Context, dir string, in io.Reader, out io.Writer) error {
	if fi, err := os.Stat(dir); err != nil {
		return fmt.Errorf("notes: %w", err)
	} else if !fi.IsDir() {
		return fmt.Errorf("notes: %s is not a directory", dir)
	}
	err := server.NewStdioServer(New(dir, Version)).Listen(ctx, in, out)
	if err == nil || errors.Is(err, io.EOF) || errors.Is(err, context.Canceled) {
		return nil
	}
	return fmt.Errorf("notes: serve stdio: %w", err)
}

// Version is the version ServeStdio reports.
const Version = "0.1.0"
