package benchmatrix

import (
	"bytes"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/loadgen"
)

func TestFormatters(t *testing.T) {
	us, ms := time.Microsecond, time.Millisecond
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "0"},
		{1500 * time.Nanosecond, "1.5 µs"},
		{421*us + 887, "422 µs"},
		{999 * us, "999 µs"},
		{1688 * us, "1.69 ms"},
		{11534 * us, "11.5 ms"},
		{361647 * us, "362 ms"},
		{2500 * ms, "2.50 s"},
		{-905 * us, "-905 µs"},
	} {
		assert.Equal(t, tc.want, fmtLatency(tc.d), "%v", tc.d)
	}
	assert.Equal(t, "+905 µs", fmtSignedLatency(905*us))
	assert.Equal(t, "-12 µs", fmtSignedLatency(-12*us))

	for _, tc := range []struct {
		v    float64
		want string
	}{{0, "0"}, {999.4, "999"}, {1000, "1,000"}, {5286.2, "5,286"}, {1234567, "1,234,567"}, {-4321, "-4,321"}} {
		assert.Equal(t, tc.want, fmtCount(tc.v), "%v", tc.v)
	}

	for _, tc := range []struct {
		v    float64
		want string
	}{{512, "512 B"}, {-1638.4, "-1.6 KiB"}, {16 << 20, "16.0 MiB"}, {54681.6, "53.4 KiB"}, {3 << 30, "3.00 GiB"}} {
		assert.Equal(t, tc.want, fmtBytes(tc.v), "%v", tc.v)
	}
	assert.Equal(t, `a \| b c`, mdEscape("a | b\nc"))
	assert.Equal(t, "first", firstLine("first\nsecond"))
}

