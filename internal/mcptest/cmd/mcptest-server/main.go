// Command mcptest-server runs mcptun's MCP fixture server (package mcptest).
//
//	mcptest-server [--stdio]               serve JSON-RPC on stdin/stdout (default)
//	mcptest-server --http 127.0.0.1:0      serve Streamable HTTP at /mcp
//	  --nonce-log FILE                     add the record_nonce tool, appending "NONCE PID" per call to FILE
//	  --page-size N                        split lists into pages of N entries
//	  --mutable                            add the tools mutable and set_mutable_description
//
// With --http the first line on stdout is "listening http://ADDR/mcp", so a
// test can ask for port 0 and read the bound address. Logs go to stderr. The
// server stops on SIGINT or SIGTERM, or, with --stdio, when stdin closes.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/mcptun/mcptun/internal/mcptest"
)

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "mcptest-server:", err)
		os.Exit(1)
	}
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mcptest-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stdio := fs.Bool("stdio", false, "serve over stdin/stdout (the default)")
	httpAddr := fs.String("http", "", "serve Streamable HTTP on this address, e.g. 127.0.0.1:9000 (port 0 picks one)")
	verbose := fs.Bool("v", false, "log debug messages to stderr")
	nonceLog := fs.String("nonce-log", "", "add the record_nonce tool: append each execution's nonce to this file (shared by many processes)")
	pageSize := fs.Int("page-size", 0, "split lists into pages of this many entries (0: one page)")
	mutable := fs.Bool("mutable", false, "add the tools mutable and set_mutable_description (pinning tests)")
	var hosts, origins listFlag
	fs.Var(&hosts, "allow-host", "also accept this Host header value (repeatable)")
	fs.Var(&origins, "allow-origin", "also accept this Origin header value (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *stdio && *httpAddr != "" {
		return fmt.Errorf("--stdio and --http are exclusive")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	opts := mcptest.ServerOptions{PageSize: *pageSize, Mutable: *mutable}
	if *nonceLog != "" {
		// O_APPEND: the processes sharing the file each write whole lines.
		f, err := os.OpenFile(*nonceLog, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("--nonce-log: %w", err)
		}
		defer f.Close()
		opts.NonceLog = f
	}
	srv := mcptest.NewServer(opts)
	if *httpAddr == "" {
		return mcptest.ServeStdioServer(ctx, srv, stdin, stdout, logger)
	}
	hs, err := mcptest.ServeHTTP(srv, *httpAddr, mcptest.HTTPConfig{
		AllowedHosts:   hosts,
		AllowedOrigins: origins,
		Logger:         logger,
	})
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(stdout, "listening %s\n", hs.URL); err != nil {
		_ = hs.Close()
		return fmt.Errorf("write address: %w", err)
	}
	logger.Info("serving", "url", hs.URL)
	<-ctx.Done()
	return hs.Close()
}
