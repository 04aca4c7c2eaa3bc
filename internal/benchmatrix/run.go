package benchmatrix

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/mcptun/mcptun/internal/loadgen"
)

// Sections of a run.
const (
	SectionMatrix = "matrix" // rate, latency and CPU per request on every path
	SectionPaced  = "paced"  // CPU per request with every path at one request rate
	SectionLarge  = "large"  // one large tool result
	SectionIdle   = "idle"   // memory per idle session
	SectionLossy  = "lossy"  // small calls beside a bulk transfer on a lossy link
)

// AllSections lists the sections in run order.
var AllSections = []string{SectionMatrix, SectionPaced, SectionLarge, SectionIdle, SectionLossy}

// Options configures a run. Mcptun, Fixture and OutDir are required; zero
// values elsewhere select nothing (the command line supplies defaults).
type Options struct {
	Mcptun  string // the mcptun binary
	Fixture string // the mcptest-server binary
	OutDir  string // configs, logs and profiles go here
	// Self is a binary that runs the plain tunnel's roles (RunRole): the
	// benchmark command itself. The plain paths need it.
	Self string

	Sections []string

	Sessions []int
	Paths    []string
	// Baseline, if set, is another mcptun binary (an older build, say):
	// its tunnel paths are deployed beside ours and measured in the same
	// interleaved rounds, reported as "<path>@baseline".
	Baseline string
	// Control, if set, deploys a second relay and set of agents of this
	// build with the customer's control point on (a tool policy on every
	// server and the audit trail at the agent, the admin listener with
	// its metrics on both roles) and measures each of mcptun's paths of
	// the matrix and paced sections on it too, in the same interleaved
	// rounds, reported as "<path>+control".
	Control bool
	// BaselineControl, with Control and Baseline, also deploys the
	// baseline build with the control point on ("<path>@baseline+control"):
	// for a change to the control point's own cost.
	BaselineControl bool
	Rounds          int // each cell measured this many times, rounds interleaved; the median is reported (default 1)
	Duration        time.Duration
	Warmup          time.Duration
	PayloadBytes    int    // size of the echo tool's text argument
	Era             string // protocol era of the load (loadgen.EraSessions by default)

	// The paced section: PacedPaths at PacedRate requests per second
	// over PacedSessions sessions, Rounds interleaved rounds. A closed
	// loop runs a slower path at a lower rate, where each wake-up of every
	// process serves fewer requests, so its CPU per request is not
	// comparable with a faster path's; at one rate it is.
	PacedRate     float64
	PacedSessions int
	PacedPaths    []string

	LargeBytes int
	LargeReps  int
	LargePaths []string

	IdleSessions int // HTTP upstream, initialize only
	IdleStreams  int // HTTP upstream, each with an open GET stream
	IdleStdio    int // stdio upstream, initialize only

	Lossy LossyOptions

	// GOMAXPROCS, if > 0, is set in the environment of every relay and
	// agent (mcptun's and the plain tunnel's) of the matrix, paced and
	// large sections; 0 leaves the Go default (one per CPU).
	GOMAXPROCS int

	// ProfileDir, if set, receives CPU profiles of relay and agent for
	// every tunnel cell's measured phase.
	ProfileDir string

	Logger *slog.Logger
}

// Report is everything a run measured.
type Report struct {
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed_ns"`
	Machine Machine       `json:"machine"`
	Setup   Setup         `json:"setup"`

	Cells     []Cell        `json:"cells,omitempty"`
	Paced     []Cell        `json:"paced,omitempty"`
	Large     []LargeRow    `json:"large,omitempty"`
	Idle      []IdleRow     `json:"idle,omitempty"`
	Lossy     *LossyReport  `json:"lossy,omitempty"`
	Targets   []TargetCheck `json:"targets,omitempty"`
	Errors    []string      `json:"errors,omitempty"`
	Processes []string      `json:"process_notes,omitempty"`
}

