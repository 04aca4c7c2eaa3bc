package procs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Runtime is a Go process's own accounting, read through its opt-in
// net/http/pprof server (debug.pprof_listen).
type Runtime struct {
	HeapLive   int64 // HeapAlloc after a forced collection
	Stack      int64 // StackInuse
	Goroutines int
}

// ReadRuntime fetches the heap profile with gc=1 (a forced collection)
// and the goroutine count from the net/http/pprof server at base
// (http://ADDR).
func ReadRuntime(ctx context.Context, base string) (Runtime, error) {
	var m Runtime
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}, Timeout: 30 * time.Second}
	get := func(path string) ([]byte, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return nil, err
		}
		resp, err := hc.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET %s: HTTP %s", path, resp.Status)
		}
		return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	}
	b, err := get("/debug/pprof/heap?debug=1&gc=1")
	if err != nil {
		return m, err
	}
	if m.HeapLive, m.Stack, err = ParseHeapProfile(b); err != nil {
		return m, err
	}
	if b, err = get("/debug/pprof/goroutine?debug=1"); err != nil {
		return m, err
	}
	m.Goroutines, err = ParseGoroutineCount(b)
	return m, err
}

// ParseHeapProfile reads "# HeapAlloc = N" and "# Stack = INUSE / SYS"
// from the text form (debug=1) of a heap profile.
func ParseHeapProfile(b []byte) (heapAlloc, stackInuse int64, err error) {
	var haveHeap, haveStack bool
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "# HeapAlloc = "); ok {
			if heapAlloc, err = strconv.ParseInt(strings.TrimSpace(v), 10, 64); err != nil {
				return 0, 0, fmt.Errorf("heap profile: HeapAlloc %q: %w", v, err)
			}
			haveHeap = true
		}
		if v, ok := strings.CutPrefix(line, "# Stack = "); ok {
			inuse, _, _ := strings.Cut(v, " /")
			if stackInuse, err = strconv.ParseInt(strings.TrimSpace(inuse), 10, 64); err != nil {
				return 0, 0, fmt.Errorf("heap profile: Stack %q: %w", v, err)
			}
			haveStack = true
		}
	}
	if !haveHeap || !haveStack {
		return 0, 0, errors.New("heap profile: no \"# HeapAlloc\" or \"# Stack\" line (not debug=1 output?)")
	}
	return heapAlloc, stackInuse, nil
}

// ParseGoroutineCount reads "goroutine profile: total N".
func ParseGoroutineCount(b []byte) (int, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	v, ok := strings.CutPrefix(line, "goroutine profile: total ")
	if !ok {
		return 0, fmt.Errorf("goroutine profile: first line %.80q is not \"goroutine profile: total N\"", line)
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("goroutine profile: total %q: %w", v, err)
	}
	return n, nil
}
