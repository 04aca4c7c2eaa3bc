// Package mcptest is the MCP fixture server that mcptun's tests talk to,
// directly and through the tunnel.
//
// NewConformanceServer builds an mcp-go server that implements every tool,
// resource and prompt the server scenarios of the MCP conformance suite
// (@modelcontextprotocol/conformance 0.1.16) ask for, under the names the
// suite calls them, plus a few tools that tunnel tests need (echo, sleep,
// large output, broadcast). NewHTTPHandler serves it over Streamable HTTP
// behind the DNS-rebinding checks the suite expects, and ServeStdio serves it
// over a pipe pair, the way the agent runs a stdio server as a child process.
//
// The suite runs against it with
//
//	go run ./internal/mcptest/cmd/mcptest-server --http 127.0.0.1:0
//	conformance server --url http://127.0.0.1:PORT/mcp
//
// Progress tokens are echoed byte for byte, even integers above 2^53, which
// mcp-go itself would round: the transports record the raw token of each
// tools/call before mcp-go decodes it (see progressTokens).
package mcptest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

// Names of the fixture's tools. The Test* names are the ones the conformance
// suite calls; the others exist for mcptun's own end-to-end tests.
const (
	ToolSimpleText            = "test_simple_text"
	ToolImageContent          = "test_image_content"
	ToolAudioContent          = "test_audio_content"
	ToolEmbeddedResource      = "test_embedded_resource"
	ToolMultipleContentTypes  = "test_multiple_content_types"
	ToolWithLogging           = "test_tool_with_logging"
	ToolWithProgress          = "test_tool_with_progress"
	ToolErrorHandling         = "test_error_handling"
	ToolSampling              = "test_sampling"
	ToolElicitation           = "test_elicitation"
	ToolElicitationDefaults   = "test_elicitation_sep1034_defaults"
	ToolElicitationEnums      = "test_elicitation_sep1330_enums"
	ToolJSONSchema202012      = "json_schema_2020_12_tool"
	ToolReconnection          = "test_reconnection"
	ToolEcho                  = "echo"
	ToolSleep                 = "sleep"
	ToolLargeOutput           = "large_output"
	ToolBroadcastListChanged  = "broadcast_list_changed"
	ToolRequestRoots          = "test_roots"
	ToolInputRequired         = "test_input_required"
	ToolFloodGetStream        = "flood_get_stream"
	ToolRecordNonce           = "record_nonce"
	maxLargeOutputBytes       = 64 << 20
	maxFloodBytes             = 1 << 30
	maxSleep                  = 10 * time.Minute
	conformanceStepDelay      = 50 * time.Millisecond
	conformanceServerName     = "mcptun-conformance-fixture"
	conformanceServerVersion  = "1.0.0"
	conformanceLoggerName     = "mcptun-conformance-fixture"
	conformanceSampleMaxToken = 100
)

// Resource URIs, templates and prompt names of the fixture.
const (
	ResourceStaticText   = "test://static-text"
	ResourceStaticBinary = "test://static-binary"
	ResourceWatched      = "test://watched-resource"
	ResourceTemplateData = "test://template/{id}/data"

	PromptSimple           = "test_simple_prompt"
	PromptWithArguments    = "test_prompt_with_arguments"
	PromptEmbeddedResource = "test_prompt_with_embedded_resource"
	PromptWithImage        = "test_prompt_with_image"
)

// Fixed payloads the conformance suite checks for.
const (
	SimpleText         = "This is a simple text response for testing."
	StaticResourceText = "This is the content of the static text resource."
	ErrorToolText      = "This tool intentionally returns an error for testing"
	// PNGBase64 is a 1x1 PNG, AudioWAVBase64 a silent WAV of one sample.
	PNGBase64      = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
	AudioWAVBase64 = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
)

// InputRequiredState is the requestState test_input_required hands out: an
// opaque string the client must return verbatim. It holds characters that
// JSON encoders write differently (<, &, U+2028, non-ASCII, a quote), so a
// path that re-encodes it is still caught by the comparison of the decoded
// value, and one that alters it in any other way too.
const InputRequiredState = "state:<&>\u2028é\"9007199254740993"

// ProgressSteps are the progress values test_tool_with_progress reports, each
// out of ProgressTotal.
var ProgressSteps = []float64{0, 50, 100}

// ProgressTotal is the total test_tool_with_progress reports.
const ProgressTotal = 100

