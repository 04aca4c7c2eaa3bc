package procs

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseRuntimeProfiles(t *testing.T) {
	heap := "heap profile: 3: 2048 [10: 4096] @ heap/1048576\n1: 1024 [1: 1024] @ 0x1 0x2\n\n" +
		"# runtime.MemStats\n# Alloc = 123456\n# HeapAlloc = 123456\n# HeapInuse = 200000\n# Stack = 65536 / 65536\n# MSpan = 1 / 2\n"
	for _, tc := range []struct {
		name             string
		in               string
		wantHeap, wantSt int64
		wantErr          bool
	}{
		{name: "debug=1 output", in: heap, wantHeap: 123456, wantSt: 65536},
		{name: "binary profile", in: "\x1f\x8b\x08", wantErr: true},
		{name: "no stack line", in: "# HeapAlloc = 5\n", wantErr: true},
		{name: "bad number", in: "# HeapAlloc = five\n# Stack = 1 / 1\n", wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, s, err := ParseHeapProfile([]byte(tc.in))
			if tc.wantErr {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.wantHeap, h)
			assert.Equal(t, tc.wantSt, s)
		})
	}
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{in: "goroutine profile: total 10042\n5000 @ 0x1\n", want: 10042},
		{in: "goroutine profile: total 7", want: 7},
		{in: "goroutine 1 [running]:\n", wantErr: true},
		{in: "goroutine profile: total many\n", wantErr: true},
	} {
		got, err := ParseGoroutineCount([]byte(tc.in))
		if tc.wantErr {
			assert.Error(t, err, "%q", tc.in)
			continue
		}
		require.NoError(t, err)
		assert.Equal(t, tc.want, got)
	}
}
