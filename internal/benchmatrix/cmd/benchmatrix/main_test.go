package main

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/mcptun/mcptun/internal/benchmatrix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    int
		wantErr bool
	}{
		{in: "4096", want: 4096},
		{in: "512KiB", want: 512 << 10},
		{in: "16MiB", want: 16 << 20},
		{in: "1 GiB", want: 1 << 30},
		{in: "100B", want: 100},
		{in: "16MB", wantErr: true},
		{in: "0", wantErr: true},
		{in: "-1KiB", wantErr: true},
		{in: "", wantErr: true},
	} {
		got, err := parseSize(tc.in)
		if tc.wantErr {
			assert.Error(t, err, "%q", tc.in)
			continue
		}
		require.NoError(t, err, "%q", tc.in)
		assert.Equal(t, tc.want, got, "%q", tc.in)
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		check   func(t *testing.T, o benchmatrix.Options)
		wantErr string
	}{
		{name: "defaults", args: nil, check: func(t *testing.T, o benchmatrix.Options) {
			assert.Equal(t, []int{1, 16, 64}, o.Sessions)
			assert.Equal(t, benchmatrix.AllPaths, o.Paths)
			assert.Equal(t, []string{"matrix", "paced", "large", "idle"}, o.Sections)
			assert.Equal(t, 5*time.Second, o.Duration)
			assert.Equal(t, 16<<20, o.LargeBytes)
			assert.Equal(t, 9000, o.IdleStreams)
			assert.Equal(t, 0.01, o.Lossy.Link.Loss)
		}},
		{name: "quick keeps explicit flags", args: []string{"--quick", "--duration", "2s"}, check: func(t *testing.T, o benchmatrix.Options) {
			assert.Equal(t, []int{1, 16}, o.Sessions)
			assert.Equal(t, 2*time.Second, o.Duration)
			assert.Equal(t, 300*time.Millisecond, o.Warmup)
			assert.Equal(t, 200, o.IdleStreams)
		}},
		{name: "lossy adds the section", args: []string{"--lossy"}, check: func(t *testing.T, o benchmatrix.Options) {
			assert.Equal(t, []string{"matrix", "paced", "large", "idle", "lossy"}, o.Sections)
		}},
		{name: "lossy only", args: []string{"--lossy-only", "--lossy-bulk", "8MiB"}, check: func(t *testing.T, o benchmatrix.Options) {
			assert.Equal(t, []string{"lossy"}, o.Sections)
			assert.Equal(t, 8<<20, o.Lossy.BulkBytes)
		}},
		{name: "lossy only with sections", args: []string{"--lossy-only", "--sections", "idle"}, wantErr: "excludes"},
		{name: "bad sessions", args: []string{"--sessions", "1,x"}, wantErr: `--sessions: "x"`},
		{name: "bad size", args: []string{"--large-bytes", "lots"}, wantErr: "--large-bytes"},
		{name: "stray argument", args: []string{"now"}, wantErr: "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, jsonPath, mdPath, err := parseFlags(tc.args, &bytes.Buffer{})
			if tc.wantErr != "" {
				require.ErrorContains(t, err, tc.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "bin/bench/bench.json", jsonPath)
			assert.Equal(t, "bin/bench/bench.md", mdPath)
			tc.check(t, o)
		})
	}
}

func TestRunRejectsBadFlags(t *testing.T) {
	var stderr bytes.Buffer
	assert.Equal(t, 2, run(context.Background(), []string{"--sessions", "0"}, &bytes.Buffer{}, &stderr))
	assert.Contains(t, stderr.String(), "--sessions")
	stderr.Reset()
	assert.Equal(t, 2, run(context.Background(), []string{"--paths", "carrier-pigeon", "--out", t.TempDir()}, &bytes.Buffer{}, &stderr))
	assert.Contains(t, stderr.String(), `unknown path "carrier-pigeon"`)
}
