package benchmatrix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mcptun/mcptun/internal/loadgen"
)

// Paths through which the matrix sends the same load.
const (
	PathDirect    = "direct"     // the HTTP fixture, no tunnel
	PathQUIC      = "quic"       // relay → native QUIC streams → agent → HTTP fixture
	PathTCP       = "tcp"        // relay → yamux over TLS/TCP → agent → HTTP fixture
	PathQUICYamux = "quic-yamux" // relay → yamux over one QUIC stream → agent → HTTP fixture
	PathStdio     = "stdio"      // relay → native QUIC streams → agent → stdio bridge → fixture child
	// The plain tunnel (plain.go): bytes copied through the same tunnel,
	// no HTTP or MCP awareness — the reference the targets compare with.
	PathPlainQUIC = "plain-quic" // plain relay → native QUIC streams → plain agent → HTTP fixture
	PathPlainTCP  = "plain-tcp"  // plain relay → yamux over TLS/TCP → plain agent → HTTP fixture
)

// AllPaths is every path, in table order.
var AllPaths = []string{PathDirect, PathQUIC, PathTCP, PathQUICYamux, PathStdio, PathPlainQUIC, PathPlainTCP}

// target is one path's endpoint and the processes that serve it.
type target struct {
	Path  string
	URL   string
	Token string
	roles []role
	pprof map[string]string // role → pprof base URL, for --profile
}

// Cell is the outcome of one load at one session count on one path.
type Cell struct {
	Path     string         `json:"path"`
	Sessions int            `json:"sessions"`
	Load     loadgen.Result `json:"load"`
	Error    string         `json:"error,omitempty"`
	// CPUPerRequest is CPU time per measured request in microseconds, by
	// role (relay, agent, server, generator); a role that does not take
	// part is absent.
	CPUPerRequest map[string]float64 `json:"cpu_us_per_request,omitempty"`
	// CPUStatPerRequest is the same from utime+stime (10 ms ticks): a
	// coarse cross-check.
	CPUStatPerRequest map[string]float64 `json:"cpu_stat_us_per_request,omitempty"`
	// WindowSeconds is the span of the CPU snapshots (the measured phase).
	WindowSeconds float64 `json:"window_s,omitempty"`
	// MachineBusyPct is how busy all CPUs were in the window; OtherBusyPct
	// is the part not accounted to the benchmark's processes (other
	// programs, and interrupt time): a high figure means a noisy cell.
	MachineBusyPct float64 `json:"machine_busy_pct,omitempty"`
	OtherBusyPct   float64 `json:"other_busy_pct,omitempty"`
	// Rounds is how many measurements the figures are the median of.
	Rounds int `json:"rounds,omitempty"`
	// RelayAgentRounds is relay+agent CPU per request in each clean round,
	// in ascending order: its spread says how far apart two figures must
	// be to mean anything on this machine.
	RelayAgentRounds []float64 `json:"relay_agent_us_rounds,omitempty"`
}

