package faults

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mcptun/mcptun/internal/procs"
)

// Options configures a run of the suite.
type Options struct {
	Mcptun  string // the mcptun binary under test
	Fixture string // mcptest-server
	Dir     string // workspace: configs, logs, the nonce log

	Rounds  int      // rounds of each fault
	Faults  []string // names to run (all when empty); see FaultNames
	Workers int      // client sessions per target (agent × server)

	CallMS       int           // how long each record_nonce call waits after recording
	CallDeadline time.Duration // an attempt with no answer within it is lost
	RetryBudget  time.Duration // how long a call is retried on "did not run" answers
	Pre, Post    time.Duration // load before the fault / after recovery
	Hold         time.Duration // how long SIGSTOP lasts
	Recover      time.Duration // how long the deployment may take to route again
	Settle       time.Duration // how long resources may take to return
	TermGrace    time.Duration // how long a SIGTERM'd process may take to exit

	Log *slog.Logger // progress; nil discards
}

// Short is the CI version: one round per fault, a few seconds each.
func Short() Options {
	return Options{Rounds: 1, Workers: 1, CallMS: 50, CallDeadline: 20 * time.Second, RetryBudget: 10 * time.Second,
		Pre: 700 * time.Millisecond, Post: 700 * time.Millisecond, Hold: 2 * time.Second,
		Recover: 30 * time.Second, Settle: 10 * time.Second, TermGrace: 35 * time.Second}
}

// Full is `make faults`: three rounds per fault, two sessions per
// target, longer loads and a freeze past QUIC's 5 s dead-peer promise.
func Full() Options {
	o := Short()
	o.Rounds, o.Workers, o.CallMS = 3, 2, 100
	o.Pre, o.Post, o.Hold = 2*time.Second, 2*time.Second, 8*time.Second
	return o
}

// fault is one way of breaking the deployment, applied under load.
type fault struct {
	name string
	// inject breaks something and brings it back (restart, SIGCONT); it
	// returns when the broken part runs again, the agents it affects (to
	// wait until the relay routes to them) and the pids of stdio children
	// that were alive before and must be gone once their sessions end.
	inject func(ctx context.Context, c *cluster) (affected []string, err error)
}

func allAgents() []string { return slices.Clone(agentNames) }