// LogMessages are the info-level messages test_tool_with_logging sends, in order.
var LogMessages = []string{"Tool execution started", "Tool processing data", "Tool execution completed"}

// NewConformanceServer returns the fixture server. Each call returns an
// independent server; serve it with NewHTTPHandler or ServeStdio.
func NewConformanceServer() *server.MCPServer {
	return NewServer(ServerOptions{})
}

// ServerOptions adds opt-in tools to the fixture.
type ServerOptions struct {
	// NonceLog, when set, adds the record_nonce tool: every execution writes
	// "NONCE PID\n" (its nonce argument, this process's id) to NonceLog in
	// one Write before it answers, so that a fault test counts how often
	// each call ran, and knows which process is running it. Share one
	// O_APPEND file between processes: each line lands whole.
	NonceLog io.Writer
	// PageSize, if > 0, splits tools/list (and the other lists) into pages
	// of this many entries, with nextCursor.
	PageSize int
	// Mutable adds the tools "mutable" (returns MutableText) and
	// "set_mutable_description" (sets mutable's description to its
	// "description" argument, for every session of this process): a
	// server that changes a tool under its clients, for pinning tests.
	Mutable bool
}

// Names of the Mutable tools, mutable's first description and its answer.
const (
	ToolMutable               = "mutable"
	ToolSetMutableDescription = "set_mutable_description"
	MutableDescription        = "Returns a fixed text."
	MutableText               = "mutable tool ran"
)

// NewServer returns the fixture server with opts' tools added.
func NewServer(opts ServerOptions) *server.MCPServer {
	var extra []server.ServerOption
	if opts.PageSize > 0 {
		extra = append(extra, server.WithPaginationLimit(opts.PageSize))
	}
	s := server.NewMCPServer(conformanceServerName, conformanceServerVersion, append([]server.ServerOption{
		server.WithToolCapabilities(true),
		server.WithResourceCapabilities(true, true),
		server.WithPromptCapabilities(true),
		server.WithCompletions(),
		server.WithLogging(),
		server.WithElicitation(),
		server.WithPromptCompletionProvider(promptCompletions{}),
		server.WithRecovery(),
		server.WithResourceRecovery(),
		server.WithInstructions("Test fixture for the MCP conformance suite and mcptun's end-to-end tests."),
	}, extra...)...,
	)
	s.EnableSampling()
	addTools(s)
	if opts.NonceLog != nil {
		addRecordTool(s, &nonceLog{w: opts.NonceLog})
	}
	if opts.Mutable {
		addMutableTools(s)
	}
	addResources(s)
	addPrompts(s)
	return s
}

func noArgs(name, description string) mcp.Tool {
	return mcp.NewTool(name, mcp.WithDescription(description))
}