// Setup records how the figures were taken.
type Setup struct {
	Sections     []string      `json:"sections"`
	Sessions     []int         `json:"sessions,omitempty"`
	Paths        []string      `json:"paths,omitempty"`
	Rounds       int           `json:"rounds,omitempty"`
	Baseline     string        `json:"baseline,omitempty"`
	Control      bool          `json:"control,omitempty"`
	Duration     time.Duration `json:"duration_ns,omitempty"`
	Warmup       time.Duration `json:"warmup_ns,omitempty"`
	PayloadBytes int           `json:"payload_bytes,omitempty"`
	Era          string        `json:"era,omitempty"`
	PacedRate    float64       `json:"paced_rate,omitempty"`
	GOMAXPROCS   int           `json:"gomaxprocs,omitempty"`
	Generator    string        `json:"generator"`
	CPUSource    string        `json:"cpu_source"`
}

func (r *Report) fail(format string, args ...any) {
	r.Errors = append(r.Errors, fmt.Sprintf(format, args...))
}

// Run performs the sections o selects and returns their figures. A
// section that cannot run is recorded in Report.Errors and the others
// still run; Run itself fails only on invalid options.
func Run(ctx context.Context, o Options) (*Report, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.Era == "" {
		o.Era = loadgen.EraSessions
	}
	rep := &Report{
		Started: time.Now(),
		Machine: readMachine(hostProc),
		Setup: Setup{
			Sections: o.Sections, Sessions: o.Sessions, Paths: o.Paths, Rounds: o.Rounds, Baseline: o.Baseline, Control: o.Control,
			Duration: o.Duration, Warmup: o.Warmup, PayloadBytes: o.PayloadBytes, Era: o.Era, PacedRate: o.PacedRate, GOMAXPROCS: o.GOMAXPROCS,
			Generator: "loadgen.Run inside the benchmatrix process; relay, agent and fixture are separate processes",
			CPUSource: "sum of /proc/PID/task/*/schedstat run time (ns) over the measured phase only; /proc/PID/stat utime+stime if threads exited",
		},
	}
	has := func(s string) bool { return slices.Contains(o.Sections, s) }
	if has(SectionMatrix) || has(SectionPaced) || has(SectionLarge) {
		runTunnels(ctx, log, o, rep)
	}
	if has(SectionIdle) && ctx.Err() == nil {
		runIdleSection(ctx, log, o, rep)
	}
	if has(SectionLossy) && ctx.Err() == nil {
		rep.Lossy = runLossy(ctx, log, lossyDir(o.OutDir), o.Mcptun, o.Fixture, o.Lossy)
		if rep.Lossy.Error != "" {
			rep.fail("lossy: %s", rep.Lossy.Error)
		}
	}
	if err := ctx.Err(); err != nil {
		rep.fail("interrupted: %v", err)
	}
	rep.Targets = checkTargets(rep)
	rep.Elapsed = time.Since(rep.Started)
	return rep, nil
}

func (o *Options) validate() error {
	switch {
	case o.Mcptun == "" || o.Fixture == "":
		return errors.New("benchmatrix: the mcptun and fixture binaries are required")
	case o.OutDir == "":
		return errors.New("benchmatrix: an output directory is required")
	case len(o.Sections) == 0:
		return errors.New("benchmatrix: no section selected")
	}
	for _, s := range o.Sections {
		if !slices.Contains(AllSections, s) {
			return fmt.Errorf("benchmatrix: unknown section %q (known: %v)", s, AllSections)
		}
	}
	if slices.Contains(o.Sections, SectionMatrix) {
		if len(o.Sessions) == 0 || len(o.Paths) == 0 {
			return errNoCells
		}
		for _, n := range o.Sessions {
			if n <= 0 {
				return fmt.Errorf("benchmatrix: session count %d must be positive", n)
			}
		}
	}
	if o.GOMAXPROCS < 0 {
		return fmt.Errorf("benchmatrix: GOMAXPROCS %d is negative", o.GOMAXPROCS)
	}
	if slices.Contains(o.Sections, SectionPaced) {
		switch {
		case !(o.PacedRate > 0) || math.IsInf(o.PacedRate, 0):
			return fmt.Errorf("benchmatrix: paced rate %v: want requests per second, > 0", o.PacedRate)
		case o.PacedSessions <= 0:
			return fmt.Errorf("benchmatrix: paced session count %d must be positive", o.PacedSessions)
		case len(o.PacedPaths) == 0:
			return errors.New("benchmatrix: the paced section needs paths")
		}
		if err := validatePaths(o.PacedPaths); err != nil {
			return err
		}
	}
	if slices.Contains(o.Sections, SectionMatrix) || slices.Contains(o.Sections, SectionPaced) {
		if o.Duration <= 0 {
			return fmt.Errorf("benchmatrix: duration %s must be positive", o.Duration)
		}
		if o.Warmup < 0 {
			return fmt.Errorf("benchmatrix: warm-up %s is negative", o.Warmup)
		}
		if o.Rounds < 0 || o.Rounds > 20 {
			return fmt.Errorf("benchmatrix: rounds %d: want 1 to 20", o.Rounds)
		}
	}
	if err := validatePaths(o.Paths); err != nil {
		return err
	}
	if err := validatePaths(o.LargePaths); err != nil {
		return err
	}
	if slices.Contains(o.Sections, SectionLarge) && (o.LargeBytes <= 0 || o.LargeReps <= 0 || len(o.LargePaths) == 0) {
		return errors.New("benchmatrix: the large section needs a size, a repetition count and paths")
	}
	if slices.Contains(o.Sections, SectionLossy) {
		l := o.Lossy
		switch {
		case l.Netns == "":
			return errors.New("benchmatrix: the lossy section needs a namespace name")
		case l.Link.Loss < 0 || l.Link.Loss >= 1:
			return fmt.Errorf("benchmatrix: loss %g must be in [0,1)", l.Link.Loss)
		case l.Link.Delay < 0:
			return fmt.Errorf("benchmatrix: delay %s is negative", l.Link.Delay)
		case l.Sessions <= 0 || l.Duration <= 0 || l.BulkBytes <= 0:
			return errors.New("benchmatrix: the lossy section needs sessions, a duration and a bulk size")
		}
	}
	return os.MkdirAll(o.OutDir, 0o755)
}

