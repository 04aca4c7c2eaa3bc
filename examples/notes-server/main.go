// Command notes-server is an example internal MCP server for mcptun: a notes
// store over one directory (package internal/exampleserver).
//
//	notes-server [--dir DIR] [--stdio]          MCP over stdin/stdout (default)
//	notes-server [--dir DIR] --http ADDR        Streamable HTTP at http://ADDR/mcp
//
// The directory is --dir, else $NOTES_DIR, else a new temporary directory
// made at start (its path is logged; it is left in place on exit, so notes
// survive a restart only with --dir or NOTES_DIR). ADDR without a host, such
// as ":9000" or "9000", binds 127.0.0.1: exposing the server beyond this
// machine is what mcptun is for. Logs go to stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mark3labs/mcp-go/server"

	"github.com/mcptun/mcptun/internal/exampleserver"
)

func main() {
	if err := run(os.Args[1:], os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "notes-server:", err)
		os.Exit(1)
	}
}

// loopbackAddr puts 127.0.0.1 in front of an address that names no host.
func loopbackAddr(addr string) string {
	if !strings.Contains(addr, ":") {
		return "127.0.0.1:" + addr
	}
	if strings.HasPrefix(addr, ":") {
		return "127.0.0.1" + addr
	}
	return addr
}

func run(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("notes-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", os.Getenv("NOTES_DIR"), "notes directory (default $NOTES_DIR, else a new temporary directory)")
	stdio := fs.Bool("stdio", false, "serve over stdin/stdout (the default)")
	httpAddr := fs.String("http", "", "serve Streamable HTTP on this address, e.g. 127.0.0.1:9000")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *stdio && *httpAddr != "" {
		return errors.New("--stdio and --http are exclusive")
	}
	logger := slog.New(slog.NewTextHandler(stderr, nil))
	if *dir == "" {
		d, err := os.MkdirTemp("", "notes-")
		if err != nil {
			return fmt.Errorf("make notes directory: %w", err)
		}
		*dir = d
		logger.Info("NOTES_DIR not set; using a new temporary directory", "dir", d)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *httpAddr == "" {
		return exampleserver.ServeStdio(ctx, *dir)
	}
	if fi, err := os.Stat(*dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("notes directory %s: not a directory (%v)", *dir, err)
	}
	ln, err := net.Listen("tcp", loopbackAddr(*httpAddr))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", server.NewStreamableHTTPServer(exampleserver.New(*dir, exampleserver.Version),
		server.WithStateful(true), server.WithStreamableHTTPLogger(logger)))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	logger.Info("serving", "url", "http://"+ln.Addr().String()+"/mcp", "dir", *dir)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	// SSE streams never go idle: give requests a moment, then cut the rest.
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		_ = srv.Close()
	}
	<-errc
	return nil
}
