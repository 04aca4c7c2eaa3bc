package metrics

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestRelayObserver: exchanges land on their series, refusals and
// failures in the last errors (newest first, at most RingSize), GET
// streams in the gauge, and the status figures add up.
func TestRelayObserver(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewRelay(reg)
	m.Exchange("dc1", "notes", "tools/call", 200, "", 3*time.Millisecond)
	m.Exchange("dc1", "notes", "tools/call", 200, "", 5*time.Millisecond)
	m.Exchange("dc1", "notes", "unknown", 401, "unauthorized", 0)
	m.Exchange("", "", "unknown", 404, "unknown_agent", 0)
	m.StreamOpened("dc1", "notes")
	m.StreamOpened("dc1", "notes")
	m.StreamClosed("dc1", "notes")

	require.Equal(t, 2.0, testutil.ToFloat64(m.requests.WithLabelValues("dc1", "notes", "tools/call", "200", "")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.requests.WithLabelValues("", "", "unknown", "404", "unknown_agent")))
	require.Equal(t, 1.0, testutil.ToFloat64(m.streams.WithLabelValues("dc1", "notes")))
	require.Equal(t, 1, testutil.CollectAndCount(m.duration), "one histogram series: refusals take no time")

	srv := m.Servers()
	require.Len(t, srv, 1, "the unknown agent has no figures of its own")
	require.EqualValues(t, 3, srv[0].Requests.Load())
	require.EqualValues(t, 1, srv[0].Errors.Load())
	require.EqualValues(t, 1, srv[0].Streams.Load())

	errs := m.Errors()
	require.Len(t, errs, 2)
	require.Equal(t, "unknown_agent", errs[0].Reason, "newest first")
	for i := range RingSize + 5 {
		m.Exchange("dc1", "notes", "ping", 502, "tunnel_error", time.Duration(i))
	}
	require.Len(t, m.Errors(), RingSize)

	// The names follow Prometheus' conventions.
	mfs, err := reg.Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		require.True(t, strings.HasPrefix(mf.GetName(), "mcptun_"), mf.GetName())
	}
}

// BenchmarkRelayObserver is what the relay's request path pays per
// exchange for metrics: one series lookup, a counter, a histogram.
func BenchmarkRelayObserver(b *testing.B) {
	m := NewRelay(prometheus.NewRegistry())
	b.ReportAllocs()
	for b.Loop() {
		m.Exchange("dc1", "notes", "tools/call", 200, "", time.Millisecond)
	}
}