// medianCell folds the rounds of one cell into one: each rate, latency and
// CPU figure is the median over the rounds that ran without error (taken
// figure by figure), counts are summed, and other load is the worst
// round's. With no clean round it reports the first.
func medianCell(rounds []Cell) Cell {
	var ok []Cell
	for _, c := range rounds {
		if c.Error == "" {
			ok = append(ok, c)
		}
	}
	switch {
	case len(ok) == 0 && len(rounds) > 0:
		return rounds[0]
	case len(ok) == 1:
		ok[0].Rounds = 1
		return ok[0]
	case len(ok) == 0:
		return Cell{Error: "no measurement"}
	}
	out := ok[0]
	out.Rounds = len(ok)
	med := func(get func(Cell) float64) float64 {
		v := make([]float64, len(ok))
		for i, c := range ok {
			v[i] = get(c)
		}
		return median(v)
	}
	medDur := func(get func(loadgen.Result) time.Duration) time.Duration {
		return time.Duration(med(func(c Cell) float64 { return float64(get(c.Load)) }))
	}
	out.Load.RPS = med(func(c Cell) float64 { return c.Load.RPS })
	out.Load.Mean = medDur(func(r loadgen.Result) time.Duration { return r.Mean })
	out.Load.P50 = medDur(func(r loadgen.Result) time.Duration { return r.P50 })
	out.Load.P90 = medDur(func(r loadgen.Result) time.Duration { return r.P90 })
	out.Load.P99 = medDur(func(r loadgen.Result) time.Duration { return r.P99 })
	out.Load.Min = medDur(func(r loadgen.Result) time.Duration { return r.Min })
	out.Load.Max = medDur(func(r loadgen.Result) time.Duration { return r.Max })
	out.MachineBusyPct = med(func(c Cell) float64 { return c.MachineBusyPct })
	out.Load.Requests, out.Load.Errors, out.Load.WarmupRequests, out.Load.Duration = 0, 0, 0, 0
	out.Load.BytesSent, out.Load.BytesReceived, out.WindowSeconds = 0, 0, 0
	for _, c := range ok {
		out.Load.Requests += c.Load.Requests
		out.Load.Errors += c.Load.Errors
		out.Load.WarmupRequests += c.Load.WarmupRequests
		out.Load.Duration += c.Load.Duration
		out.Load.BytesSent += c.Load.BytesSent
		out.Load.BytesReceived += c.Load.BytesReceived
		out.WindowSeconds += c.WindowSeconds
		out.OtherBusyPct = max(out.OtherBusyPct, c.OtherBusyPct)
	}
	out.RelayAgentRounds = nil
	for _, c := range ok {
		if v := c.RelayAgentUS(); v >= 0 {
			out.RelayAgentRounds = append(out.RelayAgentRounds, v)
		}
	}
	slices.Sort(out.RelayAgentRounds)
	out.CPUPerRequest = medianRoles(ok, func(c Cell) map[string]float64 { return c.CPUPerRequest })
	out.CPUStatPerRequest = medianRoles(ok, func(c Cell) map[string]float64 { return c.CPUStatPerRequest })
	return out
}

// RelayAgentUS is the CPU per request of relay and agent together, or -1
// when the cell has no tunnel or no figure.
func (c Cell) RelayAgentUS() float64 {
	r, ok1 := c.CPUPerRequest[roleRelay]
	a, ok2 := c.CPUPerRequest[roleAgent]
	if !ok1 || !ok2 {
		return -1
	}
	return r + a
}

