package benchmatrix

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/mcptest"
)

func TestOptionsValidate(t *testing.T) {
	good := func() Options {
		return Options{Mcptun: "m", Fixture: "f", OutDir: t.TempDir(), Sections: []string{SectionMatrix},
			Sessions: []int{1}, Paths: []string{PathDirect}, Duration: time.Second}
	}
	for _, tc := range []struct {
		name    string
		mod     func(*Options)
		wantErr string
	}{
		{"valid", func(*Options) {}, ""},
		{"no binaries", func(o *Options) { o.Mcptun = "" }, "binaries are required"},
		{"no out dir", func(o *Options) { o.OutDir = "" }, "output directory"},
		{"no sections", func(o *Options) { o.Sections = nil }, "no section"},
		{"unknown section", func(o *Options) { o.Sections = []string{"speed"} }, `unknown section "speed"`},
		{"unknown path", func(o *Options) { o.Paths = []string{"udp"} }, `unknown path "udp"`},
		{"no sessions", func(o *Options) { o.Sessions = nil }, "no paths or session counts"},
		{"zero sessions", func(o *Options) { o.Sessions = []int{0} }, "must be positive"},
		{"zero duration", func(o *Options) { o.Duration = 0 }, "duration"},
		{"negative warm-up", func(o *Options) { o.Warmup = -time.Second }, "warm-up"},
		{"large without size", func(o *Options) { o.Sections = []string{SectionLarge} }, "large section"},
		{"negative gomaxprocs", func(o *Options) { o.GOMAXPROCS = -1 }, "GOMAXPROCS -1"},
		{"paced without rate", func(o *Options) {
			o.Sections = []string{SectionPaced}
			o.PacedSessions, o.PacedPaths = 1, []string{PathQUIC}
		}, "paced rate"},
		{"paced without sessions", func(o *Options) {
			o.Sections = []string{SectionPaced}
			o.PacedRate, o.PacedPaths = 10, []string{PathQUIC}
		}, "paced session count"},
		{"paced unknown path", func(o *Options) {
			o.Sections = []string{SectionPaced}
			o.PacedRate, o.PacedSessions, o.PacedPaths = 10, 1, []string{"carrier-pigeon"}
		}, "carrier-pigeon"},
		{"lossy without namespace", func(o *Options) { o.Sections = []string{SectionLossy} }, "namespace"},
		{"lossy with loss 1", func(o *Options) {
			o.Sections = []string{SectionLossy}
			o.Lossy = LossyOptions{Netns: "x", Link: LinkConfig{Loss: 1}, Sessions: 1, Duration: time.Second, BulkBytes: 1}
		}, "loss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := good()
			tc.mod(&o)
			err := o.validate()
			if tc.wantErr == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.wantErr)
		})
	}
}

// runCell against a real MCP server in this process: the measured window
// spans the measured phase, and CPU per request is accounted.
func TestRunCellWindow(t *testing.T) {
	hs, err := mcptest.StartHTTP("127.0.0.1:0", mcptest.HTTPConfig{})
	require.NoError(t, err)
	defer func() { require.NoError(t, hs.Close()) }()

	tgt := target{Path: PathDirect, URL: hs.URL}
	// A warm-up longer than the measured phase, so that a window that took
	// it in is told apart from one late by scheduling under -race.
	cc := cellConfig{Duration: 400 * time.Millisecond, Warmup: 600 * time.Millisecond, PayloadBytes: 16}
	c := runCell(context.Background(), hostProc, tgt, 2, cc)
	require.Empty(t, c.Error)
	require.Positive(t, c.Load.Requests)
	assert.Zero(t, c.Load.Errors)
	assert.Positive(t, c.Load.WarmupRequests, "warm-up requests are left out")
	// The window is the measured phase: its two snapshots are taken at
	// fixed times, each possibly late by scheduling, so it may be a little
	// shorter or longer, but never holds the warm-up.
	assert.GreaterOrEqual(t, c.WindowSeconds, 0.75*cc.Duration.Seconds(), "the window is shorter than the measured phase")
	assert.Less(t, c.WindowSeconds, (cc.Duration + cc.Warmup/2).Seconds(), "the window holds (part of) the warm-up")
	assert.Positive(t, c.CPUPerRequest[roleGenerator], "this process did the work")
	_, hasRelay := c.CPUPerRequest[roleRelay]
	assert.False(t, hasRelay)
	assert.Equal(t, -1.0, c.RelayAgentUS())

	// A target that refuses: the cell reports the error, the window ends.
	bad := runCell(context.Background(), hostProc, target{Path: PathQUIC, URL: hs.URL + "/nowhere"}, 1, cc)
	assert.NotEmpty(t, bad.Error)
	assert.Zero(t, bad.WindowSeconds)
}

