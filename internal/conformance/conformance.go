// Package conformance runs the MCP conformance suite
// (@modelcontextprotocol/conformance, installed by .ci/install-tools.sh)
// against an MCP server URL and reads back what it found, per scenario, so
// that tests can require every scenario to pass, or compare a run through the
// tunnel with a direct run.
//
// The suite is a Node program. For each server scenario it connects as a
// client, checks the server's behaviour and records checks with a status
// (SUCCESS, FAILURE, WARNING, INFO). Run passes -o DIR, and the suite writes
// DIR/server-<scenario>-<timestamp>/checks.json for every scenario it
// completed; it also prints a summary line per scenario
// ("✓ tools-list: 1 passed, 0 failed"), which names scenarios that crashed
// before writing checks. Run reads both and fails loudly if they disagree.
//
// The package also finds and starts the reference server
// @modelcontextprotocol/server-everything (see everything.go).
package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// Check statuses the suite reports.
const (
	StatusSuccess = "SUCCESS"
	StatusFailure = "FAILURE"
	StatusWarning = "WARNING"
	StatusInfo    = "INFO"
)

// Check is one check of a scenario, as the suite recorded it.
type Check struct {
	ID           string `json:"id"`
	Name         string `json:"name"`
	Description  string `json:"description"`
	Status       string `json:"status"`
	ErrorMessage string `json:"errorMessage,omitempty"`
}

// Scenario is the outcome of one scenario.
type Scenario struct {
	Name     string
	Passed   int // checks with status SUCCESS
	Failed   int // checks with status FAILURE
	Warnings int // checks with status WARNING
	// Checks are the recorded checks (INFO ones dropped); empty when the
	// scenario crashed before the suite wrote them.
	Checks []Check
}

// OK reports whether the scenario had no failed check.
func (s Scenario) OK() bool { return s.Failed == 0 }

// Results are the outcomes of one run of the suite.
type Results struct {
	URL string
	// Order lists the scenarios in the order the suite ran them.
	Order     []string
	Scenarios map[string]Scenario
	// Output is the suite's combined stdout and stderr, for diagnosis.
	Output string
}

// Failed returns the scenarios with at least one failed check, in run order.
func (r *Results) Failed() []string {
	var out []string
	for _, name := range r.Order {
		if !r.Scenarios[name].OK() {
			out = append(out, name)
		}
	}
	return out
}

