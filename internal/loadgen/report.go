package loadgen

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteTable writes r as a small human-readable table.
func (r Result) WriteTable(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "target\t%s\n", r.URL)
	fmt.Fprintf(tw, "load\t%d session(s), era %s, tool %s\n", r.Sessions, r.Era, r.Tool)
	fmt.Fprintf(tw, "requests\t%d in %s, %.1f req/s", r.Requests, fmtDuration(r.Duration), r.RPS)
	if r.OfferedRPS > 0 {
		fmt.Fprintf(tw, " (offered %.1f; latency from when each was due)", r.OfferedRPS)
	}
	fmt.Fprintln(tw)
	errPct := 0.0
	if r.Requests > 0 {
		errPct = 100 * float64(r.Errors) / float64(r.Requests)
	}
	fmt.Fprintf(tw, "errors\t%d (%.2f%%)\n", r.Errors, errPct)
	if r.Requests > r.Errors {
		fmt.Fprintf(tw, "latency\tp50 %s  p90 %s  p99 %s  max %s  (min %s, mean %s)\n",
			fmtDuration(r.P50), fmtDuration(r.P90), fmtDuration(r.P99), fmtDuration(r.Max),
			fmtDuration(r.Min), fmtDuration(r.Mean))
	}
	fmt.Fprintf(tw, "bodies\tsent %s, received %s\n", fmtBytes(r.BytesSent), fmtBytes(r.BytesReceived))
	for i, s := range r.ErrorSamples {
		label := ""
		if i == 0 {
			label = "error samples"
		}
		fmt.Fprintf(tw, "%s\t%s\n", label, s)
	}
	return tw.Flush()
}

// fmtDuration rounds d to four significant digits.
func fmtDuration(d time.Duration) string {
	p := time.Duration(1)
	for d/p >= 10000 {
		p *= 10
	}
	return d.Round(p).String()
}

func fmtBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), strings.ToUpper("kmgtpe")[exp])
}
