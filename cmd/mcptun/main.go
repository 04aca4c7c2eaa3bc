// Command mcptun lets AI agents reach MCP servers inside a private network
// through an outbound-only tunnel. One binary, several roles: relay, agent,
// demo, bench, check, token, version.
package main

import (
	"context"
	"fmt"
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
		Version:       versionString(),
	}
	root.SetVersionTemplate("mcptun {{.Version}}\n")
	root.PersistentFlags().String("log-level", "", "override log.level (debug, info, warn, error)")
	root.AddCommand(
		newRelayCmd(),
		newAgentCmd(),
		newDemoCmd(),
		newBenchCmd(),
		newCheckCmd(),
		newCertCmd(),
		newInitCmd(),
		newTokenCmd(),
		newKeyCmd(),
		newToolsCmd(),
		newExampleServerCmd(),
		newVersionCmd(),
		newAuditCmd(),
		newStatusCmd(),
	)
	return root
}

// newLeveledLogger builds the role's logger on stderr from its config,
// honouring --log-level, with the level a running role can change
// (logging.WatchSignals; an admin endpoint may call Level.SetText).
func newLeveledLogger(cmd *cobra.Command, lc config.Log) (*slog.Logger, *logging.Level, error) {
	level := lc.Level
	if l, _ := cmd.Flags().GetString("log-level"); l != "" {
		level = l
	}
	return logging.NewLeveled(cmd.ErrOrStderr(), level, lc.Format)
}

func newVersionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "mcptun %s\n", versionString())
			return err
		},
	}
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

// logWarnings logs the problems a configuration loaded with, at start.
func logWarnings(log *slog.Logger, warnings []*config.Error) {
	for _, e := range warnings {
		log.Warn("config: "+e.Reason, "file", e.File, "key", e.Key)
	}
}
