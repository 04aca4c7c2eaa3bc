package authguard

import (
	"bytes"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mcptun/mcptun/internal/logging"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuf is a log sink safe for the guard's concurrent writes.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSpace(s.b.String()), "\n")
}

func newGuard(cfg Config) (*Guard, *syncBuf) {
	buf := &syncBuf{}
	cfg.Logger = slog.New(slog.NewTextHandler(buf, nil))
	return New(cfg), buf
}

var (
	srcA = netip.MustParseAddr("192.0.2.1")
	srcB = netip.MustParseAddr("192.0.2.2")
)

// TestThrottle: a source may fail its burst, then is refused (whoever it
// claims to be) while others are not.
func TestThrottle(t *testing.T) {
	g, _ := newGuard(Config{Rate: 0.5, Burst: 3, LogEvery: time.Hour})
	for i := range 3 {
		_, ok := g.Check(srcA)
		require.True(t, ok, "attempt %d within the burst", i)
		g.Failed(srcA)
	}
	wait, ok := g.Check(srcA)
	require.False(t, ok, "a source past its burst is throttled")
	g.Refused(srcA)
	require.Greater(t, wait, time.Second)
	require.LessOrEqual(t, wait, 2*time.Second)
	_, ok = g.Check(srcB)
	require.True(t, ok, "another source is not")
	_, ok = g.Check(netip.Addr{})
	require.True(t, ok, "no address: not throttled")
	require.EqualValues(t, 3, g.Stats().Failures.Load())
	require.EqualValues(t, 1, g.Stats().Throttled.Load())
}

// TestKey: IPv4 addresses count alone, IPv6 ones by /64, mapped IPv4 as
// IPv4.
func TestKey(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"192.0.2.1", "::ffff:192.0.2.1"},
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"},
	} {
		require.Equal(t, Key(netip.MustParseAddr(tc.a)), Key(netip.MustParseAddr(tc.b)), tc)
	}
	require.NotEqual(t, Key(netip.MustParseAddr("2001:db8:1:2::1")), Key(netip.MustParseAddr("2001:db8:1:3::1")))
	require.NotEqual(t, Key(srcA), Key(srcB))
	require.Equal(t, srcA, ParseAddr("192.0.2.1:443"))
	require.Equal(t, netip.MustParseAddr("2001:db8::1"), ParseAddr("[2001:db8::1]:443"))
	require.False(t, ParseAddr("@unix").IsValid())
}

// TestTableBounded: a flood from many addresses cannot grow the table
// past MaxSources.
func TestTableBounded(t *testing.T) {
	g, _ := newGuard(Config{MaxSources: 100, LogEvery: time.Hour})
	for i := range 5000 {
		g.Failed(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}))
		require.LessOrEqual(t, g.Len(), 100)
	}
	require.EqualValues(t, 4900, g.Stats().Evicted.Load())
}

// TestLogLines: one line per source per LogEvery, carrying the count of
// failures since its last; and a cap over all sources.
func TestLogLines(t *testing.T) {
	t.Run("per source", func(t *testing.T) {
		const every = 300 * time.Millisecond
		g, buf := newGuard(Config{Burst: 1000, LogEvery: every, What: "bearer token"})
		for range 50 {
			g.Failed(srcA, "claimed", "ci")
		}
		lines := buf.lines()
		require.Len(t, lines, 1, "failures within LogEvery share a line")
		require.Contains(t, lines[0], `msg="authentication failed" what="bearer token" source=192.0.2.1/32 failures=1 throttled=false claimed=ci`)
		require.Eventually(t, func() bool {
			g.Failed(srcA)
			return len(buf.lines()) == 2
		}, 10*time.Second, 10*time.Millisecond)
		require.Regexp(t, `failures=(49|[5-9][0-9]|[0-9]{3,})\b`, buf.lines()[1], "the second line counts the failures in between")
	})
	t.Run("over all sources", func(t *testing.T) {
		g, buf := newGuard(Config{LogEvery: time.Hour})
		for i := range 1000 {
			g.Failed(netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		}
		n := len(buf.lines())
		require.LessOrEqual(t, n, logging.LimitBurst+5, "a flood of sources floods the log")
		require.GreaterOrEqual(t, n, logging.LimitBurst)
	})
}

func ExampleGuard() {
	g := New(Config{Burst: 2})
	src := netip.MustParseAddr("198.51.100.7")
	for range 3 {
		if _, ok := g.Check(src); !ok {
			fmt.Println("throttled")
			continue
		}
		fmt.Println("checked, wrong")
		g.Failed(src)
	}
	// Output:
	// checked, wrong
	// checked, wrong
	// throttled
}
