package main

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/mcptun/mcptun/internal/audit"
	"github.com/mcptun/mcptun/internal/config"
)

// openAudit opens the agent's audit trail, or returns nil if it is off.
func openAudit(cfg *config.Agent, log *slog.Logger) (*audit.Log, error) {
	if cfg.Audit.File == "" {
		return nil, nil
	}
	l, err := audit.Open(audit.Config{
		File:          cfg.Audit.File,
		Agent:         cfg.Name,
		FullArguments: cfg.Audit.Arguments == "full",
		MaxSize:       cfg.Audit.MaxSizeBytes,
		MaxFiles:      cfg.Audit.MaxFiles,
		Logger:        log.With("component", "audit"),
	})
	if err != nil {
		return nil, fmt.Errorf("audit.file: %w", err)
	}
	log.Info("audit trail on", "file", cfg.Audit.File, "arguments", cfg.Audit.Arguments,
		"max_size", cfg.Audit.MaxSize, "max_files", cfg.Audit.MaxFiles)
	return l, nil
}

func closeAudit(l *audit.Log, log *slog.Logger) {
	if l == nil {
		return
	}
	_ = l.Close()
	if st := l.Stats(); st.Lost > 0 {
		log.Error("audit lines lost to write errors", "lost", st.Lost, "written", st.Written)
	}
}

func newAuditCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Work with the agent's audit trail",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "verify FILE...",
		Short: "Check an audit trail's hash chain; report the first edited, removed or reordered line",
		Long: `verify checks that the audit files given (the current file and its rotated
files, in any order: they are taken in the order of their first sequence
number, so "audit.log*" works) form one unbroken hash chain. It names the
first line that was edited, cut short or removed (at the line after it), or
is out of order, and exits 1; an intact trail prints a summary and exits 0.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var files []string
			for _, a := range args {
				// A pattern the shell did not expand (Windows, quotes).
				m, err := filepath.Glob(a)
				if err != nil || len(m) == 0 {
					m = []string{a}
				}
				files = append(files, m...)
			}
			s, err := audit.Verify(files...)
			var ce *audit.ChainError
			switch {
			case errors.As(err, &ce):
				return fmt.Errorf("audit verify: NOT INTACT: %w", ce)
			case err != nil:
				return fmt.Errorf("audit verify: %w", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "intact: %d lines in %d files, seq %d to %d, last hash %s\n", s.Lines, len(s.Files), s.FirstSeq, s.LastSeq, s.LastHash)
			if s.MidChain {
				fmt.Fprintf(out, "note: the first line (seq %d) continues an older file not given (rotated away?): lines before it cannot be checked\n", s.FirstSeq)
			}
			for _, f := range s.Files {
				fmt.Fprintf(out, "  %s\n", f)
			}
			return nil
		},
	})
	return cmd
}