// sampleReport is a small run with every section, some targets met and
// some missed, one failed cell and one noisy cell.
func sampleReport() *Report {
	us, ms := time.Microsecond, time.Millisecond
	res := func(rps float64, p50, p90, p99 time.Duration, errs int64) loadgen.Result {
		return loadgen.Result{RPS: rps, P50: p50, P90: p90, P99: p99, Requests: int64(rps * 5), Errors: errs}
	}
	cpu := func(relay, agent, server float64) map[string]float64 {
		m := map[string]float64{roleServer: server, roleGenerator: 50}
		if relay >= 0 {
			m[roleRelay], m[roleAgent] = relay, agent
		}
		return m
	}
	cell := func(path string, n int, r loadgen.Result, c map[string]float64, other float64) Cell {
		return Cell{Path: path, Sessions: n, Load: r, CPUPerRequest: c, WindowSeconds: 5, OtherBusyPct: other}
	}
	yes := true
	return &Report{
		Started: time.Date(2026, 11, 27, 3, 25, 0, 0, time.UTC),
		Elapsed: 4*time.Minute + 10*time.Second,
		Machine: Machine{CPUModel: "AMD EPYC", Cores: 2, Kernel: "Linux 6.18", GoVersion: "go1.26.8", OS: "linux/amd64", LoadAvg: "0.1 0.2 0.3"},
		Setup:   Setup{Duration: 5 * time.Second, Warmup: time.Second, PayloadBytes: 64, Era: loadgen.EraSessions},
		Cells: []Cell{
			cell(PathDirect, 1, res(2000, 400*us, 600*us, 1600*us, 0), cpu(-1, 0, 300), 1),
			cell(PathQUIC, 1, res(1400, 600*us, 900*us, 2*ms, 0), cpu(90, 110, 300), 2),
			cell(PathStdio, 1, res(1500, 550*us, 800*us, 2*ms, 0), cpu(80, 100, 200), 25),
			{Path: PathTCP, Sessions: 1, Error: "initialize: HTTP 502 Bad Gateway"},
			cell(PathDirect, 64, res(5000, 12*ms, 20*ms, 30*ms, 0), cpu(-1, 0, 200), 0),
			cell(PathQUIC, 64, res(4200, 15*ms, 25*ms, 40*ms, 0), cpu(40, 70, 200), 0),
			cell(PathStdio, 64, res(3000, 20*ms, 30*ms, 50*ms, 3), cpu(40, 80, 300), 0),
		},
		Large: []LargeRow{
			{Path: PathDirect, Bytes: 16 << 20, Reps: 3, Median: 100 * ms, Min: 90 * ms, MiBps: 160},
			{Path: PathQUIC, Bytes: 16 << 20, Reps: 3, Median: 250 * ms, Min: 240 * ms, MiBps: 64, CPUPerCallMS: map[string]float64{roleRelay: 50, roleAgent: 60}},
			{Path: PathTCP, Bytes: 16 << 20, Reps: 3, Median: 350 * ms, Min: 300 * ms, MiBps: 45},
		},
		Idle: []IdleRow{
			{Label: "HTTP upstream, initialize only", Sessions: 1000, Opened: 1000,
				Relay: &idleMem{RSSPerSession: 512, Before: memFigures{Runtime: true}, After: memFigures{Runtime: true}, HeapPerSession: 300, GoroutinesPerSession: 0},
				Agent: &idleMem{RSSPerSession: 2048}},
			{Label: "HTTP upstream, initialize + open GET stream", Sessions: 10000, Opened: 9990, Errors: 10, FirstError: "open stream: EOF",
				Relay: &idleMem{RSSPerSession: 40 << 10}, Agent: &idleMem{RSSPerSession: 60 << 10}, HeadersAtOnce: new(bool)},
		},
		Lossy: &LossyReport{Emulator: "user-space emulator", NetemError: "Specified qdisc kind is unknown.", BulkBytes: 32 << 20, TCPCongestion: "bbr",
			Rows: []LossyRow{
				{Path: PathQUIC, Small: loadgen.Result{P50: 25 * ms, P90: 40 * ms, P99: 60 * ms, Max: 80 * ms, RPS: 120}},
				{Path: PathQUICYamux, Small: loadgen.Result{P50: 40 * ms, P90: 70 * ms, P99: 150 * ms, Max: 200 * ms, RPS: 80}},
				{Path: PathTCP, Small: loadgen.Result{P50: 30 * ms, P90: 60 * ms, P99: 90 * ms, Max: 120 * ms, RPS: 100}},
			},
			ToNS: &LinkStats{Packets: 10}, FromNS: &LinkStats{Packets: 20, Dropped: 1}},
		Targets: []TargetCheck{{Name: "example", Measured: "1", Met: &yes}, {Name: "unmeasured", Measured: "—"}},
		Errors:  []string{"matrix: agent tcp: connected over tcp+yamux\nsecond line"},
	}
}

