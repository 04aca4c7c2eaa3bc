// Command benchmatrix runs mcptun's benchmark matrix (what `make bench`
// runs): the same MCP load directly against a fixture server and through
// relay → tunnel → agent on every transport, large results, memory per
// idle session and, with --lossy, a lossy-link comparison. It prints a
// Markdown report and writes it, with the JSON figures, to --out.
//
//	benchmatrix [--quick] [--lossy | --lossy-only] [flags]
//
// See package internal/benchmatrix for what is measured and how.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mcptun/mcptun/internal/benchmatrix"
)

func main() {
	// The plain tunnel's relay and agent are this binary in a role.
	if ok, code := benchmatrix.RunRole(os.Args[1:], os.Stderr); ok {
		os.Exit(code)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks a command-line error already explained on stderr.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, jsonPath, mdPath, err := parseFlags(args, stderr)
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(stderr, "benchmatrix:", err)
		}
		return 2
	}
	o.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	rep, err := benchmatrix.Run(ctx, o)
	if err != nil {
		fmt.Fprintln(stderr, "benchmatrix:", err)
		return 2
	}
	if err := writeFile(jsonPath, rep.WriteJSON); err != nil {
		fmt.Fprintln(stderr, "benchmatrix:", err)
		return 1
	}
	if err := writeFile(mdPath, rep.WriteMarkdown); err != nil {
		fmt.Fprintln(stderr, "benchmatrix:", err)
		return 1
	}
	if err := rep.WriteMarkdown(stdout); err != nil {
		return 1
	}
	fmt.Fprintf(stderr, "benchmatrix: wrote %s and %s; logs in %s\n", mdPath, jsonPath, o.OutDir)
	if len(rep.Errors) > 0 {
		fmt.Fprintf(stderr, "benchmatrix: %d error(s):\n", len(rep.Errors))
		for _, e := range rep.Errors {
			fmt.Fprintln(stderr, "  -", e)
		}
		return 1
	}
	return 0
}

func writeFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	return f.Close()
}