func addTools(s *server.MCPServer) {
	s.AddTool(noArgs(ToolSimpleText, "Returns a simple text response."),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(SimpleText), nil
		})
	s.AddTool(noArgs(ToolImageContent, "Returns a 1x1 PNG image."),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{mcp.NewImageContent(PNGBase64, "image/png")}}, nil
		})
	s.AddTool(noArgs(ToolAudioContent, "Returns a tiny WAV clip."),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{mcp.NewAudioContent(AudioWAVBase64, "audio/wav")}}, nil
		})
	s.AddTool(noArgs(ToolEmbeddedResource, "Returns an embedded text resource."),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{mcp.NewEmbeddedResource(mcp.TextResourceContents{
				URI: "test://embedded-resource", MIMEType: "text/plain", Text: "This is an embedded resource content.",
			})}}, nil
		})
	s.AddTool(noArgs(ToolMultipleContentTypes, "Returns text, an image and an embedded resource."),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return &mcp.CallToolResult{Content: []mcp.Content{
				mcp.NewTextContent("Multiple content types test:"),
				mcp.NewImageContent(PNGBase64, "image/png"),
				mcp.NewEmbeddedResource(mcp.TextResourceContents{
					URI: "test://mixed-content-resource", MIMEType: "application/json", Text: `{"test":"data","value":123}`,
				}),
			}}, nil
		})
	s.AddTool(noArgs(ToolErrorHandling, "Always fails with a tool error (isError: true)."),
		func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultError(ErrorToolText), nil
		})
	s.AddTool(noArgs(ToolWithLogging, "Sends three info log notifications ~50 ms apart, then returns."), toolWithLogging)
	s.AddTool(noArgs(ToolWithProgress, "Reports progress 0, 50, 100 of 100 ~50 ms apart when given a progressToken."), toolWithProgress)
	s.AddTool(mcp.NewTool(ToolSampling,
		mcp.WithDescription("Asks the client to sample an LLM (sampling/createMessage) and returns its answer."),
		mcp.WithString("prompt", mcp.Description("The prompt to send to the LLM"), mcp.Required())),
		toolSampling)
	s.AddTool(mcp.NewTool(ToolElicitation,
		mcp.WithDescription("Asks the user for a username and email (elicitation/create) and returns the answer."),
		mcp.WithString("message", mcp.Description("The message to show the user"), mcp.Required())),
		toolElicitation)
	s.AddTool(noArgs(ToolElicitationDefaults, "Elicits a form whose fields carry default values (SEP-1034)."), toolElicitationDefaults)
	s.AddTool(noArgs(ToolElicitationEnums, "Elicits a form with every enum variant (SEP-1330)."), toolElicitationEnums)
	s.AddTool(mcp.NewToolWithRawSchema(ToolJSONSchema202012, "Tool with JSON Schema 2020-12 features", json.RawMessage(jsonSchema202012)),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(fmt.Sprintf("Received: %v", req.GetArguments())), nil
		})
	s.AddTool(noArgs(ToolReconnection, "Returns after a short delay. (The suite's pending server-sse-polling "+
		"scenario wants the stream closed mid-call; mcp-go answers on the open stream instead.)"),
		func(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			if err := pause(ctx, conformanceStepDelay); err != nil {
				return nil, err
			}
			return mcp.NewToolResultText("Reconnection test completed successfully"), nil
		})
	s.AddTool(mcp.NewTool(ToolRequestRoots,
		mcp.WithDescription("Asks the client for its roots (roots/list) and returns them as JSON.")),
		func(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			res, err := server.ServerFromContext(ctx).RequestRoots(ctx, mcp.ListRootsRequest{})
			if err != nil {
				return mcp.NewToolResultError("roots/list failed: " + err.Error()), nil
			}
			b, err := json.Marshal(res.Roots)
			if err != nil {
				return nil, fmt.Errorf("mcptest: encode roots: %w", err)
			}
			return mcp.NewToolResultText(string(b)), nil
		})

	s.AddTool(noArgs(ToolInputRequired,
		"Multi round-trip (2026-07-28 input_required): asks the client to confirm by elicitation, "+
			"then returns the answer and the requestState it got back. Older clients are asked "+
			"with a server-initiated elicitation/create instead (mcp-go bridges the two)."),
		toolInputRequired)
	s.AddTool(mcp.NewTool(ToolEcho,
		mcp.WithDescription("Returns its text argument unchanged."),
		mcp.WithString("text", mcp.Description("Text to echo"), mcp.Required())),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			text, err := req.RequireString("text")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			return mcp.NewToolResultText(text), nil
		})
	s.AddTool(mcp.NewTool(ToolSleep,
		mcp.WithDescription("Waits for ms milliseconds (at most 10 minutes), or until the request is cancelled."),
		mcp.WithNumber("ms", mcp.Description("Milliseconds to wait"), mcp.Required(), mcp.Min(0))),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			ms, err := req.RequireFloat("ms")
			if err != nil || ms < 0 || time.Duration(ms)*time.Millisecond > maxSleep {
				return mcp.NewToolResultError(fmt.Sprintf("ms must be a number from 0 to %d", maxSleep.Milliseconds())), nil
			}
			// Tests watch these lines to see a request start and end by
			// cancellation at the server.
			log := loggerFrom(ctx)
			log.Info("mcptest: sleeping", "ms", ms)
			if err := pause(ctx, time.Duration(ms*float64(time.Millisecond))); err != nil {
				log.Info("mcptest: request cancelled", "tool", ToolSleep, "ms", ms, "err", err)
				return nil, fmt.Errorf("mcptest: sleep interrupted: %w", err)
			}
			return mcp.NewToolResultText(fmt.Sprintf("slept %v ms", ms)), nil
		})
	s.AddTool(mcp.NewTool(ToolLargeOutput,
		mcp.WithDescription("Returns a text of exactly bytes bytes (at most 64 MiB): a repeating a-z pattern."),
		mcp.WithNumber("bytes", mcp.Description("Size of the text"), mcp.Required(), mcp.Min(0))),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			n, err := req.RequireInt("bytes")
			if err != nil || n < 0 || n > maxLargeOutputBytes {
				return mcp.NewToolResultError(fmt.Sprintf("bytes must be an integer from 0 to %d", maxLargeOutputBytes)), nil
			}
			return mcp.NewToolResultText(LargeOutput(n)), nil
		})
	s.AddTool(mcp.NewTool(ToolFloodGetStream,
		mcp.WithDescription("Over HTTP: pushes bytes bytes (at most 1 GiB) of notifications/message, about 64 KiB each, "+
			"into the calling session's GET stream, in the background, and returns at once. The push stops when the "+
			"session ends. For tests of clients that do not read."),
		mcp.WithNumber("bytes", mcp.Description("How much to push"), mcp.Required(), mcp.Min(0))),
		toolFloodGetStream)
	s.AddTool(noArgs(ToolBroadcastListChanged,
		"Sends notifications/tools/list_changed to every connected client (over HTTP: on their GET streams)."),
		func(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			server.ServerFromContext(ctx).SendNotificationToAllClients(string(mcp.MethodNotificationToolsListChanged), nil)
			return mcp.NewToolResultText("sent"), nil
		})
}