func TestWriteMarkdown(t *testing.T) {
	r := sampleReport()
	var b bytes.Buffer
	require.NoError(t, r.WriteMarkdown(&b))
	md := b.String()
	for _, want := range []string{
		"Machine: AMD EPYC, 2 CPUs, Linux 6.18, go1.26.8 linux/amd64; load average at start 0.1 0.2 0.3. Run took 4m10s.",
		// ratios to direct at the same session count, and the added p50
		"| 1 | quic | 1,400 (0.70×) | 600 µs (1.50×) | +200 µs | 900 µs (1.50×) | 2.00 ms (1.25×) | 0 | 90.0 | 110.0 | **200.0** | 300.0 | 2% |",
		"| 1 | direct | 2,000 | 400 µs |  | 600 µs | 1.60 ms | 0 |  |  |  | 300.0 | 1% |",
		"| 1 | tcp | failed: initialize: HTTP 502 Bad Gateway |",
		"| 1 | stdio | 1,500 (0.75×)",
		"25% ⚠", "⚠ marks cells above 10%",
		"| 64 | stdio | 3,000 (0.60×) | 20.0 ms (1.67×) | +8.00 ms | 30.0 ms (1.50×) | 50.0 ms (1.67×) | 3 |",
		"| quic | 16.0 MiB | 250 ms | 240 ms | 64 | 2.50× | 50.0 ms | 60.0 ms |",
		"| direct | 16.0 MiB | 100 ms | 90.0 ms | 160 | 1.00× |  |  |",
		"| HTTP upstream, initialize only | 1000 | 0 | 512 B | 300 B | 0.00 | 2.0 KiB |  |  |  |",
		"| HTTP upstream, initialize + open GET stream | 9990 | 10 (open stream: EOF) | 40.0 KiB |",
		"⚠ HTTP upstream, initialize + open GET stream: the GET stream's response header did not reach the client",
		"| quic-yamux | 40.0 ms | 70.0 ms | 150 ms | 2.50× | 200 ms | 80 | 0 | 0.00 |",
		"(`tc netem`: Specified qdisc kind is unknown) TCP congestion control on the agent's side: bbr",
		"| example | 1 | yes |", "| unmeasured | — | not measured |",
		"- matrix: agent tcp: connected over tcp+yamux\n",
	} {
		assert.Contains(t, md, want)
	}
	assert.NotContains(t, md, "second line", "errors are cut to their first line")
	for i, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "|") {
			assert.True(t, strings.HasSuffix(line, "|"), "line %d is not a complete table row: %q", i, line)
		}
	}

	var js bytes.Buffer
	require.NoError(t, r.WriteJSON(&js))
	var back Report
	require.NoError(t, json.Unmarshal(js.Bytes(), &back))
	assert.Equal(t, r.Cells, back.Cells)
	assert.Equal(t, r.Idle[1].Opened, back.Idle[1].Opened)
}

// With the paced section, the bridge is judged at one rate, and the
// closed-loop comparison (each path at its own rate) is left out.
func TestCheckTargetsPaced(t *testing.T) {
	r := sampleReport()
	r.Setup.PacedRate = 1500
	paced := func(path string, relay, agent float64) Cell {
		return Cell{Path: path, Sessions: 16, WindowSeconds: 5,
			Load:          loadgen.Result{Requests: 7500, OfferedRPS: 1500, RPS: 1500},
			CPUPerRequest: map[string]float64{roleRelay: relay, roleAgent: agent, roleServer: 150}}
	}
	r.Paced = []Cell{paced(PathQUIC, 100, 90), paced(PathStdio, 95, 85), paced(PathPlainQUIC, 80, 80)}
	got := map[string]TargetCheck{}
	for _, c := range checkTargets(r) {
		got[c.Name] = c
	}
	c, ok := got["stdio bridge: agent CPU per request ≤ HTTP path's, both at 1,500 req/s"]
	require.True(t, ok, "%v", got)
	assert.True(t, *c.Met)
	assert.Equal(t, "85.0 vs 90.0 µs (0.94×)", c.Measured)
	c, ok = got["CPU per request, relay+agent, quic ≤ plain QUIC tunnel's, both at 1,500 req/s"]
	require.True(t, ok)
	assert.False(t, *c.Met)
	assert.Equal(t, "190.0 vs 160.0 µs (1.19×)", c.Measured)
	for name := range got {
		assert.NotContains(t, name, "closed loop", "judged at one rate instead")
	}

	var md bytes.Buffer
	require.NoError(t, r.WriteMarkdown(&md))
	assert.Contains(t, md.String(), "| stdio | 1,500 |")
	assert.Contains(t, md.String(), "**180.0** (1.12×)", "relay+agent against plain-quic")
}

