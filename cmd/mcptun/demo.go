package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/devcert"
	"github.com/mcptun/mcptun/internal/exampleserver"
	"github.com/mcptun/mcptun/internal/logging"
)

func newDemoCmd() *cobra.Command {
	var listen, token, notesDir, logLevel string
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a relay, an agent and an example MCP server on loopback, and print how to connect",
		Long: `demo starts, in one process on 127.0.0.1, a relay, an agent connected to it over
QUIC, and the example notes MCP server twice: as a stdio child process and as an
HTTP server. It prints the endpoint URLs, a bearer token and ready-to-paste client
configuration, and runs until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDemo(cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr(), demoOptions{
				listen: listen, token: token, notesDir: notesDir, logLevel: logLevel,
			})
		},
	}
	cmd.Flags().StringVar(&listen, "listen", "127.0.0.1:8080", "address of the relay's HTTP front (port 0 picks a free one)")
	cmd.Flags().StringVar(&token, "token", "", "client bearer token (default: a new random one)")
	cmd.Flags().StringVar(&notesDir, "notes-dir", "", "directory the example notes server uses (default: a temporary one)")
	cmd.Flags().StringVar(&logLevel, "demo-log-level", "warn", "log level of the demo's relay and agent")
	return cmd
}

type demoOptions struct {
	listen, token, notesDir, logLevel string
}

func runDemo(ctx context.Context, stdout, stderr io.Writer, o demoOptions) error {
	log, err := logging.New(stderr, o.logLevel, "text")
	if err != nil {
		return err
	}
	if o.notesDir == "" {
		dir, err := os.MkdirTemp("", "mcptun-demo-notes-")
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		defer os.RemoveAll(dir)
		o.notesDir = dir
		if err := os.WriteFile(filepath.Join(dir, "welcome.md"),
			[]byte("# Welcome\nThis note lives inside the private network and reached you through mcptun.\n"), 0o600); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	if o.token == "" {
		o.token = newToken()
	}
	agentToken := newToken()

	cert, pin, err := devcert.Certificate("127.0.0.1", "localhost")
	if err != nil {
		return fmt.Errorf("demo: certificate: %w", err)
	}
	rcfg := &config.Relay{
		Tunnel: config.RelayTunnel{Listen: "127.0.0.1:0"},
		HTTP: config.RelayHTTP{Listen: o.listen, AllowedOrigins: []string{
			// The MCP Inspector's default origin, for trying the demo in a browser.
			"http://localhost:6274", "http://127.0.0.1:6274",
		}},
		Agents:  []config.RelayAgent{{Name: "demo", TokenSHA256: []string{tokenHash(agentToken)}}},
		Clients: []config.RelayClient{{Name: "demo", TokenSHA256: tokenHash(o.token), Allow: []string{"demo/*"}}},
	}
	rr, err := startRelay(ctx, rcfg, cert, nil, nil, log.With("role", "relay"))
	if err != nil {
		return fmt.Errorf("demo: %w (is the port busy? try --listen 127.0.0.1:0)", err)
	}
	defer rr.Close()

	// The same example server over HTTP, standing in for an internal web service.
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	httpSrv := &http.Server{Handler: server.NewStreamableHTTPServer(exampleserver.New(o.notesDir, version)), ReadHeaderTimeout: 10 * time.Second}
	httpDone := make(chan struct{})
	go func() {
		defer close(httpDone)
		if err := httpSrv.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("example http server stopped", "err", err)
		}
	}()
	defer func() { _ = httpSrv.Close(); <-httpDone }()

	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("demo: locate own binary for the stdio example server: %w", err)
	}
	acfg := &config.Agent{
		Name: "demo",
		Relay: config.AgentRelay{
			Address: []string{rr.Tunnel.Addr()}, Token: agentToken, PinSHA256: pin,
			Transport: "auto", Mux: "native",
		},
		Servers: []config.AgentServer{
			{Name: "notes", Command: []string{self, "example-server", "--stdio", "--notes-dir", o.notesDir}},
			{Name: "notes-http", URL: "http://" + httpLn.Addr().String() + "/mcp"},
		},
		IdleTimeout: 10 * time.Minute,
	}
	ra, err := startAgent(ctx, acfg, nil, log.With("role", "agent"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer ra.Close()
	waitCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	err = ra.Relays.WaitConnected(waitCtx, 1)
	cancel()
	if err != nil {
		return fmt.Errorf("demo: agent did not connect to the relay: %w", err)
	}
	printDemo(stdout, rr.HTTPURL, o.token, o.notesDir)
	<-ctx.Done()
	fmt.Fprintln(stdout, "\nmcptun demo stopping")
	return nil
}

func printDemo(w io.Writer, base, token, notesDir string) {
	stdio := base + "/demo/notes/mcp"
	httpURL := base + "/demo/notes-http/mcp"
	snippet, _ := json.MarshalIndent(map[string]any{
		"mcpServers": map[string]any{
			"notes": map[string]any{
				"type":    "http",
				"url":     stdio,
				"headers": map[string]string{"Authorization": "Bearer " + token},
			},
		},
	}, "  ", "  ")
	fmt.Fprintf(w, `mcptun demo: a relay, an agent and an example MCP server are running on 127.0.0.1.

  MCP endpoint:  %s
                 (the example notes server as a stdio child of the agent)
  Also:          %s
                 (the same server over HTTP inside the "private network")
  Bearer token:  %s
  Notes folder:  %s

Claude Code:
  claude mcp add --transport http notes %s --header "Authorization: Bearer %s"

JSON client configuration (Claude Desktop, Cursor, VS Code, ...):
  %s

Try it with curl:
  curl -s %s -H "Authorization: Bearer %s" -H "Content-Type: application/json" \
    -H "Accept: application/json, text/event-stream" \
    -d '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"curl","version":"1"}}}'

Press Ctrl-C to stop.
`, stdio, httpURL, token, notesDir, stdio, token, snippet, stdio, token)
}