// nonceLog serialises the record_nonce tool's writes within one process.
type nonceLog struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *nonceLog) record(nonce string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, err := fmt.Fprintf(l.w, "%s %d\n", nonce, os.Getpid())
	return err
}

// maxNonceLen bounds the record_nonce tool's nonce; it is a log line.
const maxNonceLen = 200

func addRecordTool(s *server.MCPServer, log *nonceLog) {
	s.AddTool(mcp.NewTool(ToolRecordNonce,
		mcp.WithDescription("Appends nonce and the server's pid to the fixture's nonce log (one line per execution), then waits ms "+
			"milliseconds (default 0) and answers. The side effect comes first: a call cut during the wait has run."),
		mcp.WithString("nonce", mcp.Description("Client-chosen unique id of this call (no whitespace)"), mcp.Required()),
		mcp.WithNumber("ms", mcp.Description("Milliseconds to wait after recording"), mcp.Min(0))),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			nonce, err := req.RequireString("nonce")
			if err != nil || nonce == "" || len(nonce) > maxNonceLen || strings.ContainsAny(nonce, " \t\r\n") {
				return mcp.NewToolResultError(fmt.Sprintf("nonce must be 1 to %d characters without whitespace", maxNonceLen)), nil
			}
			ms := req.GetFloat("ms", 0)
			if ms < 0 || time.Duration(ms)*time.Millisecond > maxSleep {
				return mcp.NewToolResultError(fmt.Sprintf("ms must be a number from 0 to %d", maxSleep.Milliseconds())), nil
			}
			if err := log.record(nonce); err != nil {
				return nil, fmt.Errorf("mcptest: record nonce: %w", err)
			}
			if err := pause(ctx, time.Duration(ms*float64(time.Millisecond))); err != nil {
				return nil, fmt.Errorf("mcptest: record_nonce: wait interrupted: %w", err)
			}
			return mcp.NewToolResultText("recorded " + nonce), nil
		})
}

// toolInputRequired asks for a confirmation the first time and finishes on
// the retry that carries it. Its result text names the requestState the
// retry carried, quoted, so a client can check it came back untouched.
func toolInputRequired(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	answer := server.ElicitationResponse(req.Params.InputResponses, "confirm")
	if answer == nil {
		return server.NewInputRequestBuilder(InputRequiredState).
			Elicit("confirm", mcp.ElicitationParams{
				Message: "Proceed with the test?",
				RequestedSchema: map[string]any{
					"type":       "object",
					"properties": map[string]any{"ok": map[string]any{"type": "boolean"}},
					"required":   []string{"ok"},
				},
			}).ToolResult(), nil
	}
	content, err := json.Marshal(answer.Content)
	if err != nil {
		return nil, fmt.Errorf("mcptest: encode elicitation answer: %w", err)
	}
	return mcp.NewToolResultText(fmt.Sprintf("input_required done: action=%s content=%s state=%q",
		answer.Action, content, req.Params.RequestState)), nil
}

// LargeOutput returns the text the large_output tool returns for n bytes.
func LargeOutput(n int) string {
	const pattern = "abcdefghijklmnopqrstuvwxyz"
	return strings.Repeat(pattern, n/len(pattern)+1)[:n]
}

type loggerKey struct{}