// Table renders one row per scenario: name, passed, failed and warning
// counts, and the first failure message. It avoids the suite's own
// "N passed, N failed" wording, which CI reads as a test runner's verdict.
func (r *Results) Table() string {
	var b bytes.Buffer
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tOK\tPASS\tFAIL\tWARN\tFIRST FAILURE")
	for _, name := range r.Order {
		s := r.Scenarios[name]
		ok := "yes"
		if !s.OK() {
			ok = "NO"
		}
		first := ""
		for _, c := range s.Checks {
			if c.Status == StatusFailure {
				first = c.Name + ": " + c.ErrorMessage
				break
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", name, ok, s.Passed, s.Failed, s.Warnings, first)
	}
	_ = tw.Flush()
	return b.String()
}

// Diff describes every scenario whose counts differ between r and other
// (for example a direct run and a run through the tunnel), or whose presence
// differs; "" means the two runs agree.
func (r *Results) Diff(other *Results) string {
	names := slices.Clone(r.Order)
	for _, n := range other.Order {
		if _, ok := r.Scenarios[n]; !ok {
			names = append(names, n)
		}
	}
	var b strings.Builder
	for _, n := range names {
		a, inA := r.Scenarios[n]
		o, inO := other.Scenarios[n]
		switch {
		case !inA:
			fmt.Fprintf(&b, "%s: only in the second run\n", n)
		case !inO:
			fmt.Fprintf(&b, "%s: only in the first run\n", n)
		case a.Passed != o.Passed || a.Failed != o.Failed || a.Warnings != o.Warnings:
			fmt.Fprintf(&b, "%s: pass/fail/warn %d/%d/%d vs %d/%d/%d\n", n, a.Passed, a.Failed, a.Warnings, o.Passed, o.Failed, o.Warnings)
		}
	}
	return b.String()
}

// CheckExpected compares the failed scenarios with the expected ones (for
// example from LoadExpectedFailures) the way the suite's --expected-failures
// does: an unexpected failure and an expected failure that now passes (a
// stale entry) are both errors, and so is an expected failure that did not
// run at all (renamed or dropped by the suite), which would otherwise hide
// for good behind the list.
func (r *Results) CheckExpected(expected []string) error {
	var errs []error
	failed := r.Failed()
	for _, n := range failed {
		if !slices.Contains(expected, n) {
			errs = append(errs, fmt.Errorf("scenario %s failed unexpectedly", n))
		}
	}
	for _, n := range expected {
		s, ran := r.Scenarios[n]
		switch {
		case !ran:
			errs = append(errs, fmt.Errorf("scenario %s is listed as an expected failure but did not run", n))
		case s.OK():
			errs = append(errs, fmt.Errorf("scenario %s passed but is listed as an expected failure", n))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("conformance: results differ from expectations: %w", errors.Join(errs...))
	}
	return nil
}

type config struct {
	bin      string
	suite    string
	scenario string
	outDir   string
	timeout  time.Duration
}

// Option configures Run.
type Option func(*config)

// WithBinary runs this suite executable instead of FindBinary's.
func WithBinary(path string) Option { return func(c *config) { c.bin = path } }

// WithSuite picks the suite: "active" (the default), "all" or "pending".
func WithSuite(name string) Option { return func(c *config) { c.suite = name } }

// WithScenario runs one scenario instead of a suite.
func WithScenario(name string) Option { return func(c *config) { c.scenario = name } }

// WithOutputDir keeps the suite's checks.json files in dir instead of a
// temporary directory that Run removes.
func WithOutputDir(dir string) Option { return func(c *config) { c.outDir = dir } }

// WithTimeout bounds the whole run (default 5 minutes).
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// Run runs the suite's server scenarios against url (an MCP endpoint such as
// http://127.0.0.1:PORT/mcp). A run whose scenarios fail is not an error:
// the Results say which. Errors mean the suite could not run or its output
// could not be read.
func Run(ctx context.Context, url string, opts ...Option) (*Results, error) {
	cfg := config{suite: "active", timeout: 5 * time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.bin == "" {
		bin, err := FindBinary()
		if err != nil {
			return nil, err
		}
		cfg.bin = bin
	}
	outDir := cfg.outDir
	if outDir == "" {
		dir, err := os.MkdirTemp("", "mcptun-conformance-")
		if err != nil {
			return nil, fmt.Errorf("conformance: make output dir: %w", err)
		}
		defer os.RemoveAll(dir)
		outDir = dir
	}
	args := []string{"server", "--url", url, "-o", outDir}
	if cfg.scenario != "" {
		args = append(args, "--scenario", cfg.scenario)
	} else {
		args = append(args, "--suite", cfg.suite)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, cfg.bin, args...)
	cmd.Dir = outDir
	cmd.Env = append(os.Environ(), "NO_COLOR=1", "FORCE_COLOR=0")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if err != nil && !(errors.As(err, &exit) && exit.ExitCode() == 1 && ctx.Err() == nil) {
		return nil, fmt.Errorf("conformance: run %s %s: %w\n%s", cfg.bin, strings.Join(args, " "), err, tail(out, 4000))
	}
	res, perr := parse(url, out, outDir)
	if perr != nil {
		return nil, fmt.Errorf("conformance: read results of %s: %w\n%s", url, perr, tail(out, 4000))
	}
	if len(res.Order) == 0 {
		return nil, fmt.Errorf("conformance: the suite reported no scenario\n%s", tail(out, 4000))
	}
	return res, nil
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// summaryLine matches the suite's per-scenario summary line.
var summaryLine = regexp.MustCompile(`^[✓✗] (\S+): (\d+) passed, (\d+) failed$`)

// dirSuffix matches the timestamp the suite appends to each result dir.
var dirSuffix = regexp.MustCompile(`-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z$`)

// ParseSummary reads the suite's per-scenario summary lines from its
// stdout, in order. Lines that are not summary lines are ignored.
func ParseSummary(out []byte) ([]Scenario, error) {
	var list []Scenario
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		m := summaryLine.FindStringSubmatch(strings.TrimSpace(sc.Text()))
		if m == nil {
			continue
		}
		p, err1 := strconv.Atoi(m[2])
		f, err2 := strconv.Atoi(m[3])
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("summary line %q: %w", sc.Text(), err)
		}
		list = append(list, Scenario{Name: m[1], Passed: p, Failed: f})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scan suite output: %w", err)
	}
	return list, nil
}

// ReadChecks reads the checks.json files a run with -o dir left, keyed by
// scenario.
func ReadChecks(dir string) (map[string][]Check, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", dir, err)
	}
	out := make(map[string][]Check)
	for _, e := range entries {
		name, ok := strings.CutPrefix(e.Name(), "server-")
		if !e.IsDir() || !ok || !dirSuffix.MatchString(name) {
			continue
		}
		name = dirSuffix.ReplaceAllString(name, "")
		path := filepath.Join(dir, e.Name(), "checks.json")
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", path, err)
		}
		var checks []Check
		if err := json.Unmarshal(b, &checks); err != nil {
			return nil, fmt.Errorf("decode %s: %w", path, err)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("two result directories for scenario %s in %s", name, dir)
		}
		out[name] = checks
	}
	return out, nil
}

func count(checks []Check) Scenario {
	var s Scenario
	for _, c := range checks {
		switch c.Status {
		case StatusSuccess:
			s.Passed++
		case StatusFailure:
			s.Failed++
		case StatusWarning:
			s.Warnings++
		}
		if c.Status != StatusInfo {
			s.Checks = append(s.Checks, c)
		}
	}
	return s
}

func parse(url string, out []byte, dir string) (*Results, error) {
	summary, err := ParseSummary(out)
	if err != nil {
		return nil, err
	}
	checks, err := ReadChecks(dir)
	if err != nil {
		return nil, err
	}
	res := &Results{URL: url, Scenarios: make(map[string]Scenario), Output: string(out)}
	for _, s := range summary {
		if _, dup := res.Scenarios[s.Name]; dup {
			return nil, fmt.Errorf("scenario %s summarized twice", s.Name)
		}
		if cs, ok := checks[s.Name]; ok {
			c := count(cs)
			if c.Passed != s.Passed || c.Failed != s.Failed {
				return nil, fmt.Errorf("scenario %s: summary says %d passed, %d failed; checks.json says %d, %d",
					s.Name, s.Passed, s.Failed, c.Passed, c.Failed)
			}
			c.Name = s.Name
			s = c
		}
		res.Order = append(res.Order, s.Name)
		res.Scenarios[s.Name] = s
	}
	// A single --scenario run prints no summary line: its checks.json is
	// all there is.
	var extra []string
	for name := range checks {
		if _, ok := res.Scenarios[name]; !ok {
			extra = append(extra, name)
		}
	}
	sort.Strings(extra)
	for _, name := range extra {
		s := count(checks[name])
		s.Name = name
		res.Order = append(res.Order, name)
		res.Scenarios[name] = s
	}
	return res, nil
}