func TestCheckTargets(t *testing.T) {
	got := map[string]TargetCheck{}
	for _, c := range checkTargets(sampleReport()) {
		got[c.Name] = c
	}
	for _, tc := range []struct {
		name     string
		met      bool
		measured string
	}{
		{"CPU per request, relay+agent, quic, 1 session ≤ 220 µs", true, "200.0 µs"},
		{"request rate, quic, 1 session ≥ 0.6× direct", true, "0.70× (1,400 vs 2,000 req/s)"},
		{"added p50, quic, 1 session ≤ 220 µs", true, "+200 µs (600 µs vs 400 µs)"},
		{"CPU per request, relay+agent, quic, 64 sessions ≤ 100 µs", false, "110.0 µs"},
		{"request rate, quic, 64 sessions ≥ 0.8× direct", true, "0.84× (4,200 vs 5,000 req/s)"},
		{"stdio upstream: 64 concurrent sessions, zero errors", false, "15000 requests, 3 errors"},
		{"stdio bridge: agent CPU per request ≤ HTTP path's (closed loop, each at its own rate)", false, "1: 100.0 vs 110.0 µs; 64: 80.0 vs 70.0 µs"},
		{"≤ 16 KiB per idle session at the relay: HTTP upstream, initialize only", true, "512 B RSS over 1000 sessions"},
		{"≤ 64 KiB per idle session at the agent: HTTP upstream, initialize + open GET stream", true, "60.0 KiB RSS over 9990 sessions"},
		{"≤ 16 KiB per idle session at the relay: HTTP upstream, initialize + open GET stream", false, "40.0 KiB RSS over 9990 sessions"},
		{"10,000 idle sessions on one relay", false, "10990 sessions open at once, 10 failed to open"},
		{"16.0 MiB result through quic < 3× direct", true, "2.50× (250 ms vs 100 ms)"},
		{"16.0 MiB result through tcp < 3× direct", false, "3.50× (350 ms vs 100 ms)"},
		{"lossy link: small-call p99, native QUIC ≤ ½ of quic-yamux", true, "60.0 ms vs 150 ms (0.40×)"},
		{"lossy link: small-call p99, native QUIC ≤ ½ of tcp", false, "60.0 ms vs 90.0 ms (0.67×)"},
	} {
		c, ok := got[tc.name]
		if !assert.True(t, ok, "missing target %q", tc.name) {
			continue
		}
		require.NotNil(t, c.Met, tc.name)
		assert.Equal(t, tc.met, *c.Met, tc.name)
		assert.Equal(t, tc.measured, c.Measured, tc.name)
	}
	assert.Len(t, got, 16, "no target beyond those listed and the agent/relay pair of each idle row")

	// A run without figures claims nothing.
	assert.Empty(t, checkTargets(&Report{}))
}

func TestMedianCell(t *testing.T) {
	cell := func(rps float64, p50 time.Duration, relay float64, other float64, errMsg string) Cell {
		return Cell{Path: PathQUIC, Sessions: 16, Error: errMsg, OtherBusyPct: other,
			Load:          loadgen.Result{RPS: rps, P50: p50, Requests: 100, Errors: 1},
			CPUPerRequest: map[string]float64{roleRelay: relay, roleAgent: relay / 2}}
	}
	got := medianCell([]Cell{
		cell(300, 3*time.Millisecond, 90, 2, ""),
		cell(100, 1*time.Millisecond, 70, 9, ""),
		cell(999, 9*time.Millisecond, 999, 50, "boom"), // failed: left out
		cell(200, 2*time.Millisecond, 80, 1, ""),
	})
	if got.Rounds != 3 || got.Error != "" {
		t.Fatalf("rounds %d error %q", got.Rounds, got.Error)
	}
	if got.Load.RPS != 200 || got.Load.P50 != 2*time.Millisecond {
		t.Errorf("median rps %v p50 %v, want 200 and 2ms", got.Load.RPS, got.Load.P50)
	}
	if got.CPUPerRequest[roleRelay] != 80 || got.CPUPerRequest[roleAgent] != 40 {
		t.Errorf("median CPU %v", got.CPUPerRequest)
	}
	if got.Load.Requests != 300 || got.Load.Errors != 3 {
		t.Errorf("counts %d/%d, want summed 300/3", got.Load.Requests, got.Load.Errors)
	}
	if want := []float64{105, 120, 135}; !slices.Equal(got.RelayAgentRounds, want) {
		t.Errorf("relay+agent rounds %v, want the clean rounds' %v in order", got.RelayAgentRounds, want)
	}
	if got.OtherBusyPct != 9 {
		t.Errorf("other load %v, want the worst clean round's 9", got.OtherBusyPct)
	}
	if even := medianCell([]Cell{cell(100, time.Millisecond, 10, 0, ""), cell(200, 3*time.Millisecond, 30, 0, "")}); even.Load.RPS != 150 || even.Load.P50 != 2*time.Millisecond {
		t.Errorf("even count: %v %v", even.Load.RPS, even.Load.P50)
	}
	if bad := medianCell([]Cell{cell(1, 0, 0, 0, "a"), cell(2, 0, 0, 0, "b")}); bad.Error != "a" {
		t.Errorf("no clean round: %q", bad.Error)
	}
}

