package logging

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestLimit(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	l := NewLimit(1, 2)
	now := time.Now()
	lines := func() []map[string]any {
		var out []map[string]any
		for _, s := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			if s == "" {
				continue
			}
			var m map[string]any
			require.NoError(t, json.Unmarshal([]byte(s), &m))
			out = append(out, m)
		}
		return out
	}

	// A level the logger does not write takes nothing from the limit.
	for range 10 {
		l.logAt(now, log, slog.LevelDebug, "hidden")
	}
	for range 5 {
		l.logAt(now, log, slog.LevelWarn, "cut")
	}
	got := lines()
	require.Len(t, got, 2, "the burst, then nothing")
	require.NotContains(t, got[1], "lines_suppressed")

	// A second later one token is back: the next line counts the three
	// left out.
	l.logAt(now.Add(time.Second), log, slog.LevelWarn, "cut")
	got = lines()
	require.Len(t, got, 3)
	require.EqualValues(t, 3, got[2]["lines_suppressed"])
}

func TestEvery(t *testing.T) {
	var e Every
	now := time.Now()
	for _, tc := range []struct {
		after time.Duration
		want  bool
	}{
		{0, true},
		{time.Second, false},
		{59 * time.Second, false},
		{61 * time.Second, true},
		{62 * time.Second, false},
	} {
		require.Equal(t, tc.want, e.allowAt(now.Add(tc.after), time.Minute), "at +%s", tc.after)
	}
}