// tunnelEnv is the environment relays and agents get on top of ours.
func (o *Options) tunnelEnv() []string {
	if o.GOMAXPROCS > 0 {
		return []string{"GOMAXPROCS=" + strconv.Itoa(o.GOMAXPROCS)}
	}
	return nil
}

// BaselineSuffix marks the paths served by Options.Baseline.
const BaselineSuffix = "@baseline"

// ControlSuffix marks the paths served with the control point on
// (Options.Control).
const ControlSuffix = "+control"

// hasVariants says whether path is one of mcptun's own tunnel paths, which
// the baseline build and the control mode deploy again: not the fixture,
// not the plain tunnel, not forwarded (a baseline older than the fleet has
// no cluster section; the fleet deployment has no control mode).
func hasVariants(path string) bool {
	return path != PathDirect && path != PathPlainQUIC && path != PathPlainTCP && path != PathForwarded
}

// withVariants lists paths, each of mcptun's own followed by its variants
// with the given suffixes.
func withVariants(paths []string, suffixes ...string) (out []string) {
	for _, p := range paths {
		out = append(out, p)
		if hasVariants(p) {
			for _, s := range suffixes {
				out = append(out, p+s)
			}
		}
	}
	return out
}

// runTunnels deploys fixture, relay and one agent per tunnel variant and
// runs the matrix and the large-result rows against them.
func runTunnels(ctx context.Context, log *slog.Logger, o Options, rep *Report) {
	ws, err := newWorkspace(filepath.Join(o.OutDir, "matrix"), o.Mcptun, o.Fixture)
	if err != nil {
		rep.fail("matrix: %v", err)
		return
	}
	ws.tunnelEnv = o.tunnelEnv()
	fx, err := ws.startFixture(ctx, "")
	if err != nil {
		rep.fail("matrix: fixture: %v", err)
		return
	}
	defer stopLogged(log, fx.process)

	var paths []string
	if slices.Contains(o.Sections, SectionMatrix) {
		paths = append(paths, o.Paths...)
	}
	if slices.Contains(o.Sections, SectionPaced) {
		paths = append(paths, o.PacedPaths...)
	}
	if slices.Contains(o.Sections, SectionLarge) {
		paths = append(paths, o.LargePaths...)
	}
	specs := agentSpecs(paths)
	var watched, started []*process
	defer func() {
		for i := len(started) - 1; i >= 0; i-- {
			stopLogged(log, started[i])
		}
	}()
	targets := map[string]target{
		PathDirect: {Path: PathDirect, URL: fx.URL, roles: []role{{roleServer, pidsOf(fx.Pid())}}},
	}
	// deploy starts a relay and one agent per tunnel variant from ws's
	// binary, all in front of the one fixture; their paths get suffix.
	deploy := func(ws *workspace, suffix string) {
		if len(specs) == 0 {
			return
		}
		relay, err := ws.startRelay(ctx, "127.0.0.1:0", specs)
		if err != nil {
			rep.fail("matrix: relay%s: %v", suffix, err)
			return
		}
		started = append(started, relay.process)
		watched = append(watched, relay.process)
		for _, spec := range specs {
			ag, err := ws.startAgent(ctx, relay, relay.TunnelAddr, spec, fx.URL, "")
			if err != nil {
				rep.fail("matrix: %v", err)
				continue
			}
			started = append(started, ag.process)
			watched = append(watched, ag.process)
			pp := map[string]string{}
			if relay.Pprof != "" {
				pp[roleRelay] = relay.Pprof
			}
			if ag.Pprof != "" {
				pp[roleAgent] = ag.Pprof
			}
			tunnelRoles := func(server role) []role {
				return []role{{roleRelay, pidsOf(relay.Pid())}, {roleAgent, pidsOf(ag.Pid())}, server}
			}
			base := relay.HTTPURL + "/" + spec.Name + "/"
			targets[spec.Name+suffix] = target{Path: spec.Name + suffix, URL: base + serverHTTP + "/mcp", Token: ws.clientToken,
				roles: tunnelRoles(role{roleServer, pidsOf(fx.Pid())}), pprof: pp}
			if spec.Name == PathQUIC {
				targets[PathStdio+suffix] = target{Path: PathStdio + suffix, URL: base + serverStdio + "/mcp", Token: ws.clientToken,
					roles: tunnelRoles(role{roleServer, childrenOf(hostProc, ag.Pid())}), pprof: pp}
			}
		}
	}
	deploy(ws, "")
	deployPlain := func(path, transport, mux string) {
		if !slices.Contains(paths, path) {
			return
		}
		if o.Self == "" {
			rep.fail("matrix: %s: no binary to run the plain tunnel (Options.Self)", path)
			return
		}
		u, err := url.Parse(fx.URL)
		if err != nil {
			rep.fail("matrix: %s: fixture URL: %v", path, err)
			return
		}
		relay, agent, front, err := ws.startPlain(ctx, o.Self, path, transport, mux, u.Host)
		if err != nil {
			rep.fail("matrix: %v", err)
			return
		}
		started = append(started, relay, agent)
		watched = append(watched, relay, agent)
		targets[path] = target{Path: path, URL: front + u.RequestURI(),
			roles: []role{{roleRelay, pidsOf(relay.Pid())}, {roleAgent, pidsOf(agent.Pid())}, {roleServer, pidsOf(fx.Pid())}}}
	}
	deployPlain(PathPlainQUIC, "quic", "native")
	deployPlain(PathPlainTCP, "tcp", "native")
	if slices.Contains(paths, PathForwarded) {
		fl, err := ws.startFleet(ctx, fx.URL, role{roleServer, pidsOf(fx.Pid())})
		defer fl.stop(func(p *process) { stopLogged(log, p) })
		if err != nil {
			rep.fail("matrix: %s: %v", PathForwarded, err)
		} else {
			watched = append(watched, fl.procs...)
			targets[PathForwarded] = fl.target
		}
	}
	// With a baseline (or the control mode), the matrix and paced sections
	// measure each of mcptun's paths of both builds (both modes) in the
	// same interleaved rounds.
	var suffixes []string
	variant := func(name, bin, suffix string, control bool) {
		vws, err := newWorkspace(filepath.Join(o.OutDir, "matrix-"+name), bin, o.Fixture)
		if err != nil {
			rep.fail("matrix: %s: %v", name, err)
			return
		}
		vws.tunnelEnv = o.tunnelEnv()
		vws.control = control
		deploy(vws, suffix)
		suffixes = append(suffixes, suffix)
	}
	if slices.Contains(o.Sections, SectionMatrix) || slices.Contains(o.Sections, SectionPaced) {
		if o.Baseline != "" {
			variant("baseline", o.Baseline, BaselineSuffix, false)
		}
		if o.Control {
			variant("control", o.Mcptun, ControlSuffix, true)
		}
		if o.Control && o.Baseline != "" && o.BaselineControl {
			variant("baseline-control", o.Baseline, BaselineSuffix+ControlSuffix, true)
		}
	}
	cellPaths, pacedPaths := withVariants(o.Paths, suffixes...), withVariants(o.PacedPaths, suffixes...)

	// A relay or agent that dies during the run invalidates its figures.
	// Deferred after the stops, so it runs before them.
	defer func() {
		for _, p := range watched {
			if dead, err := p.Exited(); dead {
				rep.fail("%s exited during the run: %v\n%s", p.Name(), err, p.Output())
			}
		}
	}()

	cc := cellConfig{Duration: o.Duration, Warmup: o.Warmup, PayloadBytes: o.PayloadBytes, Era: o.Era, ProfileDir: o.ProfileDir}
	if cc.ProfileDir != "" && (slices.Contains(o.Sections, SectionMatrix) || slices.Contains(o.Sections, SectionPaced)) {
		if err := os.MkdirAll(cc.ProfileDir, 0o755); err != nil {
			rep.fail("profiles: %v", err)
			cc.ProfileDir = ""
		}
	}
	// cells measures paths at n sessions in rounds interleaved (every
	// path once, then again) so that a machine whose speed drifts affects
	// all paths alike, and returns each path's median cell.
	cells := func(paths []string, n int, cc cellConfig) (out []Cell, ok bool) {
		rounds := max(o.Rounds, 1)
		byPath := make(map[string][]Cell, len(paths))
		for round := 1; round <= rounds; round++ {
			for _, p := range paths {
				if ctx.Err() != nil {
					return nil, false
				}
				tgt, ok := targets[p]
				if !ok {
					continue
				}
				c := runCell(ctx, hostProc, tgt, n, cc)
				log.Info("cell", "path", p, "sessions", n, "rate", cc.Rate, "round", round, "rps", fmt.Sprintf("%.0f", c.Load.RPS), "p50", c.Load.P50,
					"p99", c.Load.P99, "errors", c.Load.Errors, "relay+agent_us", fmt.Sprintf("%.1f", c.RelayAgentUS()),
					"other_busy_pct", fmt.Sprintf("%.0f", c.OtherBusyPct), "err", c.Error)
				byPath[p] = append(byPath[p], c)
			}
		}
		for _, p := range paths {
			if _, ok := targets[p]; !ok {
				out = append(out, Cell{Path: p, Sessions: n, Error: "not deployed (see errors)"})
				continue
			}
			out = append(out, medianCell(byPath[p]))
		}
		return out, true
	}
	if slices.Contains(o.Sections, SectionMatrix) {
		for _, n := range o.Sessions {
			c, ok := cells(cellPaths, n, cc)
			if !ok {
				return
			}
			rep.Cells = append(rep.Cells, c...)
		}
	}
	if slices.Contains(o.Sections, SectionPaced) {
		pc := cc
		pc.Rate = o.PacedRate
		c, ok := cells(pacedPaths, o.PacedSessions, pc)
		if !ok {
			return
		}
		rep.Paced = c
	}
	if slices.Contains(o.Sections, SectionLarge) {
		for _, p := range o.LargePaths {
			if ctx.Err() != nil {
				return
			}
			tgt, ok := targets[p]
			if !ok {
				rep.Large = append(rep.Large, LargeRow{Path: p, Bytes: o.LargeBytes, Error: "not deployed (see errors)"})
				continue
			}
			row := runLarge(ctx, hostProc, tgt, o.LargeBytes, o.LargeReps)
			log.Info("large", "path", p, "median", row.Median, "MiBps", fmt.Sprintf("%.0f", row.MiBps), "err", row.Error)
			rep.Large = append(rep.Large, row)
		}
	}
}