// A run with --control and --baseline prints each variant beside its path
// with the ratio, and judges the control point's cost at one rate.
func TestVariantsPaced(t *testing.T) {
	r := sampleReport()
	r.Setup.PacedRate, r.Setup.Control, r.Setup.Baseline = 1500, true, "old/mcptun"
	us := time.Microsecond
	paced := func(path string, relay, agent float64, p50 time.Duration) Cell {
		return Cell{Path: path, Sessions: 16, WindowSeconds: 5, RelayAgentRounds: []float64{relay + agent - 10, relay + agent + 10},
			Load:          loadgen.Result{Requests: 7500, OfferedRPS: 1500, RPS: 1500, P50: p50},
			CPUPerRequest: map[string]float64{roleRelay: relay, roleAgent: agent, roleServer: 150}}
	}
	r.Paced = []Cell{
		paced(PathQUIC, 100, 100, 1200*us), paced(PathQUIC+BaselineSuffix, 100, 90, 1100*us), paced(PathQUIC+ControlSuffix, 100, 125, 1300*us),
		paced(PathStdio, 100, 100, 1500*us), paced(PathStdio+ControlSuffix, 105, 105, 1600*us),
		{Path: PathTCP, Sessions: 16, Error: "not deployed"}, paced(PathTCP+ControlSuffix, 100, 100, time.Millisecond),
	}
	got := map[string]TargetCheck{}
	for _, c := range checkTargets(r) {
		got[c.Name] = c
	}
	c, ok := got["CPU per request, relay+agent, quic: policy and audit on ≤ 1.1× off, both at 1,500 req/s"]
	require.True(t, ok, "%v", got)
	assert.False(t, *c.Met)
	assert.Equal(t, "225.0 vs 200.0 µs (1.12×)", c.Measured)
	c, ok = got["CPU per request, relay+agent, stdio: policy and audit on ≤ 1.1× off, both at 1,500 req/s"]
	require.True(t, ok, "%v", got)
	assert.True(t, *c.Met)
	for name := range got {
		assert.NotContains(t, name, "tcp:", "no figure with the control point off")
	}

	var md bytes.Buffer
	require.NoError(t, r.WriteMarkdown(&md))
	out := md.String()
	assert.Contains(t, out, "This build against the baseline (ratio this ÷ baseline)")
	assert.Contains(t, out, "| path | baseline | this | relay+agent | relay | agent | p50 baseline | p50 this |")
	assert.Contains(t, out, "| quic | 190.0 (180–200) | 200.0 (190–210) | **1.05×** | 1.00× | 1.11× | 1.10 ms | 1.20 ms |")
	assert.Contains(t, out, "Control point on against off (ratio on ÷ off)")
	assert.Contains(t, out, "| quic | 200.0 (190–210) | 225.0 (215–235) | **1.12×** | 1.00× | 1.25× | 1.20 ms | 1.30 ms |")
	assert.Contains(t, out, "| stdio | 200.0 (190–210) | 210.0 (200–220) | **1.05×** | 1.05× | 1.05× | 1.50 ms | 1.60 ms |")
	assert.NotContains(t, out, "| tcp | 200.0", "no row without both figures")
	assert.Contains(t, out, "Paths ending in `+control` are this build with the control point on")
}
