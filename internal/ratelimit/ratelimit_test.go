package ratelimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTake(t *testing.T) {
	// A token per 1,000 s: none comes back while the test runs.
	l := New(0.001, 2)
	for i := range 2 {
		_, ok := l.Take()
		require.True(t, ok, "request %d is within the burst", i+1)
	}
	for range 3 {
		wait, ok := l.Take()
		require.False(t, ok)
		assert.InDelta(t, 1000, wait.Seconds(), 1, "a refusal takes nothing: the wait does not grow")
	}
	assert.Equal(t, "0.001 requests/s (burst 2)", l.String())
}

func TestNoLimit(t *testing.T) {
	for _, rate := range []float64{0, -1} {
		l := New(rate, 5)
		require.Nil(t, l)
		for range 100 {
			_, ok := l.Take()
			require.True(t, ok)
		}
		assert.Equal(t, "no limit", l.String())
	}
	assert.Equal(t, "3 requests/s (burst 1)", New(3, 0).String(), "a burst below 1 is 1")
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{
		{0, "1"}, {time.Millisecond, "1"}, {time.Second, "1"}, {time.Second + 1, "2"}, {999 * time.Second, "999"},
	} {
		assert.Equal(t, tc.want, RetryAfter(tc.d), "%v", tc.d)
	}
}
