package loadgen

import (
	"math"
	"math/bits"
	"sync/atomic"
	"time"
)

// histogram is a log-linear latency histogram in the manner of HdrHistogram:
// values below 2^subBits nanoseconds have a bucket each; above, every power
// of two is split into 2^(subBits-1) equal buckets, so a bucket is never
// wider than 1/2^(subBits-1) of the values it holds. Memory is fixed (about
// 58 KiB) whatever the number of requests, and recording is one atomic add,
// so all sessions share one histogram.
type histogram struct {
	counts [numBuckets]atomic.Uint64
	total  atomic.Uint64
	sum    atomic.Uint64 // nanoseconds
	min    atomic.Int64
	max    atomic.Int64
}

const (
	subBits    = 8
	subCount   = 1 << subBits
	halfCount  = subCount / 2
	numBuckets = subCount + (64-subBits)*halfCount
)

func newHistogram() *histogram {
	h := new(histogram)
	h.min.Store(math.MaxInt64)
	return h
}

// bucketOf returns the bucket index of v >= 0.
func bucketOf(v uint64) int {
	if v < subCount {
		return int(v)
	}
	shift := bits.Len64(v) - subBits
	return shift*halfCount + int(v>>shift)
}

// bucketRange returns the smallest and largest value held by bucket i.
func bucketRange(i int) (lo, hi uint64) {
	if i < subCount {
		return uint64(i), uint64(i)
	}
	shift := i/halfCount - 1
	top := uint64(i - shift*halfCount)
	lo = top << shift
	return lo, lo + (1 << shift) - 1
}

func (h *histogram) record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[bucketOf(uint64(v))].Add(1)
	h.total.Add(1)
	h.sum.Add(uint64(v))
	for cur := h.min.Load(); v < cur && !h.min.CompareAndSwap(cur, v); cur = h.min.Load() {
	}
	for cur := h.max.Load(); v > cur && !h.max.CompareAndSwap(cur, v); cur = h.max.Load() {
	}
}

// histStats is a snapshot of a histogram, taken when recording has stopped.
type histStats struct {
	counts         []uint64
	total          uint64
	mean, min, max time.Duration
}

func (h *histogram) stats() histStats {
	st := histStats{total: h.total.Load()}
	if st.total == 0 {
		return st
	}
	st.counts = make([]uint64, numBuckets)
	for i := range h.counts {
		st.counts[i] = h.counts[i].Load()
	}
	st.mean = time.Duration(h.sum.Load() / st.total)
	st.min = time.Duration(h.min.Load())
	st.max = time.Duration(h.max.Load())
	return st
}

// quantile returns the value at quantile q (0 < q <= 1): the largest value
// of the bucket holding the ceil(q*total)-th smallest sample, clamped to the
// observed range, so it never understates the latency.
func (st histStats) quantile(q float64) time.Duration {
	if st.total == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(st.total)))
	rank = min(max(rank, 1), st.total)
	var seen uint64
	for i, c := range st.counts {
		seen += c
		if seen >= rank {
			_, hi := bucketRange(i)
			return min(max(time.Duration(hi), st.min), st.max)
		}
	}
	return st.max
}