// withLogger gives tools the transport's logger.
func withLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

func loggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.New(slog.DiscardHandler)
}

// pause waits for d or until ctx ends. Tools use it so that a cancelled
// request stops at once instead of finishing its script.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func toolWithLogging(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	s := server.ServerFromContext(ctx)
	for i, msg := range LogMessages {
		if i > 0 {
			if err := pause(ctx, conformanceStepDelay); err != nil {
				return nil, err
			}
		}
		n := mcp.NewLoggingMessageNotification(mcp.LoggingLevelInfo, conformanceLoggerName, msg)
		if err := s.SendLogMessageToClient(ctx, n); err != nil {
			return nil, fmt.Errorf("mcptest: send log message %d: %w", i, err)
		}
	}
	return mcp.NewToolResultText("Tool with logging executed successfully"), nil
}

func toolWithProgress(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	s := server.ServerFromContext(ctx)
	var token any
	if req.Params.Meta != nil && req.Params.Meta.ProgressToken != nil {
		token = rawProgressToken(ctx, req.Params.Meta.ProgressToken)
	}
	for i, p := range ProgressSteps {
		if i > 0 {
			if err := pause(ctx, conformanceStepDelay); err != nil {
				return nil, err
			}
		}
		if token == nil {
			continue
		}
		err := s.SendNotificationToClient(ctx, string(mcp.MethodNotificationProgress), map[string]any{
			"progressToken": token,
			"progress":      p,
			"total":         ProgressTotal,
		})
		if err != nil {
			return nil, fmt.Errorf("mcptest: send progress %v: %w", p, err)
		}
	}
	return mcp.NewToolResultText(fmt.Sprintf("Progress reported %d times", len(ProgressSteps))), nil
}

func toolSampling(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	prompt, err := req.RequireString("prompt")
	if err != nil {
		return mcp.NewToolResultError(err.Error()), nil
	}
	//lint:ignore SA1019 the fixture serves clients of the revisions that have sampling (2025-11-25 and before), which the conformance suite tests
	res, err := server.ServerFromContext(ctx).RequestSampling(ctx, mcp.CreateMessageRequest{
		CreateMessageParams: mcp.CreateMessageParams{
			Messages:  []mcp.SamplingMessage{{Role: mcp.RoleUser, Content: mcp.NewTextContent(prompt)}},
			MaxTokens: conformanceSampleMaxToken,
		},
	})
	if err != nil {
		return mcp.NewToolResultError("sampling/createMessage failed: " + err.Error()), nil
	}
	text := fmt.Sprintf("%v", res.Content)
	if c, ok := res.Content.(mcp.TextContent); ok {
		text = c.Text
	}
	return mcp.NewToolResultText("LLM response: " + text), nil
}

func elicit(ctx context.Context, message string, schema map[string]any) (*mcp.ElicitationResult, error) {
	return server.ServerFromContext(ctx).RequestElicitation(ctx, mcp.ElicitationRequest{
		Params: mcp.ElicitationParams{Message: message, RequestedSchema: schema},
	})
}

func elicitationText(prefix string, res *mcp.ElicitationResult) string {
	content, err := json.Marshal(res.Content)
	if err != nil {
		content = []byte(fmt.Sprintf("%q", fmt.Sprint(res.Content)))
	}
	return fmt.Sprintf("%s: action=%s, content=%s", prefix, res.Action, content)
}

func toolElicitation(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	message, err := req.RequireString("message")
	if err != nil {
		return mcp.NewToolResultError(err.Error()), nil
	}
	res, err := elicit(ctx, message, map[string]any{
		"type": "object",
		"properties": map[string]any{
			"username": map[string]any{"type": "string", "description": "User's response"},
			"email":    map[string]any{"type": "string", "description": "User's email address"},
		},
		"required": []string{"username", "email"},
	})
	if err != nil {
		return mcp.NewToolResultError("elicitation/create failed: " + err.Error()), nil
	}
	return mcp.NewToolResultText(elicitationText("User response", res)), nil
}

