package faults

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"
)

// WriteMarkdown writes the calls table and the resources table of rows,
// and returns how many rows failed.
func WriteMarkdown(w io.Writer, o Options, rows []Row) int {
	g, f, _ := o.margins()
	fmt.Fprintf(w, "Fault suite: %d round(s) per fault, %d session(s) per agent×server (agents over QUIC and TCP; "+
		"servers stdio and HTTP), record_nonce calls waiting %d ms, %s of load before each fault and %s after recovery, "+
		"SIGSTOP held (and a killed agent kept down) %s; an attempt without an answer in %s is lost. "+
		"\"routed again after\" runs from the fault's signal (for a freeze: SIGSTOP) until the relay routes to every agent affected.\n\n",
		o.Rounds, o.Workers, o.CallMS, o.Pre, o.Post, o.Hold, o.CallDeadline)
	fmt.Fprintln(w, "| fault | round | calls | ok | errors (after retries) | outcome unknown | lost | executed twice | slowest call | routed again after | result |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|")
	failed := 0
	for _, r := range rows {
		res := "ok"
		if why := r.Failed(); why != "" {
			res = "**FAIL**: " + why
			failed++
		}
		errs := countList(r.Errors)
		if r.RanAfter > 0 {
			errs += fmt.Sprintf(" (%d of them had run)", r.RanAfter)
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %s | %s | %d | %d | %s | %s | %s |\n",
			r.Fault, r.Round, r.Calls, r.OK, errs, countList(r.Unknown), r.Lost, r.Twice,
			r.Slowest.Round(10*time.Millisecond), r.Recovered.Round(10*time.Millisecond), cell(res))
	}
	fmt.Fprintf(w, "\nResources at rest (load stopped, sessions deleted) before → after each fault; returned means "+
		"within goroutines +%d, descriptors +%d, RSS +max(16 MiB, 25%%), children +0, no stdio child outliving its agent "+
		"(see Options.margins):\n\n", g, f)
	fmt.Fprintln(w, "| fault | round | process | RSS MiB | goroutines | descriptors | children | returned |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|")
	for _, r := range rows {
		for _, res := range r.Resources {
			ok := "yes"
			if why := res.Failed(); why != "" {
				ok = "**NO**: " + why
			}
			kids := "–"
			if res.Process != "relay" {
				kids = fmt.Sprintf("%d → %d", res.ChildrenBefore, res.ChildrenAfter)
			}
			fmt.Fprintf(w, "| %s | %d | %s | %.1f → %.1f | %d → %d | %d → %d | %s | %s |\n",
				r.Fault, r.Round, res.Process, float64(res.RSSBefore)/(1<<20), float64(res.RSSAfter)/(1<<20),
				res.GoroutinesBefore, res.GoroutinesAfter, res.FDsBefore, res.FDsAfter, kids, cell(ok))
		}
	}
	header := false
	for _, r := range rows {
		if len(r.Suspects) == 0 {
			continue
		}
		if !header {
			fmt.Fprintln(w, "\nCalls behind the failures (nonce, executions in the servers' log, answers in order; at most 3 a round):")
			fmt.Fprintln(w)
			header = true
		}
		const maxShown = 3
		for i, s := range r.Suspects {
			if i == maxShown {
				fmt.Fprintf(w, "- %s, round %d: … and %d more\n", r.Fault, r.Round, len(r.Suspects)-maxShown)
				break
			}
			fmt.Fprintf(w, "- %s, round %d: %s\n", r.Fault, r.Round, s)
		}
	}
	fmt.Fprintf(w, "\n%d of %d fault rounds failed.\n", failed, len(rows))
	return failed
}

// countList renders label → count as "label ×n, ..." by count, then label.
func countList(m map[string]int) string {
	if len(m) == 0 {
		return "–"
	}
	keys := slices.SortedFunc(maps.Keys(m), func(a, b string) int {
		return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b))
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s ×%d", k, m[k])
	}
	return cell(strings.Join(parts, ", "))
}

// cell keeps a table cell on one line and its pipes escaped.
func cell(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	return strings.ReplaceAll(s, "|", `\|`)
}