// runIdleSection measures memory per idle session on a fresh relay and
// agent (a relay that has just served the matrix has freed memory to
// reuse, which would hide what sessions cost).
func runIdleSection(ctx context.Context, log *slog.Logger, o Options, rep *Report) {
	ws, err := newWorkspace(filepath.Join(o.OutDir, "idle"), o.Mcptun, o.Fixture)
	if err != nil {
		rep.fail("idle: %v", err)
		return
	}
	fx, err := ws.startFixture(ctx, "")
	if err != nil {
		rep.fail("idle: fixture: %v", err)
		return
	}
	defer stopLogged(log, fx.process)
	specs := agentSpecs([]string{PathQUIC})
	relay, err := ws.startRelay(ctx, "127.0.0.1:0", specs)
	if err != nil {
		rep.fail("idle: relay: %v", err)
		return
	}
	defer stopLogged(log, relay.process)
	ag, err := ws.startAgent(ctx, relay, relay.TunnelAddr, specs[0], fx.URL, "")
	if err != nil {
		rep.fail("idle: %v", err)
		return
	}
	defer stopLogged(log, ag.process)

	// Connections of the POSTs are not kept: an idle session then holds a
	// connection only through its GET stream.
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	base := relay.HTTPURL + "/" + specs[0].Name + "/"
	httpC := &mcpClient{hc: hc, url: base + serverHTTP + "/mcp", token: ws.clientToken}
	stdioC := &mcpClient{hc: hc, url: base + serverStdio + "/mcp", token: ws.clientToken}
	fixtureC := &mcpClient{hc: hc, url: fx.URL}

	// Warm up both paths so that pools and lazily made structures exist
	// before the baseline.
	for _, c := range []*mcpClient{httpC, stdioC} {
		w := openIdle(ctx, c, 4, c == httpC, fixtureC)
		for _, h := range w.streams {
			h.Close()
		}
		for _, s := range w.sessions {
			c.end(ctx, s)
		}
		if w.first != nil {
			rep.fail("idle: warm-up: %v", w.first)
			return
		}
	}

	measure := func() (r, a memFigures, err error) {
		if r, err = measureMem(ctx, hostProc, relay.Pid(), relay.Pprof); err != nil {
			return r, a, fmt.Errorf("relay memory: %w", err)
		}
		if a, err = measureMem(ctx, hostProc, ag.Pid(), ag.Pprof); err != nil {
			return r, a, fmt.Errorf("agent memory: %w", err)
		}
		return r, a, nil
	}
	rBase, aBase, err := measure()
	if err != nil {
		rep.fail("idle: %v", err)
		return
	}

	var held []*heldStream
	defer func() {
		for _, h := range held {
			h.Close()
		}
	}()
	phase := func(label string, c *mcpClient, n int, stream, children bool) bool {
		if n <= 0 {
			return true
		}
		row := IdleRow{Label: label, Sessions: n}
		childBefore, _ := childMem(hostProc, ag.Pid())
		t0 := time.Now()
		res := openIdle(ctx, c, n, stream, fixtureC)
		held = append(held, res.streams...)
		row.OpenSeconds = time.Since(t0).Seconds()
		row.Opened, row.Errors, row.HeadersAtOnce = len(res.sessions), res.errs, res.headersAtOnce
		if stream {
			row.Opened = len(res.streams)
		}
		if res.first != nil {
			row.FirstError = res.first.Error()
		}
		rAfter, aAfter, err := measure()
		if err != nil {
			rep.fail("idle: %s: %v", label, err)
			return false
		}
		row.Relay = newIdleMem(rBase, rAfter, row.Opened)
		row.Agent = newIdleMem(aBase, aAfter, row.Opened)
		if children && row.Opened > 0 {
			childAfter, _ := childMem(hostProc, ag.Pid())
			row.ChildRSSPerSession = float64(childAfter.RSS-childBefore.RSS) / float64(row.Opened)
			row.ChildPSSPerSession = float64(childAfter.PSS-childBefore.PSS) / float64(row.Opened)
		}
		rBase, aBase = rAfter, aAfter
		log.Info("idle", "phase", label, "opened", row.Opened, "errors", row.Errors,
			"relay_rss_per_session", fmtBytes(row.Relay.RSSPerSession), "agent_rss_per_session", fmtBytes(row.Agent.RSSPerSession))
		rep.Idle = append(rep.Idle, row)
		return ctx.Err() == nil
	}
	// The stdio phase comes first: memory freed by the others would be
	// reused by it and hide its cost.
	_ = phase("stdio upstream, initialize only", stdioC, o.IdleStdio, false, true) &&
		phase("HTTP upstream, initialize only", httpC, o.IdleSessions, false, false) &&
		phase("HTTP upstream, initialize + open GET stream", httpC, o.IdleStreams, true, false)
}