func parseFlags(args []string, stderr io.Writer) (o benchmatrix.Options, jsonPath, mdPath string, err error) {
	fs := flag.NewFlagSet("benchmatrix", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: benchmatrix [--quick] [--lossy | --lossy-only] [flags]\n\n"+
			"Runs the same MCP load directly and through relay → tunnel → agent (separate processes)\n"+
			"and prints a Markdown report; JSON and Markdown are also written to --out.\n\n")
		fs.PrintDefaults()
	}
	var (
		sessions   = fs.String("sessions", "1,16,64", "comma-separated session counts of the matrix")
		paths      = fs.String("paths", strings.Join(benchmatrix.AllPaths, ","), "comma-separated paths of the matrix")
		sections   = fs.String("sections", "matrix,paced,large,idle", "comma-separated sections to run: "+strings.Join(benchmatrix.AllSections, ","))
		pacedPaths = fs.String("paced-paths", "direct,quic,stdio,plain-quic,plain-tcp,forwarded", "comma-separated paths of the paced section")
		largePaths = fs.String("large-paths", "direct,quic,tcp,quic-yamux", "comma-separated paths of the large-result rows")
		largeBytes = fs.String("large-bytes", "16MiB", "size of the large tool result")
		lossyBulk  = fs.String("lossy-bulk", "32MiB", "size of the bulk transfer beside the small calls")
		quick      = fs.Bool("quick", false, "a fast sanity run: 1 and 16 sessions, 1s cells, small idle counts (explicit flags win)")
		lossy      = fs.Bool("lossy", false, "also run the lossy-link section (root, iproute2)")
		lossyOnly  = fs.Bool("lossy-only", false, "run only the lossy-link section")
	)
	fs.StringVar(&o.Mcptun, "mcptun", "bin/mcptun", "mcptun binary")
	fs.StringVar(&o.Baseline, "baseline", "", "another mcptun binary (an older build) to measure beside this one in the same interleaved rounds; its paths are reported as <path>@baseline")
	fs.BoolVar(&o.Control, "control", false, "also measure each of mcptun's paths with the agent's tool policy and audit trail and both roles' admin listener on, in the same interleaved rounds; reported as <path>+control")
	fs.BoolVar(&o.BaselineControl, "baseline-control", false, "with --control and --baseline, also measure the baseline build with the control point on (<path>@baseline+control)")
	fs.StringVar(&o.Fixture, "fixture", "bin/mcptest-server", "mcptest-server binary")
	fs.StringVar(&o.OutDir, "out", "bin/bench", "directory for the report, configs and process logs")
	fs.StringVar(&jsonPath, "json", "", "JSON report file (default OUT/bench.json)")
	fs.StringVar(&mdPath, "md", "", "Markdown report file (default OUT/bench.md)")
	fs.DurationVar(&o.Duration, "duration", 5*time.Second, "measured phase of each matrix cell")
	fs.IntVar(&o.Rounds, "rounds", 3, "measure each matrix cell this many times, rounds interleaved across paths, and report the median (for a machine whose speed drifts)")
	fs.DurationVar(&o.Warmup, "warmup", time.Second, "warm-up before each cell's measured phase")
	fs.IntVar(&o.PayloadBytes, "payload", 64, "bytes of text sent to the echo tool")
	fs.StringVar(&o.Era, "era", "", "protocol era of the load: 2025-11-25 (default) or 2026-07-28")
	fs.Float64Var(&o.PacedRate, "paced-rate", 1500, "requests per second every path of the paced section is offered (below what the slowest path sustains)")
	fs.IntVar(&o.PacedSessions, "paced-sessions", 16, "sessions of the paced section")
	fs.IntVar(&o.LargeReps, "large-reps", 3, "measured calls per large-result row")
	fs.IntVar(&o.IdleSessions, "idle-sessions", 1000, "idle HTTP-upstream sessions, initialize only")
	fs.IntVar(&o.IdleStreams, "idle-streams", 9000, "idle HTTP-upstream sessions each holding a GET stream (one agent tunnel carries at most 10000 concurrent exchanges)")
	fs.IntVar(&o.IdleStdio, "idle-stdio", 200, "idle stdio sessions (each is a child process; the agent allows 256)")
	fs.StringVar(&o.Lossy.Netns, "lossy-netns", fmt.Sprintf("mcptunbench-%d", os.Getpid()), "network namespace the lossy section creates and removes")
	fs.DurationVar(&o.Lossy.Link.Delay, "lossy-delay", 10*time.Millisecond, "one-way delay of the lossy link")
	fs.Float64Var(&o.Lossy.Link.Loss, "lossy-loss", 0.01, "packet loss probability of each direction of the lossy link")
	fs.Uint64Var(&o.Lossy.Link.Seed, "lossy-seed", 1, "seed of the user-space emulator's loss decisions")
	fs.IntVar(&o.Lossy.Sessions, "lossy-sessions", 4, "closed-loop sessions of small calls on the lossy link")
	fs.DurationVar(&o.Lossy.Duration, "lossy-duration", 15*time.Second, "measured phase of the small calls on the lossy link")
	fs.DurationVar(&o.Lossy.Warmup, "lossy-warmup", time.Second, "warm-up of the small calls on the lossy link")
	fs.StringVar(&o.Lossy.TCPCongestion, "lossy-tcp-cc", "", "TCP congestion control inside the lossy lab (e.g. cubic, bbr); default: the kernel's")
	fs.IntVar(&o.GOMAXPROCS, "gomaxprocs", 0, "GOMAXPROCS of every relay and agent, ours and the plain tunnel's (0: the Go default, one per CPU)")
	fs.StringVar(&o.ProfileDir, "profile", "", "save CPU profiles of relay and agent for each tunnel cell's measured phase here (adds a little CPU)")
	if err := fs.Parse(args); err != nil {
		return o, "", "", errUsage
	}
	if fs.NArg() > 0 {
		return o, "", "", fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.Self, err = os.Executable(); err != nil {
		return o, "", "", fmt.Errorf("own binary (runs the plain tunnel): %w", err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		def := func(name string, apply func()) {
			if !set[name] {
				apply()
			}
		}
		def("sessions", func() { *sessions = "1,16" })
		def("duration", func() { o.Duration = time.Second })
		def("rounds", func() { o.Rounds = 1 })
		def("warmup", func() { o.Warmup = 300 * time.Millisecond })
		def("large-reps", func() { o.LargeReps = 1 })
		def("idle-sessions", func() { o.IdleSessions = 100 })
		def("idle-streams", func() { o.IdleStreams = 200 })
		def("idle-stdio", func() { o.IdleStdio = 10 })
		def("lossy-bulk", func() { *lossyBulk = "8MiB" })
		def("lossy-duration", func() { o.Lossy.Duration = 4 * time.Second })
	}
	if o.Sessions, err = parseInts(*sessions); err != nil {
		return o, "", "", fmt.Errorf("--sessions: %w", err)
	}
	o.Paths, o.LargePaths, o.Sections = splitList(*paths), splitList(*largePaths), splitList(*sections)
	o.PacedPaths = splitList(*pacedPaths)
	switch {
	case *lossyOnly && (*lossy || set["sections"]):
		return o, "", "", errors.New("--lossy-only excludes --lossy and --sections")
	case *lossyOnly:
		o.Sections = []string{benchmatrix.SectionLossy}
	case *lossy:
		o.Sections = append(o.Sections, benchmatrix.SectionLossy)
	}
	if o.LargeBytes, err = parseSize(*largeBytes); err != nil {
		return o, "", "", fmt.Errorf("--large-bytes: %w", err)
	}
	if o.Lossy.BulkBytes, err = parseSize(*lossyBulk); err != nil {
		return o, "", "", fmt.Errorf("--lossy-bulk: %w", err)
	}
	if jsonPath == "" {
		jsonPath = filepath.Join(o.OutDir, "bench.json")
	}
	if mdPath == "" {
		mdPath = filepath.Join(o.OutDir, "bench.md")
	}
	return o, jsonPath, mdPath, nil
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseSize reads a byte count: 1048576, 512KiB, 16MiB, 1GiB.
func parseSize(s string) (int, error) {
	mult := 1
	num := strings.TrimSpace(s)
	for _, u := range []struct {
		suffix string
		mult   int
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"B", 1}} {
		if rest, ok := strings.CutSuffix(num, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.Atoi(num)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive size such as 4096, 512KiB or 16MiB", s)
	}
	return n * mult, nil
}
