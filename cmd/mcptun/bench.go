package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mcptun/mcptun/internal/loadgen"
	"github.com/spf13/cobra"
)

// benchTokenEnv names the environment variable that may hold the bearer
// token, so that it need not appear on the command line.
const benchTokenEnv = "MCPTUN_BENCH_TOKEN"

func newBenchCmd() *cobra.Command {
	var (
		cfg       loadgen.Config
		token     string
		tokenFile string
		args      string
		headers   []string
		asJSON    bool
		progress  bool
	)
	cmd := &cobra.Command{
		Use:   "bench --url URL",
		Short: "Load-test a Streamable HTTP MCP endpoint with closed-loop tools/call requests",
		Long: `Load-test any Streamable HTTP MCP endpoint.

Each session initializes (or, with --era 2026-07-28, calls server/discover)
and then calls one tool in a closed loop: the next request leaves when the
previous answer is complete. Warm-up requests are left out of the figures.
Requests and req/s include errors; latency covers successful requests.

Run it against the server directly and through the tunnel in the same
session to get a meaningful ratio. The bearer token comes from --token,
--token-file or $` + benchTokenEnv + `.`,
		Example: `  mcptun bench --url http://127.0.0.1:8080/mcp --sessions 8 --duration 30s
  mcptun bench --url https://relay.example/acme/files/mcp --token-file tok --payload-bytes 4096 --json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cfg.URL == "" {
				return errors.New("bench: --url is required")
			}
			var err error
			if cfg.Token, err = benchToken(token, tokenFile); err != nil {
				return err
			}
			if args != "" {
				cfg.Arguments = json.RawMessage(args)
			}
			if cfg.Headers, err = parseHeaders(headers); err != nil {
				return err
			}
			if cfg.Requests > 0 && !cmd.Flags().Changed("duration") {
				cfg.Duration = 0 // stop on the count alone
			}
			var pw *progressWriter
			if progress || isTerminal(os.Stderr) {
				pw = &progressWriter{w: cmd.ErrOrStderr(), overwrite: isTerminal(os.Stderr)}
				cfg.Progress = pw
			}

			res, err := loadgen.Run(cmd.Context(), cfg)
			pw.clear()
			interrupted := err != nil && errors.Is(err, context.Canceled) && cmd.Context().Err() != nil
			if ce := (*loadgen.ConfigError)(nil); errors.As(err, &ce) {
				return fmt.Errorf("bench: --%s: %s", benchFlagOf[ce.Field], ce.Reason)
			}
			if err != nil && !interrupted {
				return fmt.Errorf("bench: %w", err)
			}
			if interrupted {
				fmt.Fprintln(cmd.ErrOrStderr(), "bench: interrupted; figures cover the requests made so far")
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				err = enc.Encode(res)
			} else {
				err = res.WriteTable(out)
			}
			if err != nil {
				return fmt.Errorf("bench: write result: %w", err)
			}
			if res.Requests > 0 && res.Errors == res.Requests {
				return fmt.Errorf("bench: all %d requests failed; first error: %s", res.Requests, res.ErrorSamples[0])
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.URL, "url", "", "MCP endpoint URL (required), e.g. http://127.0.0.1:8080/mcp")
	f.StringVar(&token, "token", "", "bearer token (prefer --token-file or $"+benchTokenEnv+": flags show in ps)")
	f.StringVar(&tokenFile, "token-file", "", "file holding the bearer token")
	f.IntVar(&cfg.Sessions, "sessions", 1, "concurrent MCP sessions; each sends its next request when answered (or, with --rate, when due)")
	f.DurationVar(&cfg.Duration, "duration", loadgen.DefaultDuration, "length of the measured phase (an upper bound with --requests)")
	f.DurationVar(&cfg.Warmup, "warmup", time.Second, "warm-up before measuring, left out of the figures")
	f.IntVar(&cfg.Requests, "requests", 0, "stop after this many measured requests")
	f.Float64Var(&cfg.Rate, "rate", 0, "pace the load: this many requests per second across all sessions, latency counted from when each was due (default: each session sends as soon as answered)")
	f.DurationVar(&cfg.Timeout, "timeout", loadgen.DefaultTimeout, "timeout of each request")
	f.StringVar(&cfg.Tool, "tool", loadgen.DefaultTool, "tool to call")
	f.StringVar(&args, "args", "", `tool arguments as a JSON object, e.g. '{"message":"hi"}'`)
	f.IntVar(&cfg.PayloadBytes, "payload-bytes", 0, "send arguments {ARG: \"<n bytes>\"} instead of --args")
	f.StringVar(&cfg.PayloadArg, "payload-arg", loadgen.DefaultPayloadArg, "argument name that carries --payload-bytes")
	f.StringVar(&cfg.Era, "era", loadgen.EraSessions, "protocol version: "+loadgen.EraSessions+" (sessions) or "+loadgen.EraStateless+" (stateless)")
	f.StringArrayVar(&headers, "header", nil, "extra request header as NAME=VALUE (repeatable)")
	f.BoolVar(&asJSON, "json", false, "print the result as JSON instead of a table")
	f.BoolVar(&progress, "progress", false, "print progress to stderr even when it is not a terminal")
	return cmd
}

// benchFlagOf names the flag behind each loadgen.Config field.
var benchFlagOf = map[string]string{
	"URL": "url", "Token": "token", "Headers": "header", "Sessions": "sessions",
	"Duration": "duration", "Warmup": "warmup", "Requests": "requests", "Timeout": "timeout",
	"Tool": "tool", "Arguments": "args", "PayloadBytes": "payload-bytes", "PayloadArg": "payload-arg",
	"Era": "era", "Rate": "rate",
}

// benchToken picks the token from the flag, the file or the environment;
// naming two sources is an error rather than a silent choice.
func benchToken(flag, file string) (string, error) {
	if flag != "" && file != "" {
		return "", errors.New("bench: --token and --token-file are mutually exclusive")
	}
	if flag != "" {
		return flag, nil
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("bench: --token-file: %w", err)
		}
		tok := strings.TrimSpace(string(b))
		if tok == "" {
			return "", fmt.Errorf("bench: --token-file %s: file is empty", file)
		}
		return tok, nil
	}
	return strings.TrimSpace(os.Getenv(benchTokenEnv)), nil
}

func parseHeaders(kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	h := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("bench: --header %q: want NAME=VALUE", kv)
		}
		h[k] = strings.TrimSpace(v)
	}
	return h, nil
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// progressWriter shows loadgen's progress lines; on a terminal each line
// overwrites the previous one.
type progressWriter struct {
	mu        sync.Mutex
	w         io.Writer
	overwrite bool
	shown     bool
}

func (p *progressWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.overwrite {
		return p.w.Write(b)
	}
	line := strings.TrimRight(string(b), "\n")
	_, err := io.WriteString(p.w, "\r\033[K"+line)
	p.shown = true
	return len(b), err
}

// clear removes an overwritten progress line before the result is printed.
func (p *progressWriter) clear() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		_, _ = io.WriteString(p.w, "\r\033[K")
		p.shown = false
	}
}
