// Package loadgen drives a closed-loop load against a Streamable HTTP MCP
// endpoint and reports throughput and latency.
//
// Each simulated client ("session") is one goroutine that repeats one
// tools/call as fast as the endpoint answers: it sends the next request only
// when the previous answer has been read in full, so the offered load adapts
// to the system under test and the figures are never inflated by a queue
// inside the generator.
//
// Two protocol eras are spoken:
//
//   - 2025-11-25 and earlier (the default): a session first POSTs initialize,
//     keeps the Mcp-Session-Id and negotiated MCP-Protocol-Version the server
//     returns, POSTs notifications/initialized, then loops tools/call. A 404
//     on a session means the server forgot it; the session re-initializes, as
//     a real client would. Sessions are ended with DELETE when the run stops.
//   - 2026-07-28 (stateless): there is no initialize and no session. Each
//     session starts with server/discover, which must list 2026-07-28, and
//     every request carries Mcp-Method, Mcp-Name (tools/call) and the protocol
//     version both in the MCP-Protocol-Version header and in params._meta.
//
// A POST may be answered with application/json or with a text/event-stream;
// on a stream the generator reads events until the one carrying the response
// to its request ID, skipping notifications and server requests before it.
//
// The generator shares its machine with the system under test, so the hot
// path avoids work: request bodies are pre-encoded around an incrementing ID,
// buffers and header maps are reused per session, answers are decoded only
// far enough to find the ID, a JSON-RPC error and the tool's isError flag,
// and latencies go into a fixed-size log-linear histogram shared by all
// sessions (1/128 relative precision, constant memory).
package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Protocol eras understood by Run. Any earlier session-era version
// (2025-06-18, 2025-03-26) is accepted too and requested in initialize.
const (
	EraSessions  = "2025-11-25"
	EraStateless = "2026-07-28"
)

// Defaults applied by Run to a zero Config field.
const (
	DefaultTool       = "echo"
	DefaultPayloadArg = "message"
	DefaultDuration   = 10 * time.Second
	DefaultTimeout    = 30 * time.Second
)

// maxErrorSamples bounds how many distinct error messages a Result keeps.
const maxErrorSamples = 5

// Config describes one load run. Only URL is required.
type Config struct {
	// URL is the MCP endpoint, for example http://127.0.0.1:8080/mcp.
	URL string
	// Token, if set, is sent as "Authorization: Bearer <Token>"; it overrides
	// an Authorization entry in Headers.
	Token string
	// Headers are added to every request.
	Headers map[string]string

	// Sessions is the number of concurrent closed-loop clients (default 1).
	Sessions int
	// Duration is how long the measured phase lasts (default 10s when
	// Requests is 0). With Requests set, a non-zero Duration is an upper
	// bound.
	Duration time.Duration
	// Warmup runs the load this long before measuring; warm-up requests are
	// left out of every figure.
	Warmup time.Duration
	// Requests, if > 0, stops the run after exactly this many measured
	// requests (errors included).
	Requests int
	// Rate, if > 0, paces the load: tools/call requests are due at this
	// many per second across all sessions, on a fixed schedule (request n
	// is due n/Rate after the start), instead of each session sending its
	// next one as soon as the last is answered. A free session takes the
	// next due request and sends it at its time, or at once if that time
	// has passed. Latency counts from when a request was due, so a
	// request that waited for a busy session shows the wait (no
	// coordinated omission); give it more sessions than Rate × latency to
	// hold the rate. Comparing paths at one rate compares their CPU per request
	// under equal load, which a closed loop does not: a slower path there
	// also runs at a lower rate, with less batching per wake-up.
	Rate float64
	// Timeout bounds each request (default 30s).
	Timeout time.Duration

	// Tool is the tool to call (default "echo").
	Tool string
	// Arguments are the tool arguments, a JSON object. Mutually exclusive
	// with PayloadBytes.
	Arguments json.RawMessage
	// PayloadBytes, if > 0, makes the arguments {PayloadArg: "<n bytes>"}.
	PayloadBytes int
	// PayloadArg names the argument that carries the payload (default
	// "message").
	PayloadArg string

	// Era is the protocol version to speak: EraSessions (default) or
	// EraStateless.
	Era string

	// BeforeEnd, if set, is called once the measured phase is over and
	// before the sessions are ended (DELETE). A harness that samples the
	// server's processes uses it to take its last sample while they all
	// still live: a stdio bridge's children exit with their sessions.
	BeforeEnd func()

	// Progress, if set, receives one line per second with the figures so far.
	Progress io.Writer
	// HTTPClient, if set, sends every request; otherwise Run builds a client
	// whose transport keeps one idle connection per session and never
	// follows redirects (a redirect is reported as an error).
	HTTPClient *http.Client

	progressEvery time.Duration // tests shorten the 1s progress interval
}

