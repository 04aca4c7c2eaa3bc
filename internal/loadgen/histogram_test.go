package loadgen

import (
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBucketRangeHoldsValue(t *testing.T) {
	vals := []uint64{0, 1, 127, 128, 255, 256, 257, 383, 384, 511, 512, 1e3, 1e6, 1e9, 1e12, 1<<63 - 1, 1<<64 - 1}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 10000 {
		vals = append(vals, rng.Uint64()>>rng.IntN(64))
	}
	for _, v := range vals {
		i := bucketOf(v)
		require.GreaterOrEqual(t, i, 0)
		require.Less(t, i, numBuckets, "v=%d", v)
		lo, hi := bucketRange(i)
		require.True(t, lo <= v && v <= hi, "v=%d bucket %d [%d,%d]", v, i, lo, hi)
		// Relative width bound: (hi-lo) <= lo/128.
		require.LessOrEqual(t, hi-lo, lo/halfCount, "v=%d", v)
	}
	// Buckets are contiguous.
	for i := 1; i < numBuckets; i++ {
		_, prevHi := bucketRange(i - 1)
		lo, _ := bucketRange(i)
		require.Equal(t, prevHi+1, lo, "bucket %d", i)
	}
}

func TestQuantilesAgainstSortedSamples(t *testing.T) {
	for _, tc := range []struct {
		name string
		gen  func(r *rand.Rand) time.Duration
	}{
		{"uniform 0-10ms", func(r *rand.Rand) time.Duration { return time.Duration(r.Int64N(int64(10 * time.Millisecond))) }},
		{"exponential", func(r *rand.Rand) time.Duration { return time.Duration(r.ExpFloat64() * float64(time.Millisecond)) }},
		{"constant", func(*rand.Rand) time.Duration { return 1500 * time.Microsecond }},
		{"tiny", func(r *rand.Rand) time.Duration { return time.Duration(r.IntN(200)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(3, 4))
			h := newHistogram()
			var all []time.Duration
			for range 20000 {
				d := tc.gen(rng)
				h.record(d)
				all = append(all, d)
			}
			slices.Sort(all)
			st := h.stats()
			assert.Equal(t, all[0], st.min)
			assert.Equal(t, all[len(all)-1], st.max)
			for _, q := range []float64{0.5, 0.9, 0.99, 0.999, 1} {
				exact := all[int(q*float64(len(all)))-1]
				if q*float64(len(all)) != float64(int(q*float64(len(all)))) {
					exact = all[int(q*float64(len(all)))]
				}
				got := st.quantile(q)
				assert.GreaterOrEqual(t, got, exact, "q=%v never understates", q)
				assert.LessOrEqual(t, float64(got-exact), float64(exact)/halfCount+1, "q=%v within 1/128: got %v exact %v", q, got, exact)
			}
		})
	}
}

func TestEmptyHistogram(t *testing.T) {
	st := newHistogram().stats()
	assert.Zero(t, st.quantile(0.5))
	assert.Zero(t, st.min)
	assert.Zero(t, st.max)
}