// buildBinaries builds mcptun and the fixture for the end-to-end test.
func buildBinaries(t *testing.T) (mcptun, fixture string) {
	t.Helper()
	dir := t.TempDir()
	mcptun, fixture = filepath.Join(dir, "mcptun"), filepath.Join(dir, "mcptest-server")
	for _, b := range [][2]string{{mcptun, "github.com/mcptun/mcptun/cmd/mcptun"}, {fixture, "github.com/mcptun/mcptun/internal/mcptest/cmd/mcptest-server"}} {
		out, err := exec.Command("go", "build", "-o", b[0], b[1]).CombinedOutput()
		require.NoError(t, err, "build %s: %s", b[1], out)
	}
	return mcptun, fixture
}

// A small run of every section but the lossy one, against the real
// binaries as separate processes.
func TestRunEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	mcptun, fixture := buildBinaries(t)
	self, err := os.Executable() // this test binary runs the plain tunnel (TestMain)
	require.NoError(t, err)
	out := t.TempDir()
	rep, err := Run(context.Background(), Options{
		Mcptun: mcptun, Fixture: fixture, OutDir: out, Self: self,
		Sections:  []string{SectionMatrix, SectionPaced, SectionLarge, SectionIdle},
		PacedRate: 200, PacedSessions: 2, PacedPaths: []string{PathDirect, PathQUIC, PathStdio, PathPlainQUIC},
		Sessions: []int{2}, Paths: []string{PathDirect, PathQUIC, PathTCP, PathStdio, PathPlainQUIC, PathPlainTCP},
		Rounds: 2, Baseline: mcptun, // the same build as its own baseline: the wiring is what is tested
		Duration: 500 * time.Millisecond, Warmup: 200 * time.Millisecond, PayloadBytes: 32,
		LargeBytes: 1 << 20, LargeReps: 1, LargePaths: []string{PathDirect, PathQUIC},
		IdleSessions: 20, IdleStreams: 20, IdleStdio: 3,
	})
	require.NoError(t, err)
	require.Empty(t, rep.Errors)

	var paths []string
	for _, c := range rep.Cells {
		paths = append(paths, c.Path)
	}
	require.Equal(t, []string{PathDirect, PathQUIC, PathQUIC + BaselineSuffix, PathTCP, PathTCP + BaselineSuffix,
		PathStdio, PathStdio + BaselineSuffix, PathPlainQUIC, PathPlainTCP}, paths, "baseline paths interleave with ours; the plain tunnel has none")
	for _, c := range rep.Cells {
		assert.Empty(t, c.Error, c.Path)
		assert.Equal(t, 2, c.Rounds, "%s: median of both rounds", c.Path)
		assert.Positive(t, c.Load.Requests, c.Path)
		assert.Zero(t, c.Load.Errors, c.Path)
		assert.Positive(t, c.CPUPerRequest[roleServer], "%s: server CPU", c.Path)
		if c.Path == PathDirect {
			assert.Equal(t, -1.0, c.RelayAgentUS())
			continue
		}
		assert.Positive(t, c.CPUPerRequest[roleRelay], "%s: relay CPU", c.Path)
		assert.Positive(t, c.CPUPerRequest[roleAgent], "%s: agent CPU", c.Path)
	}
	var paced []string
	for _, c := range rep.Paced {
		paced = append(paced, c.Path)
		assert.Empty(t, c.Error, c.Path)
		assert.Positive(t, c.Load.Requests, c.Path)
		assert.Zero(t, c.Load.Errors, c.Path)
		assert.Equal(t, 200.0, c.Load.OfferedRPS, c.Path)
		// Per round the schedule allows at most 200/s × 0.5 s of requests,
		// plus the one due at the window's edge; counts sum over rounds.
		assert.LessOrEqual(t, c.Load.Requests, int64(2*101), "%s: paced, not closed-loop", c.Path)
	}
	// The baseline build is measured in the paced rounds too, beside each
	// of mcptun's paths (not the direct or plain-tunnel ones).
	require.Equal(t, []string{PathDirect, PathQUIC, PathQUIC + BaselineSuffix, PathStdio, PathStdio + BaselineSuffix, PathPlainQUIC}, paced)
	require.Len(t, rep.Large, 2)
	for _, l := range rep.Large {
		assert.Empty(t, l.Error, l.Path)
		assert.Positive(t, l.Median, l.Path)
	}
	require.Len(t, rep.Idle, 3)
	for _, row := range rep.Idle {
		assert.Equal(t, row.Sessions, row.Opened, "%s: %s", row.Label, row.FirstError)
		require.NotNil(t, row.Relay)
		assert.True(t, row.Relay.After.Runtime, "relay runtime figures through pprof")
	}
	assert.Positive(t, rep.Idle[2].Relay.GoroutinesPerSession, "a held GET stream costs the relay goroutines")
	assert.NotEmpty(t, rep.Targets)

	var md bytes.Buffer
	require.NoError(t, rep.WriteMarkdown(&md))
	assert.Contains(t, md.String(), "| 2 | quic |")
	assert.Contains(t, md.String(), "| 2 | quic@baseline |")
	assert.Contains(t, md.String(), "median of 2 rounds")
	assert.Regexp(t, `\*\*[0-9.]+\*\* \([0-9]+–[0-9]+\)`, md.String(), "relay+agent with the rounds' range")
	assert.Contains(t, md.String(), "| 2 | plain-tcp |")
	assert.Contains(t, md.String(), "### At one request rate")
	assert.Regexp(t, `\| stdio \| [0-9]+ \|`, md.String())
	var pacedChecks int
	for _, tc := range rep.Targets {
		if strings.Contains(tc.Name, "both at 200 req/s") {
			pacedChecks++
		}
	}
	assert.Equal(t, 2, pacedChecks, "the bridge and the plain-tunnel checks at one rate")

	// Every process the run started is gone, and so are their children.
	assert.Empty(t, childrenOf(hostProc, os.Getpid())())
	logs, err := filepath.Glob(filepath.Join(out, "*", "logs", "*.log"))
	require.NoError(t, err)
	assert.GreaterOrEqual(t, len(logs), 10)
}