// medianRoles is the median of each role's figure over cells.
func medianRoles(cells []Cell, get func(Cell) map[string]float64) map[string]float64 {
	if get(cells[0]) == nil {
		return nil
	}
	out := make(map[string]float64, len(get(cells[0])))
	for role := range get(cells[0]) {
		v := make([]float64, 0, len(cells))
		for _, c := range cells {
			if x, ok := get(c)[role]; ok {
				v = append(v, x)
			}
		}
		out[role] = median(v)
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// cellConfig is the load of every matrix cell.
type cellConfig struct {
	Duration     time.Duration
	Warmup       time.Duration
	PayloadBytes int
	Era          string
	// Rate, if > 0, paces the load at this many requests per second (see
	// loadgen.Config.Rate); 0 is a closed loop.
	Rate float64
	// ProfileDir, if set, receives a CPU profile of each process with a
	// pprof endpoint over each cell's measured phase (this adds a little
	// CPU to the figures).
	ProfileDir string
}

// runCell drives the load at tgt with sessions closed-loop sessions and
// accounts the CPU of tgt's processes and of this one over the measured
// phase only.
func runCell(ctx context.Context, fs procFS, tgt target, sessions int, cc cellConfig) Cell {
	cell := Cell{Path: tgt.Path, Sessions: sessions}
	s := &sampler{fs: fs, roles: append(append([]role(nil), tgt.roles...), selfRole())}

	tr := newLoadTransport(sessions)
	defer tr.CloseIdleConnections()
	det := &startDetector{next: tr, started: make(chan time.Time, 1)}
	client := &http.Client{Transport: det, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	wctx, stopWindow := context.WithCancel(ctx)
	type windowResult struct {
		w  windowCPU
		ok bool
	}
	win := make(chan windowResult, 1)
	var profiles sync.WaitGroup
	var atStart func()
	if cc.ProfileDir != "" && len(tgt.pprof) > 0 {
		atStart = func() {
			for name, base := range tgt.pprof {
				file := filepath.Join(cc.ProfileDir, fmt.Sprintf("%s-%d-%s.pprof", tgt.Path, sessions, name))
				profiles.Go(func() { _ = fetchProfile(ctx, base, cc.Duration, file) })
			}
		}
	}
	go func() {
		w, ok := s.measureWindow(wctx, det.started, cc.Warmup, cc.Duration, atStart)
		win <- windowResult{w, ok}
	}()

	// The window's last sample must see every process that served the
	// load: the sessions (and with them a stdio bridge's children, whose
	// CPU is the server's) end only after it. A child gone before that
	// sample would take its whole window's CPU with it.
	var wr windowResult
	windowDone := false
	waitWindow := func() {
		if windowDone {
			return
		}
		windowDone = true
		select {
		case wr = <-win:
		case <-time.After(5 * time.Second): // no tools/call ever left
			stopWindow()
			wr = <-win
		}
	}
	res, err := loadgen.Run(ctx, loadgen.Config{
		BeforeEnd:    waitWindow,
		URL:          tgt.URL,
		Token:        tgt.Token,
		Sessions:     sessions,
		Duration:     cc.Duration,
		Warmup:       cc.Warmup,
		Tool:         "echo",
		PayloadBytes: cc.PayloadBytes,
		PayloadArg:   "text",
		Era:          cc.Era,
		Rate:         cc.Rate,
		HTTPClient:   client,
	})
	if err != nil {
		stopWindow() // the window may never have started
	}
	waitWindow()
	stopWindow()
	profiles.Wait()
	cell.Load = res
	if err != nil {
		cell.Error = err.Error()
		return cell
	}
	if !wr.ok || res.Requests == 0 {
		return cell
	}
	cell.WindowSeconds = wr.w.Elapsed.Seconds()
	cell.CPUPerRequest = make(map[string]float64, len(wr.w.ByRole))
	cell.CPUStatPerRequest = make(map[string]float64, len(wr.w.ByRole))
	for name, d := range wr.w.ByRole {
		cell.CPUPerRequest[name] = float64(d.Nanoseconds()) / 1e3 / float64(res.Requests)
		cell.CPUStatPerRequest[name] = float64(wr.w.ByRoleStat[name].Nanoseconds()) / 1e3 / float64(res.Requests)
	}
	if wr.w.SysTotal > 0 {
		cell.MachineBusyPct = 100 * float64(wr.w.SysBusy) / float64(wr.w.SysTotal)
		cell.OtherBusyPct = max(0, 100*float64(wr.w.SysBusy-wr.w.Ours())/float64(wr.w.SysTotal))
	}
	return cell
}

// newLoadTransport mirrors loadgen's own transport: one kept-alive
// connection per session, no compression, no proxy from the environment.
func newLoadTransport(sessions int) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.MaxIdleConns = sessions + 16
	tr.MaxIdleConnsPerHost = sessions + 16
	tr.IdleConnTimeout = 90 * time.Second
	tr.DisableCompression = true
	return tr
}

// startDetector passes requests on and reports, once, when the first
// tools/call leaves. loadgen sends every session's setup (initialize,
// notifications/initialized or server/discover) before any tools/call and
// starts its warm-up clock just before the first one, so that instant plus
// the warm-up is where the measured phase begins.
type startDetector struct {
	next    http.RoundTripper
	seen    atomic.Bool
	started chan time.Time // buffered, capacity 1
}

var toolsCallMarker = []byte(`"method":"tools/call"`)

func (d *startDetector) RoundTrip(req *http.Request) (*http.Response, error) {
	if !d.seen.Load() && req.GetBody != nil {
		now := time.Now()
		if body, err := req.GetBody(); err == nil {
			head := make([]byte, 128)
			n, _ := io.ReadFull(body, head)
			body.Close()
			if bytes.Contains(head[:n], toolsCallMarker) && d.seen.CompareAndSwap(false, true) {
				d.started <- now
			}
		}
	}
	return d.next.RoundTrip(req)
}

// errNoCells is returned when a configuration selects nothing to run.
var errNoCells = errors.New("benchmatrix: no paths or session counts selected")

// validatePaths checks path names against AllPaths.
func validatePaths(paths []string) error {
	for _, p := range paths {
		known := false
		for _, q := range AllPaths {
			known = known || p == q
		}
		for _, q := range ExtraPaths {
			known = known || p == q
		}
		if !known {
			return fmt.Errorf("benchmatrix: unknown path %q (known: %v and %v)", p, AllPaths, ExtraPaths)
		}
	}
	return nil
}

// fetchProfile saves a CPU profile of d from a net/http/pprof server.
func fetchProfile(ctx context.Context, base string, d time.Duration, file string) error {
	secs := max(1, int(d.Round(time.Second)/time.Second))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", base, secs), nil)
	if err != nil {
		return err
	}
	tr := &http.Transport{Proxy: nil}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: HTTP %s", base, resp.Status)
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", base, err)
	}
	return f.Close()
}