// Result holds the figures of the measured phase. Requests and RPS count
// failed requests too; latency figures cover successful requests only, so a
// fast stream of rejections does not flatter them. Byte counts are HTTP
// bodies, headers excluded.
type Result struct {
	URL      string `json:"url"`
	Era      string `json:"era"`
	Tool     string `json:"tool"`
	Sessions int    `json:"sessions"`

	Requests int64 `json:"requests"`
	Errors   int64 `json:"errors"`
	// WarmupRequests counts the requests left out as warm-up.
	WarmupRequests int64         `json:"warmup_requests"`
	Duration       time.Duration `json:"duration_ns"`
	RPS            float64       `json:"rps"`
	// OfferedRPS is Config.Rate: what the paced load asked for (0: closed
	// loop). RPS below it means the sessions could not keep up.
	OfferedRPS float64 `json:"offered_rps,omitempty"`

	Mean time.Duration `json:"mean_ns"`
	Min  time.Duration `json:"min_ns"`
	P50  time.Duration `json:"p50_ns"`
	P90  time.Duration `json:"p90_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`

	BytesSent     int64 `json:"bytes_sent"`
	BytesReceived int64 `json:"bytes_received"`

	// ErrorSamples holds the first few distinct error messages.
	ErrorSamples []string `json:"error_samples,omitempty"`
}

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("loadgen: invalid %s: %s", e.Field, e.Reason)
}

// Run performs the load described by cfg and returns its figures.
//
// A session that cannot start (bad URL, connection refused, 401, a server
// that does not speak MCP, ...) makes Run fail with an error naming the step
// and the HTTP status, for example
// "initialize: HTTP 401 Unauthorized: <body snippet>"; failures during the
// measured phase are counted in Result.Errors instead. If ctx ends during the
// run, Run returns the figures gathered so far together with ctx's error.
func Run(ctx context.Context, cfg Config) (Result, error) {
	p, err := newPlan(cfg)
	if err != nil {
		return Result{}, err
	}
	r := &runner{plan: p, hist: newHistogram()}
	if cfg.HTTPClient != nil {
		r.roundTrip = cfg.HTTPClient.Do
	} else {
		// The transport directly: http.Client would clone the headers of
		// every request in case of a redirect, which we do not follow.
		tr := newTransport(p.cfg.Sessions)
		defer tr.CloseIdleConnections()
		r.roundTrip = tr.RoundTrip
	}
	return r.run(ctx)
}

// newTransport returns a transport tuned for a closed loop of n clients: one
// kept-alive connection per client, no compression (it would cost CPU on
// both sides and hide the real byte counts).
func newTransport(n int) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = n + 16
	tr.MaxIdleConnsPerHost = n + 16
	tr.IdleConnTimeout = 90 * time.Second
	tr.DisableCompression = true
	return tr
}

// plan is a validated Config with the defaults applied and the request
// bodies pre-encoded.
type plan struct {
	cfg       Config
	url       *url.URL
	stateless bool
	version   string

	// callPrefix + id + callSuffix is a complete tools/call body.
	callSuffix []byte
	baseHeader http.Header
}

var callPrefix = []byte(`{"jsonrpc":"2.0","id":`)

