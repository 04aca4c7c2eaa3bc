package procs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A real /proc/PID/stat line of a Go program (52 fields).
const goStat = "23125 (mcptun) S 1 23125 7515 0 -1 4194560 1894 0 0 0 153 41 0 0 20 0 9 0 1169356 1286406144 5063 18446744073709551615 4194304 11010981 140728843508816 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0 15278080 15565504 27148288 140728843513471 140728843513517 140728843513517 140728843517925 0\n"

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name    string
		in      string
		want    Stat
		wantErr string
	}{
		{name: "go program", in: goStat,
			want: Stat{Comm: "mcptun", State: 'S', PPID: 1, UTime: 153, STime: 41, Threads: 9}},
		{name: "comm with spaces and parentheses",
			in:   "77 (a) b (c)) R 5 77 7 0 -1 0 0 0 0 0 12 34 0 0 20 0 3 0 1 1 1\n",
			want: Stat{Comm: "a) b (c)", State: 'R', PPID: 5, UTime: 12, STime: 34, Threads: 3}},
		{name: "zombie", in: "9 (x) Z 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 1 0 0",
			want: Stat{Comm: "x", State: 'Z', PPID: 1, Threads: 1}},
		{name: "empty", in: "", wantErr: "no (comm)"},
		{name: "no closing paren", in: "1 (x S 1 2 3", wantErr: "no (comm)"},
		{name: "truncated", in: "1 (x) S 1 2 3 4 5", wantErr: "fields after comm"},
		{name: "bad state", in: "1 (x) SS 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0", wantErr: "state"},
		{name: "bad utime", in: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 -1 1 0 0 20 0 1 0", wantErr: "utime"},
		{name: "bad stime", in: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 z 0 0 20 0 1 0", wantErr: "stime"},
		{name: "bad ppid", in: "1 (x) S p 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 1 0", wantErr: "ppid"},
		{name: "bad threads", in: "1 (x) S 1 1 1 0 -1 0 0 0 0 0 1 1 0 0 20 0 y 0", wantErr: "num_threads"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseStat([]byte(tc.in))
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
	st, _ := ParseStat([]byte(goStat))
	assert.Equal(t, 1940*time.Millisecond, st.CPU(), "(153+41) ticks of 10 ms")
}

func TestParseSchedstat(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "200616 127639 2\n", want: 200616},
		{in: "123456789012 0 0", want: 123456789012},
		{in: "", wantErr: true},
		{in: "x 1 2", wantErr: true},
		{in: "-5 1 2", wantErr: true},
	} {
		got, err := ParseSchedstat([]byte(tc.in))
		if tc.wantErr {
			assert.Error(t, err, "%q", tc.in)
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		assert.Equal(t, tc.want, got, "%q", tc.in)
	}
}

func TestParseKB(t *testing.T) {
	status := "Name:\tmcptun\nVmPeak:\t 1286406 kB\nVmRSS:\t    20252 kB\nRssAnon:\t   9000 kB\nThreads:\t9\n"
	rollup := "557fcc6ce000-7fffc1bd2000 ---p 00000000 00:00 0   [rollup]\nRss:                1620 kB\nPss:                 259 kB\nPss_Dirty:           112 kB\n"
	for _, tc := range []struct {
		name, in, key string
		want          int64
		wantErr       string
	}{
		{name: "status VmRSS", in: status, key: "VmRSS", want: 20252 * 1024},
		{name: "prefix of another key is not a match", in: "RssAnon: 5 kB\nRss: 7 kB\n", key: "Rss", want: 7 * 1024},
		{name: "smaps_rollup Pss", in: rollup, key: "Pss", want: 259 * 1024},
		{name: "missing", in: status, key: "VmSwap", wantErr: "not found"},
		{name: "no unit", in: "Threads:\t9\n", key: "Threads", wantErr: "N kB"},
		{name: "not a number", in: "VmRSS: lots kB\n", key: "VmRSS", wantErr: "not a size"},
		{name: "negative", in: "VmRSS: -4 kB\n", key: "VmRSS", wantErr: "not a size"},
		{name: "last line without newline", in: "A: 1 kB\nVmRSS: 3 kB", key: "VmRSS", want: 3 * 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKB([]byte(tc.in), tc.key)
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
		})
	}
}

func TestParseSystemStat(t *testing.T) {
	in := "cpu  236682 10 56182 2034203 1940 3 2808 2137 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1 2\n"
	got, err := ParseSystemStat([]byte(in))
	require.NoError(t, err)
	assert.Equal(t, SysCPU{User: 236682, Nice: 10, System: 56182, Idle: 2034203, IOWait: 1940, IRQ: 3, SoftIRQ: 2808, Steal: 2137}, got)
	assert.Equal(t, time.Duration(236682+10+56182+3+2808)*ClockTick, got.Busy())
	assert.Equal(t, time.Duration(236682+10+56182+2034203+1940+3+2808+2137)*ClockTick, got.Total())

	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 2 x 4 5 6 7 8\n"} {
		_, err := ParseSystemStat([]byte(bad))
		assert.Error(t, err, "%q", bad)
	}
}