func toolElicitationDefaults(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	res, err := elicit(ctx, "Please review and update the form fields with defaults", map[string]any{
		"type": "object",
		"properties": map[string]any{
			"name":     map[string]any{"type": "string", "description": "User name", "default": "John Doe"},
			"age":      map[string]any{"type": "integer", "description": "User age", "default": 30},
			"score":    map[string]any{"type": "number", "description": "User score", "default": 95.5},
			"status":   map[string]any{"type": "string", "description": "User status", "enum": []string{"active", "inactive", "pending"}, "default": "active"},
			"verified": map[string]any{"type": "boolean", "description": "Verification status", "default": true},
		},
		"required": []string{},
	})
	if err != nil {
		return mcp.NewToolResultError("elicitation/create failed: " + err.Error()), nil
	}
	return mcp.NewToolResultText(elicitationText("Elicitation completed", res)), nil
}

func toolElicitationEnums(ctx context.Context, _ mcp.CallToolRequest) (*mcp.CallToolResult, error) {
	titled := func(prefix string, titles ...string) []any {
		out := make([]any, len(titles))
		for i, t := range titles {
			out[i] = map[string]any{"const": fmt.Sprintf("%s%d", prefix, i+1), "title": t}
		}
		return out
	}
	options := []string{"option1", "option2", "option3"}
	res, err := elicit(ctx, "Please select options from the enum fields", map[string]any{
		"type": "object",
		"properties": map[string]any{
			"untitledSingle": map[string]any{"type": "string", "description": "Untitled single-select", "enum": options},
			"titledSingle": map[string]any{"type": "string", "description": "Titled single-select",
				"oneOf": titled("value", "First Option", "Second Option", "Third Option")},
			"legacyEnum": map[string]any{"type": "string", "description": "Legacy titled enum",
				"enum": []string{"opt1", "opt2", "opt3"}, "enumNames": []string{"Option One", "Option Two", "Option Three"}},
			"untitledMulti": map[string]any{"type": "array", "description": "Untitled multi-select",
				"items": map[string]any{"type": "string", "enum": options}},
			"titledMulti": map[string]any{"type": "array", "description": "Titled multi-select",
				"items": map[string]any{"anyOf": titled("value", "First Choice", "Second Choice", "Third Choice")}},
		},
		"required": []string{},
	})
	if err != nil {
		return mcp.NewToolResultError("elicitation/create failed: " + err.Error()), nil
	}
	return mcp.NewToolResultText(elicitationText("Elicitation completed", res)), nil
}

const jsonSchema202012 = `{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "$defs": {
    "address": {
      "type": "object",
      "properties": {
        "street": {"type": "string"},
        "city": {"type": "string"}
      }
    }
  },
  "properties": {
    "name": {"type": "string"},
    "address": {"$ref": "#/$defs/address"}
  },
  "additionalProperties": false
}`

func addResources(s *server.MCPServer) {
	s.AddResource(mcp.NewResource(ResourceStaticText, "static-text",
		mcp.WithResourceDescription("A static text resource for testing"), mcp.WithMIMEType("text/plain")),
		func(context.Context, mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			return []mcp.ResourceContents{mcp.TextResourceContents{URI: ResourceStaticText, MIMEType: "text/plain", Text: StaticResourceText}}, nil
		})
	s.AddResource(mcp.NewResource(ResourceStaticBinary, "static-binary",
		mcp.WithResourceDescription("A static binary resource (1x1 PNG) for testing"), mcp.WithMIMEType("image/png")),
		func(context.Context, mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			return []mcp.ResourceContents{mcp.BlobResourceContents{URI: ResourceStaticBinary, MIMEType: "image/png", Blob: PNGBase64}}, nil
		})
	s.AddResource(mcp.NewResource(ResourceWatched, "watched-resource",
		mcp.WithResourceDescription("A resource clients subscribe to"), mcp.WithMIMEType("text/plain")),
		func(context.Context, mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			return []mcp.ResourceContents{mcp.TextResourceContents{URI: ResourceWatched, MIMEType: "text/plain", Text: "Watched resource content."}}, nil
		})
	s.AddResourceTemplate(mcp.NewResourceTemplate(ResourceTemplateData, "template-data",
		mcp.WithTemplateDescription("A resource template with parameter substitution"), mcp.WithTemplateMIMEType("application/json")),
		func(_ context.Context, req mcp.ReadResourceRequest) ([]mcp.ResourceContents, error) {
			id := templateID(req.Params.URI)
			if id == "" {
				return nil, fmt.Errorf("mcptest: %q does not match %s", req.Params.URI, ResourceTemplateData)
			}
			body, err := json.Marshal(map[string]any{"id": id, "templateTest": true, "data": "Data for ID: " + id})
			if err != nil {
				return nil, fmt.Errorf("mcptest: encode template resource: %w", err)
			}
			return []mcp.ResourceContents{mcp.TextResourceContents{URI: req.Params.URI, MIMEType: "application/json", Text: string(body)}}, nil
		})
}