func newPlan(cfg Config) (*plan, error) {
	if cfg.URL == "" {
		return nil, &ConfigError{"URL", "empty"}
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, &ConfigError{"URL", err.Error()}
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, &ConfigError{"URL", fmt.Sprintf("%q: scheme must be http or https", cfg.URL)}
	}
	if u.Host == "" {
		return nil, &ConfigError{"URL", fmt.Sprintf("%q: no host", cfg.URL)}
	}
	switch {
	case cfg.Sessions < 0:
		return nil, &ConfigError{"Sessions", fmt.Sprintf("%d is negative", cfg.Sessions)}
	case cfg.Duration < 0:
		return nil, &ConfigError{"Duration", fmt.Sprintf("%v is negative", cfg.Duration)}
	case cfg.Warmup < 0:
		return nil, &ConfigError{"Warmup", fmt.Sprintf("%v is negative", cfg.Warmup)}
	case cfg.Requests < 0:
		return nil, &ConfigError{"Requests", fmt.Sprintf("%d is negative", cfg.Requests)}
	case cfg.Rate < 0 || math.IsNaN(cfg.Rate) || math.IsInf(cfg.Rate, 0):
		return nil, &ConfigError{"Rate", fmt.Sprintf("%v: want requests per second, > 0 (or 0: as fast as answers come)", cfg.Rate)}
	case cfg.Timeout < 0:
		return nil, &ConfigError{"Timeout", fmt.Sprintf("%v is negative", cfg.Timeout)}
	case cfg.PayloadBytes < 0:
		return nil, &ConfigError{"PayloadBytes", fmt.Sprintf("%d is negative", cfg.PayloadBytes)}
	case cfg.PayloadBytes > 0 && len(cfg.Arguments) > 0:
		return nil, &ConfigError{"Arguments", "set together with PayloadBytes; use one"}
	}
	if cfg.Sessions == 0 {
		cfg.Sessions = 1
	}
	if cfg.Duration == 0 && cfg.Requests == 0 {
		cfg.Duration = DefaultDuration
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Tool == "" {
		cfg.Tool = DefaultTool
	}
	if cfg.PayloadArg == "" {
		cfg.PayloadArg = DefaultPayloadArg
	}
	p := &plan{url: u}
	switch cfg.Era {
	case "":
		cfg.Era = EraSessions
	case EraStateless:
		p.stateless = true
	case EraSessions, "2025-06-18", "2025-03-26":
	default:
		return nil, &ConfigError{"Era", fmt.Sprintf("%q is not %s (sessions) or %s (stateless)", cfg.Era, EraSessions, EraStateless)}
	}
	p.version = cfg.Era

	args := []byte("{}")
	switch {
	case len(cfg.Arguments) > 0:
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(cfg.Arguments, &obj); err != nil || obj == nil {
			return nil, &ConfigError{"Arguments", fmt.Sprintf("not a JSON object: %s", snippet(cfg.Arguments))}
		}
		args = compactJSON(cfg.Arguments)
	case cfg.PayloadBytes > 0:
		args, _ = json.Marshal(map[string]string{cfg.PayloadArg: strings.Repeat("x", cfg.PayloadBytes)})
	}

	h := make(http.Header, len(cfg.Headers)+4)
	for k, v := range cfg.Headers {
		if !validHeaderName(k) {
			return nil, &ConfigError{"Headers", fmt.Sprintf("%q is not a valid header name", k)}
		}
		if !validHeaderValue(v) {
			return nil, &ConfigError{"Headers", fmt.Sprintf("value of %q contains a control character", k)}
		}
		h.Set(k, v)
	}
	if cfg.Token != "" {
		if !validHeaderValue(cfg.Token) {
			return nil, &ConfigError{"Token", "contains a control character"}
		}
		h.Set("Authorization", "Bearer "+cfg.Token)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json, text/event-stream")
	if h.Get("User-Agent") == "" {
		h.Set("User-Agent", "mcptun-bench")
	}
	p.baseHeader = h

	tool, _ := json.Marshal(cfg.Tool)
	suffix := []byte(`,"method":"tools/call","params":{"name":`)
	suffix = append(suffix, tool...)
	suffix = append(suffix, `,"arguments":`...)
	suffix = append(suffix, args...)
	if p.stateless {
		suffix = append(suffix, `,"_meta":`...)
		suffix = append(suffix, statelessMeta...)
	}
	suffix = append(suffix, "}}"...)
	p.callSuffix = suffix
	p.cfg = cfg
	return p, nil
}

// statelessMeta is the _meta a 2026-07-28 request carries in place of the
// initialize handshake.
var statelessMeta = []byte(`{"io.modelcontextprotocol/protocolVersion":"` + EraStateless +
	`","io.modelcontextprotocol/clientInfo":{"name":"mcptun-bench","version":"1"}` +
	`,"io.modelcontextprotocol/clientCapabilities":{}}`)

// runner holds the state of one Run shared by its sessions.
type runner struct {
	*plan
	roundTrip func(*http.Request) (*http.Response, error)
	hist      *histogram

	// Set before start is closed, read-only afterwards.
	measureStart time.Time
	deadline     time.Time // zero: none

	pacer *pacer // nil: closed loop

	tickets  atomic.Int64
	requests atomic.Int64
	warmups  atomic.Int64
	errs     atomic.Int64
	sent     atomic.Int64
	received atomic.Int64

	mu      sync.Mutex
	samples []string
}

func (r *runner) run(parent context.Context) (Result, error) {
	ctx, cancel := context.WithCancel(parent)
	defer cancel()

	n := r.cfg.Sessions
	start := make(chan struct{})   // closed when every session is ready
	release := make(chan struct{}) // closed when sessions may end
	ready := make(chan error, n)
	var loops, all sync.WaitGroup
	loops.Add(n)
	all.Add(n)
	for i := 0; i < n; i++ {
		s := newSession(r)
		go func() {
			defer all.Done()
			defer s.end(parent, release)
			err := s.setup(ctx)
			ready <- err
			if err == nil {
				select {
				case <-start:
					s.loop(ctx)
				case <-ctx.Done():
				}
			}
			loops.Done()
		}()
	}

	var setupErr error
	for i := 0; i < n; i++ {
		if err := <-ready; err != nil && setupErr == nil {
			setupErr = err
			cancel()
		}
	}
	if setupErr != nil {
		loops.Wait()
		close(release)
		all.Wait()
		if parent.Err() != nil {
			return Result{}, fmt.Errorf("loadgen: %w", parent.Err())
		}
		return Result{}, setupErr
	}

	now := time.Now()
	if r.cfg.Rate > 0 {
		r.pacer = &pacer{start: now, rate: r.cfg.Rate}
	}
	r.measureStart = now.Add(r.cfg.Warmup)
	if r.cfg.Duration > 0 {
		r.deadline = r.measureStart.Add(r.cfg.Duration)
	}
	close(start)

	progressDone := make(chan struct{})
	stopProgress := make(chan struct{})
	if r.cfg.Progress != nil {
		go func() {
			defer close(progressDone)
			r.progress(stopProgress)
		}()
	} else {
		close(progressDone)
	}

	loops.Wait()
	elapsed := time.Since(r.measureStart)
	close(stopProgress)
	<-progressDone
	if r.cfg.BeforeEnd != nil {
		r.cfg.BeforeEnd()
	}
	close(release)
	all.Wait()

	res := r.result(max(elapsed, 0))
	if err := parent.Err(); err != nil {
		return res, fmt.Errorf("loadgen: %w", err)
	}
	return res, nil
}

// pacer hands out the due times of a paced load.
type pacer struct {
	start time.Time
	rate  float64 // requests per second
	next  atomic.Int64
}

// due returns when the next request is due: n/rate after the start for
// the nth. The schedule never slips, so a load that falls behind shows it
// in latency, as real arrivals would.
func (p *pacer) due() time.Time {
	n := p.next.Add(1) - 1
	return p.start.Add(time.Duration(float64(n) / p.rate * float64(time.Second)))
}

// measuring reports whether a request starting now counts, and whether the
// session must stop instead of sending it.
func (r *runner) measuring(now time.Time) (measured, stop bool) {
	if now.Before(r.measureStart) {
		return false, false
	}
	if !r.deadline.IsZero() && !now.Before(r.deadline) {
		return true, true
	}
	if r.cfg.Requests > 0 && r.tickets.Add(1) > int64(r.cfg.Requests) {
		return true, true
	}
	return true, false
}

func (r *runner) record(lat time.Duration, sent, received int, err error) {
	r.requests.Add(1)
	r.sent.Add(int64(sent))
	r.received.Add(int64(received))
	if err == nil {
		r.hist.record(lat)
		return
	}
	r.errs.Add(1)
	r.sample(err)
}

func (r *runner) sample(err error) {
	msg := err.Error()
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.samples) >= maxErrorSamples {
		return
	}
	for _, s := range r.samples {
		if s == msg {
			return
		}
	}
	r.samples = append(r.samples, msg)
}

func (r *runner) result(elapsed time.Duration) Result {
	res := Result{
		URL:            r.cfg.URL,
		Era:            r.cfg.Era,
		Tool:           r.cfg.Tool,
		Sessions:       r.cfg.Sessions,
		Requests:       r.requests.Load(),
		Errors:         r.errs.Load(),
		WarmupRequests: r.warmups.Load(),
		Duration:       elapsed,
		BytesSent:      r.sent.Load(),
		BytesReceived:  r.received.Load(),
		OfferedRPS:     r.cfg.Rate,
	}
	if elapsed > 0 {
		res.RPS = float64(res.Requests) / elapsed.Seconds()
	}
	st := r.hist.stats()
	res.Mean, res.Min, res.Max = st.mean, st.min, st.max
	res.P50, res.P90, res.P99 = st.quantile(0.50), st.quantile(0.90), st.quantile(0.99)
	r.mu.Lock()
	res.ErrorSamples = append([]string(nil), r.samples...)
	r.mu.Unlock()
	return res
}

// progress writes one line per second until stop is closed.
func (r *runner) progress(stop <-chan struct{}) {
	every := r.cfg.progressEvery
	if every <= 0 {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var last int64
	lastAt := time.Now()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if now.Before(r.measureStart) {
				fmt.Fprintf(r.cfg.Progress, "warming up, %s left\n", r.measureStart.Sub(now).Round(time.Second))
				lastAt = now
				continue
			}
			if lastAt.Before(r.measureStart) {
				lastAt = r.measureStart
			}
			n := r.requests.Load()
			el := now.Sub(r.measureStart)
			var avg, cur float64
			if el > 0 {
				avg = float64(n) / el.Seconds()
			}
			if d := now.Sub(lastAt); d > 0 {
				cur = float64(n-last) / d.Seconds()
			}
			last, lastAt = n, now
			fmt.Fprintf(r.cfg.Progress, "%s: %d requests, %.0f req/s (now %.0f), %d errors\n",
				el.Round(time.Second), n, avg, cur, r.errs.Load())
		}
	}
}

// compactJSON returns b without insignificant space; b must be valid JSON.
func compactJSON(b []byte) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return b
	}
	return buf.Bytes()
}
