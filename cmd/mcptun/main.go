// Command mcptun lets AI agents reach MCP servers inside a private network
// through an outbound-only tunnel. One binary, several roles: relay, agent,
// demo, bench, check, token, version.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/config"
	"github.com/mcptun/mcptun/internal/logging"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mcptun:", err)
		os.Exit(1)
	}
}

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "mcptun",
		Short:         "Reach MCP servers inside a private network through an outbound-only tunnel",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().String("log-level", "", "override log.level (debug, info, warn, error)")
	root.AddCommand(
		newRelayCmd(),
		newAgentCmd(),
		newDemoCmd(),
		newBenchCmd(),
		newCheckCmd(),
		newTokenCmd(),
		newToolsCmd(),
		newExampleServerCmd(),
		newVersionCmd(),
	)
	return root
}

// newLogger builds the role's logger on stderr from its config, honouring
// --log-level.
func newLogger(cmd *cobra.Command, lc config.Log) (*slog.Logger, error) {
	level := lc.Level
	if l, _ := cmd.Flags().GetString("log-level"); l != "" {
		level = l
	}
	return logging.New(cmd.ErrOrStderr(), level, lc.Format)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "mcptun %s\n", version)
			return err
		},
	}
}

func newCheckCmd() *cobra.Command {
	var relayPath, agentPath string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Validate configuration files and report every problem",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if relayPath == "" && agentPath == "" {
				return fmt.Errorf("check: give --relay FILE and/or --agent FILE")
			}
			if relayPath != "" {
				c, err := config.LoadRelay(relayPath)
				if err != nil {
					return err
				}
				printWarnings(cmd.ErrOrStderr(), c.Warnings)
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", relayPath)
			}
			if agentPath != "" {
				c, err := config.LoadAgent(agentPath)
				if err != nil {
					return err
				}
				printWarnings(cmd.ErrOrStderr(), c.Warnings)
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok\n", agentPath)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&relayPath, "relay", "", "relay configuration file")
	cmd.Flags().StringVar(&agentPath, "agent", "", "agent configuration file")
	return cmd
}

// closeTimeout bounds closing a role once its drain is over: the answers
// still being written (errors for what the drain cut) get this long.
const closeTimeout = 2 * time.Second

// drainContext is the context of a drain that began with a SIGINT or
// SIGTERM: it ends when grace has passed, or at once when another of these
// signals comes (the operator will not wait). stop releases it.
func drainContext(grace time.Duration, log *slog.Logger) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case s := <-sig:
			log.Warn("second signal: cutting the drain short", "signal", s.String())
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		cancel()
		<-done
		signal.Stop(sig)
	}
}

// graceLeft is the time until ctx's deadline, for logs.
func graceLeft(ctx context.Context) time.Duration {
	dl, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	return time.Until(dl).Round(time.Millisecond)
}

// printWarnings prints the problems a configuration loaded with, for check.
func printWarnings(w io.Writer, warnings []*config.Error) {
	for _, e := range warnings {
		fmt.Fprintf(w, "warning: %v\n", e)
	}
}

// logWarnings logs the problems a configuration loaded with, at start.
func logWarnings(log *slog.Logger, warnings []*config.Error) {
	for _, e := range warnings {
		log.Warn("config: "+e.Reason, "file", e.File, "key", e.Key)
	}
}
