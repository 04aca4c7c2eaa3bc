package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/mark3labs/mcp-go/server"
	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/exampleserver"
)

// newExampleServerCmd runs the example notes MCP server; the demo starts it
// as the agent's stdio child, so the demo needs nothing but this binary.
func newExampleServerCmd() *cobra.Command {
	var stdio bool
	var listen, dir string
	cmd := &cobra.Command{
		Use:    "example-server",
		Short:  "Run the example notes MCP server (stdio, or HTTP with --listen)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" || stdio {
				return exampleserver.ServeStdio(cmd.Context(), dir)
			}
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return fmt.Errorf("example-server: %w", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "listening http://%s/mcp\n", ln.Addr())
			srv := &http.Server{Handler: server.NewStreamableHTTPServer(exampleserver.New(dir, version)), ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-cmd.Context().Done()
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				_ = srv.Shutdown(ctx)
			}()
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&stdio, "stdio", false, "serve over stdin/stdout (the default)")
	cmd.Flags().StringVar(&listen, "listen", "", "serve Streamable HTTP at http://ADDR/mcp instead")
	cmd.Flags().StringVar(&dir, "notes-dir", "", "notes directory (default $NOTES_DIR)")
	return cmd
}