func faultList(hold, grace time.Duration) []fault {
	fs := []fault{
		{"relay SIGKILL+restart", func(ctx context.Context, c *cluster) ([]string, error) {
			if _, err := c.inFlight(ctx, "-"); err != nil {
				return nil, err
			}
			c.relay.p.Kill()
			return allAgents(), c.startRelay(ctx)
		}},
		{"relay SIGSTOP/SIGCONT", func(ctx context.Context, c *cluster) ([]string, error) {
			if _, err := c.inFlight(ctx, "-"); err != nil {
				return nil, err
			}
			return allAgents(), freeze(ctx, c.relay, hold)
		}},
		{"relay SIGTERM+restart", func(ctx context.Context, c *cluster) ([]string, error) {
			if _, err := c.inFlight(ctx, "-"); err != nil {
				return nil, err
			}
			err := terminate(c.relay, grace)
			return allAgents(), errors.Join(err, c.startRelay(ctx))
		}},
	}
	for _, a := range agentNames {
		mine := "-" + a + "." // in nonces: PREFIX-AGENT.SERVER-wN-I
		fs = append(fs,
			fault{"agent(" + a + ") SIGKILL, restart after the hold", func(ctx context.Context, c *cluster) ([]string, error) {
				if _, err := c.inFlight(ctx, mine); err != nil {
					return nil, err
				}
				n := c.agents[a]
				// The agent alone, as a crash would: its children see
				// their stdin end. It stays down for the hold, so that
				// calls meet a dead agent, not already its successor.
				if err := n.p.Signal(syscall.SIGKILL); err != nil {
					return nil, err
				}
				<-n.p.Done()
				sleepCtx(ctx, hold)
				return []string{a}, c.startAgent(ctx, a)
			}},
			fault{"agent(" + a + ") SIGSTOP/SIGCONT", func(ctx context.Context, c *cluster) ([]string, error) {
				if _, err := c.inFlight(ctx, mine); err != nil {
					return nil, err
				}
				return []string{a}, freeze(ctx, c.agents[a], hold)
			}},
			fault{"agent(" + a + ") SIGTERM+restart", func(ctx context.Context, c *cluster) ([]string, error) {
				if _, err := c.inFlight(ctx, mine); err != nil {
					return nil, err
				}
				err := terminate(c.agents[a], grace)
				return []string{a}, errors.Join(err, c.startAgent(ctx, a))
			}},
			fault{"stdio child of agent(" + a + ") SIGKILL", func(ctx context.Context, c *cluster) ([]string, error) {
				// The child that has just started a call: found by the
				// pid it logged, checked to be the agent's child.
				pid, err := c.inFlight(ctx, mine+serverStdio+"-")
				if err != nil {
					return nil, err
				}
				kids, err := procs.Host.Children(c.agents[a].p.Pid())
				if err != nil || !slices.Contains(kids, pid) {
					return nil, fmt.Errorf("pid %d, running a call of agent %s's stdio server, is not its child (children %v, %v)", pid, a, kids, err)
				}
				return []string{a}, syscall.Kill(pid, syscall.SIGKILL)
			}},
		)
	}
	fs = append(fs, fault{"upstream HTTP server SIGKILL+restart", func(ctx context.Context, c *cluster) ([]string, error) {
		if _, err := c.inFlight(ctx, "."+serverHTTP+"-"); err != nil {
			return nil, err
		}
		c.upstream.Kill()
		return allAgents(), c.startUpstream(ctx)
	}})
	return fs
}

// FaultNames lists the faults in the order the suite runs them.
func FaultNames() []string {
	var out []string
	for _, f := range faultList(0, 0) {
		out = append(out, f.name)
	}
	return out
}

// freeze stops n for hold, then lets it continue.
func freeze(ctx context.Context, n *node, hold time.Duration) error {
	if err := n.p.Signal(syscall.SIGSTOP); err != nil {
		return err
	}
	t := time.NewTimer(hold)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return n.p.Signal(syscall.SIGCONT)
}

// Row is the outcome of one round of one fault.
type Row struct {
	Fault string
	Round int

	Calls    int
	OK       int
	Errors   map[string]int // label → count: gave up, answered wrongly
	Unknown  map[string]int // outcome unknown, by label
	Lost     int
	Twice    int // nonces executed at least twice
	RanAfter int // calls given up on "did not run" answers that had run (a false promise, as Twice)
	Phantom  int // calls answered OK that never ran

	// Suspects are the calls behind Twice, RanAfter, Phantom and Lost:
	// nonce, executions, and what the client saw attempt by attempt.
	Suspects []string

	Slowest   time.Duration // the longest call, retries included
	Recovered time.Duration // from the fault's signal until the relay routes again
	Problem   string        // the fault could not be applied or recovered

	Resources []Resource
}

// Failed says why the row breaks the suite's promises ("" if it does not).
func (r Row) Failed() string {
	var why []string
	if r.Problem != "" {
		why = append(why, r.Problem)
	}
	if r.Lost > 0 {
		why = append(why, fmt.Sprintf("%d lost", r.Lost))
	}
	if r.Twice > 0 {
		why = append(why, fmt.Sprintf("%d executed twice", r.Twice))
	}
	if r.RanAfter > 0 {
		// Not twice only because the retries failed too: the answer
		// broke the same promise as for a call executed twice.
		why = append(why, fmt.Sprintf("%d answered as not run had run", r.RanAfter))
	}
	if r.Phantom > 0 {
		why = append(why, fmt.Sprintf("%d answered OK but never ran", r.Phantom))
	}
	for _, res := range r.Resources {
		if res.Failed() != "" {
			why = append(why, res.Process+": "+res.Failed())
		}
	}
	return strings.Join(why, "; ")
}