// Relays and agents get Options.GOMAXPROCS through their environment, on
// top of the inherited one.
func TestTunnelEnv(t *testing.T) {
	o := Options{GOMAXPROCS: 1}
	p, err := startProcessEnv("env", filepath.Join(t.TempDir(), "env.log"), o.tunnelEnv(),
		"/bin/sh", "-c", `echo "procs=$GOMAXPROCS path=${PATH:+set}"`)
	require.NoError(t, err)
	_, err = p.WaitLine(t.Context(), regexp.MustCompile(`^procs=1 path=set$`), 10*time.Second)
	assert.NoError(t, err, "output: %q", p.Output())
	select {
	case <-p.Done(): // the shell exits by itself
		_, err := p.Exited()
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		_ = p.Stop()
		t.Fatal("the shell did not exit")
	}
	assert.Nil(t, (&Options{}).tunnelEnv(), "0 leaves the Go default")
}

// Configs name files by absolute path: the agent resolves a relative
// token_file against its config's directory, not the working directory.
func TestWorkspacePathsAreAbsolute(t *testing.T) {
	t.Chdir(t.TempDir())
	exe, err := os.Executable()
	require.NoError(t, err)
	ws, err := newWorkspace(filepath.Join("out", "matrix"), exe, exe)
	require.NoError(t, err)
	for _, p := range []string{ws.dir, ws.mcptun, ws.fixture} {
		assert.True(t, filepath.IsAbs(p), p)
	}
	_, err = os.Stat(filepath.Join(ws.dir, "relay.crt"))
	assert.NoError(t, err)
	_, err = newWorkspace("out", filepath.Join("no", "such", "binary"), exe)
	assert.ErrorContains(t, err, "binary")
}