func TestParseChildren(t *testing.T) {
	got, err := ParseChildren([]byte("101 102 7 "))
	require.NoError(t, err)
	assert.Equal(t, []int{101, 102, 7}, got)
	got, err = ParseChildren(nil)
	require.NoError(t, err)
	assert.Empty(t, got)
	_, err = ParseChildren([]byte("12 x"))
	assert.ErrorContains(t, err, `"x"`)
	_, err = ParseChildren([]byte("0"))
	assert.Error(t, err)
}

func TestCPUDelta(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name string
		a, b CPUSample
		want time.Duration
	}{
		{"schedstat is used when it agrees", CPUSample{Sched: 100 * ms, Stat: 100 * ms}, CPUSample{Sched: 351 * ms, Stat: 350 * ms}, 251 * ms},
		{"stat rounding within ticks", CPUSample{Sched: 0, Stat: 0}, CPUSample{Sched: 3 * ms, Stat: 30 * ms}, 3 * ms},
		{"threads exited: stat shows more", CPUSample{Sched: 500 * ms, Stat: 500 * ms}, CPUSample{Sched: 550 * ms, Stat: 900 * ms}, 400 * ms},
		{"schedstat went backwards", CPUSample{Sched: 500 * ms, Stat: 500 * ms}, CPUSample{Sched: 400 * ms, Stat: 520 * ms}, 20 * ms},
		{"new process counts in full", CPUSample{}, CPUSample{Sched: 42 * ms, Stat: 40 * ms}, 42 * ms},
	} {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, CPUDelta(tc.a, tc.b))
		})
	}
}

// A fake proc tree exercises the file plumbing of FS.
func TestProcFSFiles(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		p := filepath.Join(root, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
		require.NoError(t, os.WriteFile(p, []byte(content), 0o644))
	}
	write("42/stat", "42 (relay) S 1 42 42 0 -1 0 0 0 0 0 300 100 0 0 20 0 2 0 1 1 1\n")
	write("42/task/42/schedstat", "2500000000 1 1\n")
	write("42/task/43/schedstat", "1500000000 1 1\n")
	write("42/task/42/children", "50 51")
	write("42/task/43/children", "52")
	write("42/status", "Name:\trelay\nVmRSS:\t2048 kB\n")
	write("42/smaps_rollup", "Rss: 2048 kB\nPss: 1024 kB\n")
	write("stat", "cpu  1 2 3 4 5 6 7 8 0 0\n")
	fs := FS{Root: root}

	c, err := fs.CPU(42)
	require.NoError(t, err)
	assert.Equal(t, CPUSample{Sched: 4 * time.Second, Stat: 4 * time.Second}, c)

	m, err := fs.Mem(42)
	require.NoError(t, err)
	assert.Equal(t, MemSample{RSS: 2 << 20, PSS: 1 << 20}, m)

	kids, err := fs.Children(42)
	require.NoError(t, err)
	assert.ElementsMatch(t, []int{50, 51, 52}, kids)

	sys, err := fs.System()
	require.NoError(t, err)
	assert.Equal(t, uint64(3), sys.System)

	_, err = fs.CPU(7)
	assert.Error(t, err, "a missing process is an error")
}

// The real /proc: this process's CPU time grows while it computes, and
// the two accountings agree within their rounding.
func TestHostCPUOfSelf(t *testing.T) {
	pid := os.Getpid()
	a, err := Host.CPU(pid)
	require.NoError(t, err)
	deadline := time.Now().Add(10 * time.Second)
	var b CPUSample
	x := uint64(1)
	for {
		for i := range 1_000_000 {
			x = x*6364136223846793005 + uint64(i)
		}
		b, err = Host.CPU(pid)
		require.NoError(t, err)
		if b.Sched-a.Sched >= 100*time.Millisecond {
			break
		}
		require.True(t, time.Now().Before(deadline), "CPU time did not grow by 100ms in 10s of computing")
	}
	_ = x
	d := CPUDelta(a, b)
	assert.GreaterOrEqual(t, d, 100*time.Millisecond)
	assert.InDelta(t, float64(b.Sched-a.Sched), float64(b.Stat-a.Stat), float64(100*time.Millisecond),
		"schedstat %v vs stat %v", b.Sched-a.Sched, b.Stat-a.Stat)

	m, err := Host.Mem(pid)
	require.NoError(t, err)
	assert.Positive(t, m.RSS)
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(goStat))
	f.Add([]byte("1 (a)b) S 1"))
	f.Add([]byte(")("))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := ParseStat(b)
		if err == nil && st.State == 0 {
			t.Fatalf("accepted %q without a state", b)
		}
		_, _ = ParseSchedstat(b)
		_, _ = ParseKB(b, "VmRSS")
		_, _ = ParseSystemStat(b)
		_, _ = ParseChildren(b)
	})
}

// The real /proc: a descriptor this process opens is counted.
func TestHostFDsOfSelf(t *testing.T) {
	before, err := Host.FDs(os.Getpid())
	require.NoError(t, err)
	f, err := os.Open(os.DevNull)
	require.NoError(t, err)
	after, err := Host.FDs(os.Getpid())
	require.NoError(t, err)
	require.NoError(t, f.Close())
	assert.Equal(t, before+1, after)
	_, err = Host.FDs(-1)
	assert.Error(t, err)
}
