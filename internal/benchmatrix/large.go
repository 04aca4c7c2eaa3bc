package benchmatrix

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/mcptun/mcptun/internal/loadgen"
)

// LargeRow is the time to fetch one large tool result on one path.
type LargeRow struct {
	Path  string `json:"path"`
	Bytes int    `json:"bytes"`
	Reps  int    `json:"reps"`
	// Median and Min are over Reps sequential calls, after one unmeasured
	// call that warms up connections and windows.
	Median time.Duration `json:"median_ns"`
	Min    time.Duration `json:"min_ns"`
	MiBps  float64       `json:"mib_per_s"` // Bytes / Median
	// CPUPerCallMS is CPU time per call in milliseconds by role.
	CPUPerCallMS map[string]float64 `json:"cpu_ms_per_call,omitempty"`
	Error        string             `json:"error,omitempty"`
}

// largeTimeout bounds one large call; a 64 MiB result over a lossy link
// may take a while, but never this long.
const largeTimeout = 5 * time.Minute

func runLarge(ctx context.Context, fs procFS, tgt target, size, reps int) LargeRow {
	row := LargeRow{Path: tgt.Path, Bytes: size, Reps: reps}
	args, _ := json.Marshal(map[string]int{"bytes": size})
	cfg := loadgen.Config{
		URL: tgt.URL, Token: tgt.Token, Sessions: 1, Requests: 1,
		Tool: "large_output", Arguments: args, Timeout: largeTimeout,
	}
	if res, err := loadgen.Run(ctx, cfg); err != nil || res.Errors > 0 {
		row.Error = fmt.Sprintf("warm-up call: %v", firstError(res, err))
		return row
	}
	s := &sampler{fs: fs, roles: tgt.roles}
	a := s.take()
	cfg.Requests = reps
	res, err := loadgen.Run(ctx, cfg)
	w := s.delta(a, s.take())
	if err != nil || res.Errors > 0 {
		row.Error = firstError(res, err).Error()
		return row
	}
	row.Median, row.Min = res.P50, res.Min
	if row.Median > 0 {
		row.MiBps = float64(size) / (1 << 20) / row.Median.Seconds()
	}
	row.CPUPerCallMS = make(map[string]float64, len(w.ByRole))
	for name, d := range w.ByRole {
		row.CPUPerCallMS[name] = float64(d.Microseconds()) / 1000 / float64(reps)
	}
	return row
}

// firstError names why a loadgen run failed: its error, or its first
// error sample.
func firstError(res loadgen.Result, err error) error {
	if err != nil {
		return err
	}
	if len(res.ErrorSamples) > 0 {
		return fmt.Errorf("%d of %d calls failed; first: %s", res.Errors, res.Requests, res.ErrorSamples[0])
	}
	return fmt.Errorf("%d of %d calls failed", res.Errors, res.Requests)
}