// templateID extracts {id} from test://template/{id}/data, or returns "".
func templateID(uri string) string {
	rest, ok := strings.CutPrefix(uri, "test://template/")
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, "/data")
	if !ok || id == "" || strings.Contains(id, "/") {
		return ""
	}
	return id
}

func addPrompts(s *server.MCPServer) {
	s.AddPrompt(mcp.NewPrompt(PromptSimple, mcp.WithPromptDescription("A simple prompt without arguments")),
		func(context.Context, mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return mcp.NewGetPromptResult("A simple prompt", []mcp.PromptMessage{
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent("This is a simple prompt for testing.")),
			}), nil
		})
	s.AddPrompt(mcp.NewPrompt(PromptWithArguments, mcp.WithPromptDescription("A prompt with required arguments"),
		mcp.WithArgument("arg1", mcp.ArgumentDescription("First test argument"), mcp.RequiredArgument()),
		mcp.WithArgument("arg2", mcp.ArgumentDescription("Second test argument"), mcp.RequiredArgument())),
		func(_ context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			arg1, arg2 := req.Params.Arguments["arg1"], req.Params.Arguments["arg2"]
			return mcp.NewGetPromptResult("A prompt with arguments", []mcp.PromptMessage{
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent(fmt.Sprintf("Prompt with arguments: arg1='%s', arg2='%s'", arg1, arg2))),
			}), nil
		})
	s.AddPrompt(mcp.NewPrompt(PromptEmbeddedResource, mcp.WithPromptDescription("A prompt that includes an embedded resource"),
		mcp.WithArgument("resourceUri", mcp.ArgumentDescription("URI of the resource to embed"), mcp.RequiredArgument())),
		func(_ context.Context, req mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			uri := req.Params.Arguments["resourceUri"]
			if uri == "" {
				return nil, fmt.Errorf("mcptest: prompt %s: argument resourceUri is required", PromptEmbeddedResource)
			}
			return mcp.NewGetPromptResult("A prompt with an embedded resource", []mcp.PromptMessage{
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewEmbeddedResource(mcp.TextResourceContents{
					URI: uri, MIMEType: "text/plain", Text: "Embedded resource content for testing.",
				})),
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent("Please process the embedded resource above.")),
			}), nil
		})
	s.AddPrompt(mcp.NewPrompt(PromptWithImage, mcp.WithPromptDescription("A prompt that includes image content")),
		func(context.Context, mcp.GetPromptRequest) (*mcp.GetPromptResult, error) {
			return mcp.NewGetPromptResult("A prompt with an image", []mcp.PromptMessage{
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewImageContent(PNGBase64, "image/png")),
				mcp.NewPromptMessage(mcp.RoleUser, mcp.NewTextContent("Please analyze the image above.")),
			}), nil
		})
}

// promptCompletions completes the arguments of test_prompt_with_arguments
// from a fixed word list, by prefix.
type promptCompletions struct{}

var completionWords = []string{"paris", "park", "party", "test", "testValue1", "testValue2"}

func (promptCompletions) CompletePromptArgument(_ context.Context, prompt string, arg mcp.CompleteArgument, _ mcp.CompleteContext) (*mcp.Completion, error) {
	values := []string{}
	if prompt == PromptWithArguments {
		for _, w := range completionWords {
			if strings.HasPrefix(w, arg.Value) {
				values = append(values, w)
			}
		}
	}
	return &mcp.Completion{Values: values, Total: len(values), HasMore: false}, nil
}

// addMutableTools adds ToolMutable and ToolSetMutableDescription.
func addMutableTools(s *server.MCPServer) {
	run := func(context.Context, mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		return mcp.NewToolResultText(MutableText), nil
	}
	s.AddTool(noArgs(ToolMutable, MutableDescription), run)
	s.AddTool(mcp.NewTool(ToolSetMutableDescription,
		mcp.WithDescription("Changes the description of the mutable tool."),
		mcp.WithString("description", mcp.Required())),
		func(_ context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			d, err := req.RequireString("description")
			if err != nil {
				return mcp.NewToolResultError(err.Error()), nil
			}
			s.AddTool(noArgs(ToolMutable, d), run)
			return mcp.NewToolResultText("ok"), nil
		})
}
