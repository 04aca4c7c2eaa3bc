// Command testserver is the stdio MCP server the mcpproxy tests run as a
// real child process. Its tools exercise what a bridge must carry:
//
//	echo      returns its text argument
//	progress  sends `steps` progress notifications, then waits for release
//	release   lets one waiting progress call finish
//	cancelled counts progress calls ended by cancellation
//	sample    asks the client to sample (server-to-client request)
//	big       returns a text of `size` bytes
//	pid       returns the process id
//	spawn     starts a grandchild in the process group and returns its pid
//	env       returns the environment
//	exit      exits the process at once, answering nothing
//
// A client notifications/roots/list_changed makes it send
// notifications/message, with no request in flight. It writes
// "testserver ready" to stderr at start.
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "-hang" {
		select {} // the grandchild: lives until killed
	}
	fmt.Fprintln(os.Stderr, "testserver ready")

	s := server.NewMCPServer("testserver", "1.0.0",
		server.WithToolCapabilities(false), server.WithLogging())
	s.EnableSampling()
	gate := make(chan struct{}, 64)
	var cancelled atomic.Int64

	s.AddTool(mcp.NewTool("echo", mcp.WithString("text", mcp.Required())),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(req.GetString("text", "")), nil
		})

	s.AddTool(mcp.NewTool("progress", mcp.WithNumber("steps")),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			var token mcp.ProgressToken
			if req.Params.Meta != nil {
				token = req.Params.Meta.ProgressToken
			}
			if token == nil {
				return mcp.NewToolResultError("progress needs a progressToken"), nil
			}
			steps := req.GetInt("steps", 3)
			for i := 1; i <= steps; i++ {
				err := server.ServerFromContext(ctx).SendNotificationToClient(ctx, "notifications/progress",
					map[string]any{"progressToken": token, "progress": i, "total": steps})
				if err != nil {
					return nil, err
				}
			}
			select {
			case <-gate:
			case <-ctx.Done():
				cancelled.Add(1)
				return nil, ctx.Err()
			}
			return mcp.NewToolResultText("progress done"), nil
		})

	s.AddTool(mcp.NewTool("cancelled"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(strconv.FormatInt(cancelled.Load(), 10)), nil
		})

	s.AddTool(mcp.NewTool("release"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			gate <- struct{}{}
			return mcp.NewToolResultText("released"), nil
		})

	s.AddTool(mcp.NewTool("sample", mcp.WithString("prompt")),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			//lint:ignore SA1019 sampling is still part of the revisions the bridge serves (2025-11-25 and before)
			res, err := server.ServerFromContext(ctx).RequestSampling(ctx, mcp.CreateMessageRequest{
				CreateMessageParams: mcp.CreateMessageParams{
					Messages: []mcp.SamplingMessage{{
						Role:    mcp.RoleUser,
						Content: mcp.NewTextContent(req.GetString("prompt", "hello")),
					}},
					MaxTokens: 10,
				},
			})
			if err != nil {
				return mcp.NewToolResultError("sampling failed: " + err.Error()), nil
			}
			text := ""
			if tc, ok := res.Content.(mcp.TextContent); ok {
				text = tc.Text
			}
			return mcp.NewToolResultText("sampled: " + text + " by " + res.Model), nil
		})

	s.AddTool(mcp.NewTool("big", mcp.WithNumber("size")),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(strings.Repeat("x", req.GetInt("size", 1<<20))), nil
		})

	s.AddTool(mcp.NewTool("pid"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(strconv.Itoa(os.Getpid())), nil
		})

	s.AddTool(mcp.NewTool("spawn"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			cmd := exec.Command(os.Args[0], "-hang")
			if err := cmd.Start(); err != nil {
				return nil, err
			}
			go cmd.Wait() //nolint:errcheck // reaped if it ends first
			return mcp.NewToolResultText(strconv.Itoa(cmd.Process.Pid)), nil
		})

	s.AddTool(mcp.NewTool("env"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			return mcp.NewToolResultText(strings.Join(os.Environ(), "\n")), nil
		})

	s.AddTool(mcp.NewTool("exit"),
		func(ctx context.Context, req mcp.CallToolRequest) (*mcp.CallToolResult, error) {
			os.Exit(3)
			return nil, nil
		})

	s.AddNotificationHandler("notifications/roots/list_changed",
		func(ctx context.Context, n mcp.JSONRPCNotification) {
			s.SendNotificationToAllClients("notifications/message",
				map[string]any{"level": "info", "data": "roots changed"})
		})

	if err := server.ServeStdio(s); err != nil {
		fmt.Fprintln(os.Stderr, "testserver:", err)
		os.Exit(1)
	}
}
