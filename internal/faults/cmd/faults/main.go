// Command faults runs mcptun's fault suite (package faults) against built
// binaries and prints its tables in Markdown. It exits 1 if a fault lost a
// call, ran one twice, or left resources behind, and 2 if the harness
// itself failed.
//
//	faults -mcptun bin/mcptun -fixture bin/mcptest-server [-short] [-rounds N] [-fault NAME]...
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
	"time"

	"github.com/mcptun/mcptun/internal/faults"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("faults", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mcptun := fs.String("mcptun", "bin/mcptun", "the mcptun binary under test")
	fixture := fs.String("fixture", "bin/mcptest-server", "the mcptest-server binary")
	dir := fs.String("dir", "", "workspace for configs and logs (default: a new temporary directory, kept)")
	short := fs.Bool("short", false, "the CI version: one round per fault, one session per target, short loads")
	rounds := fs.Int("rounds", 0, "rounds per fault (default: 3, or 1 with -short)")
	hold := fs.Duration("hold", 0, "how long SIGSTOP lasts (default: 8s, or 2s with -short)")
	out := fs.String("out", "", "also write the Markdown report to this file")
	var only listFlag
	fs.Var(&only, "fault", "run only this fault (repeatable); -list shows the names")
	list := fs.Bool("list", false, "list the faults and exit")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *list {
		for _, n := range faults.FaultNames() {
			fmt.Fprintln(stdout, n)
		}
		return 0
	}
	o := faults.Full()
	if *short {
		o = faults.Short()
	}
	if *rounds > 0 {
		o.Rounds = *rounds
	}
	if *hold > 0 {
		o.Hold = *hold
	}
	o.Mcptun, o.Fixture, o.Faults = *mcptun, *fixture, only
	if *dir == "" {
		d, err := os.MkdirTemp("", "mcptun-faults-")
		if err != nil {
			fmt.Fprintln(stderr, "faults:", err)
			return 2
		}
		*dir = d
	}
	o.Dir = *dir
	o.Log = slog.New(slog.NewTextHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	rows, err := faults.Run(ctx, o)
	var w io.Writer = stdout
	if *out != "" {
		f, ferr := os.Create(*out)
		if ferr != nil {
			fmt.Fprintln(stderr, "faults:", ferr)
			return 2
		}
		defer f.Close()
		w = io.MultiWriter(stdout, f)
	}
	failed := faults.WriteMarkdown(w, o, rows)
	fmt.Fprintf(stderr, "faults: %s; logs and configs in %s\n", time.Since(start).Round(time.Second), o.Dir)
	if err != nil {
		fmt.Fprintln(stderr, "faults:", err)
		return 2
	}
	if failed > 0 {
		return 1
	}
	return 0
}