// Run deploys, warms up, then applies each fault under load, round by
// round, and returns a row per round. The error is for the harness itself
// (could not deploy); broken promises are in the rows.
func Run(ctx context.Context, o Options) ([]Row, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	all := faultList(o.Hold, o.TermGrace)
	var chosen []fault
	for _, f := range all {
		if len(o.Faults) == 0 || slices.Contains(o.Faults, f.name) {
			chosen = append(chosen, f)
		}
	}
	for _, name := range o.Faults {
		if !slices.ContainsFunc(all, func(f fault) bool { return f.name == name }) {
			return nil, fmt.Errorf("unknown fault %q (known: %s)", name, strings.Join(FaultNames(), ", "))
		}
	}
	c, err := deploy(ctx, o)
	if err != nil {
		return nil, fmt.Errorf("deploy: %w", err)
	}
	defer c.close()

	var targets []target
	for _, a := range agentNames {
		targets = append(targets, target{a, serverStdio}, target{a, serverHTTP})
	}
	// Warm up: pools, sessions and heaps reach their working size before
	// the first baseline.
	l := startLoad(c, targets, "warm")
	if !sleepCtx(ctx, o.Pre) {
		l.stop()
		return nil, ctx.Err()
	}
	l.stop()
	base := c.measure(ctx)

	var rows []Row
	for fi, f := range chosen {
		for round := 1; round <= o.Rounds; round++ {
			row := Row{Fault: f.name, Round: round}
			o.Log.Info("fault", "name", f.name, "round", round)
			prefix := fmt.Sprintf("f%dr%d", fi, round)
			l := startLoad(c, targets, prefix)
			sleepCtx(ctx, o.Pre)
			before := c.children()
			struck := time.Now()
			affected, err := f.inject(ctx, c)
			if err != nil {
				row.Problem = "fault: " + err.Error()
			}
			for _, a := range affected {
				if err := c.waitRouted(ctx, a, o.Recover); err != nil {
					row.Problem = strings.TrimPrefix(row.Problem+"; "+err.Error(), "; ")
				}
			}
			row.Recovered = time.Since(struck)
			sleepCtx(ctx, o.Post)
			results := l.stop()
			after := c.settle(ctx, base, before)
			row.Resources = compareWith(o, base, after)
			counts, err := readNonces(c.nonceLog, prefix+"-")
			if err != nil {
				return rows, err
			}
			row.tally(results, counts)
			if dead := c.deadNodes(); dead != "" {
				row.Problem = strings.TrimPrefix(row.Problem+"; "+dead, "; ")
			}
			rows = append(rows, row)
			o.Log.Info("fault done", "name", f.name, "round", round, "calls", row.Calls, "ok", row.OK,
				"lost", row.Lost, "twice", row.Twice, "failed", row.Failed())
			base = after
			if ctx.Err() != nil {
				return rows, ctx.Err()
			}
			if row.Problem != "" {
				// Start the next fault from a deployment that runs.
				if err := c.repair(ctx); err != nil {
					return rows, fmt.Errorf("after %s: %w", f.name, err)
				}
				base = c.measure(ctx)
			}
		}
	}
	return rows, nil
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// deadNodes names the relay or agents that exited on their own.
func (c *cluster) deadNodes() string {
	var dead []string
	for _, n := range c.nodes() {
		if gone, err := n.p.Exited(); gone {
			dead = append(dead, fmt.Sprintf("%s exited (%v)", n.role, err))
		}
	}
	return strings.Join(dead, "; ")
}

// repair restarts whatever is not running and waits until it routes.
func (c *cluster) repair(ctx context.Context) error {
	if gone, _ := c.upstream.Exited(); gone {
		if err := c.startUpstream(ctx); err != nil {
			return err
		}
	}
	if gone, _ := c.relay.p.Exited(); gone {
		if err := c.startRelay(ctx); err != nil {
			return err
		}
	}
	for _, a := range agentNames {
		if gone, _ := c.agents[a].p.Exited(); gone {
			if err := c.startAgent(ctx, a); err != nil {
				return err
			}
		}
		if err := c.waitRouted(ctx, a, c.o.Recover); err != nil {
			return err
		}
	}
	return nil
}

// tally fills the call columns from the load's results and the nonce
// log's execution counts.
func (r *Row) tally(results []callResult, counts map[string]int) {
	r.Errors, r.Unknown = make(map[string]int), make(map[string]int)
	for _, cr := range results {
		r.Calls++
		r.Slowest = max(r.Slowest, cr.took)
		ran := counts[cr.nonce]
		final := cr.label
		if final == "" {
			final = map[outcome]string{answered: "ok", lost: "no answer"}[cr.kind]
		}
		suspect := func() {
			r.Suspects = append(r.Suspects, fmt.Sprintf("%s ran %d×; client saw: %s",
				cr.nonce, ran, runs(append(slices.Clone(cr.history), final))))
		}
		if ran >= 2 {
			r.Twice++
			suspect()
		}
		switch cr.kind {
		case answered:
			if cr.label == "" {
				r.OK++
				if ran == 0 {
					r.Phantom++
					suspect()
				}
			} else {
				r.Errors[cr.label]++
			}
		case notRun:
			r.Errors["gave up: "+cr.label]++
			if ran > 0 {
				r.RanAfter++
				if ran == 1 {
					suspect()
				}
			}
		case unknown:
			r.Unknown[cr.label]++
		case lost:
			r.Lost++
			suspect()
		}
	}
}

// inFlightTimeout bounds the wait for a call to start running.
const inFlightTimeout = 10 * time.Second

// inFlight waits until a call whose nonce contains part starts to run (its
// line appears in the nonce log) and returns the pid of the process
// running it. The record_nonce tool waits CallMS after logging, so a fault that
// strikes at once meets that call in flight, every round.
func (c *cluster) inFlight(ctx context.Context, part string) (int, error) {
	f, err := os.Open(c.nonceLog)
	if err != nil {
		return 0, fmt.Errorf("nonce log: %w", err)
	}
	defer f.Close()
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return 0, fmt.Errorf("nonce log: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, inFlightTimeout)
	defer cancel()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	var pending []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := f.ReadAt(buf, off)
		off += int64(n)
		pending = append(pending, buf[:n]...)
		for {
			line, rest, ok := bytes.Cut(pending, []byte{'\n'})
			if !ok {
				break
			}
			pending = rest
			nonce, pid, _ := strings.Cut(string(line), " ")
			if strings.Contains(nonce, part) {
				p, perr := strconv.Atoi(pid)
				if perr != nil {
					return 0, fmt.Errorf("nonce log line %q: no pid", line)
				}
				return p, nil
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("nonce log: %w", err)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("no call matching %q started within %s", part, inFlightTimeout)
		case <-tick.C:
		}
	}
}

// readNonces counts the executions of each nonce with prefix in the log.
func readNonces(path, prefix string) (map[string]int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("nonce log: %w", err)
	}
	defer f.Close()
	counts := make(map[string]int)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "NONCE PID": the first field is the nonce.
		if nonce, _, _ := strings.Cut(sc.Text(), " "); strings.HasPrefix(nonce, prefix) {
			counts[nonce]++
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("nonce log: %w", err)
	}
	return counts, nil
}

// runs joins labels with arrows, repeats folded: "a ×3 → b".
func runs(labels []string) string {
	var out []string
	for i := 0; i < len(labels); {
		j := i
		for j < len(labels) && labels[j] == labels[i] {
			j++
		}
		if j-i > 1 {
			out = append(out, fmt.Sprintf("%s ×%d", labels[i], j-i))
		} else {
			out = append(out, labels[i])
		}
		i = j
	}
	return strings.Join(out, " → ")
}
