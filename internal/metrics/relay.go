// Package metrics holds mcptun's Prometheus metrics: what the request
// path counts (pre-resolved series, one map lookup per exchange) and
// collectors that read the counters the packages keep anyway, at scrape
// time. Every metric is registered on a registry of the caller's, never
// the global one.
package metrics

import (
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Relay counts the relay's exchanges. It implements relay.Observer.
type Relay struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	streams  *prometheus.GaugeVec

	// A map with a lock, not a sync.Map: a struct key put in an
	// interface would cost an allocation per exchange.
	mu      sync.RWMutex
	series  map[seriesKey]*series
	servers sync.Map // serverKey → *ServerFigures (looked up once per series)
	errors  Ring
}

type seriesKey struct {
	agent, server, method, reason string
	code                          int
	timed                         bool // has a duration: resolve the histogram
}

type serverKey struct{ agent, server string }

// series are the pre-resolved metrics of one label set.
type series struct {
	requests prometheus.Counter
	duration prometheus.Observer
	srv      *ServerFigures
}

// ServerFigures are what the status API shows of one agent/server.
type ServerFigures struct {
	Agent, Server    string
	Requests, Errors atomic.Uint64
	Streams          atomic.Int64
}

// NewRelay registers the relay's request metrics on reg.
func NewRelay(reg prometheus.Registerer) *Relay {
	m := &Relay{
		series: make(map[seriesKey]*series),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcptun_relay_requests_total",
			Help: "Client exchanges the relay answered, by agent, server, MCP method, HTTP status code and reason (the relay's own refusals and failures; empty for answers from the agent). Agent and server are empty when the client named ones the relay does not know.",
		}, []string{"agent", "server", "method", "code", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mcptun_relay_request_duration_seconds",
			Help:    "Time from a forwarded exchange's admission to the end of its answer (GET streams excluded), by agent, server and MCP method.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"agent", "server", "method"}),
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mcptun_relay_get_streams_open",
			Help: "GET streams (server-sent events from the agent) open now, by agent and server.",
		}, []string{"agent", "server"}),
	}
	reg.MustRegister(m.requests, m.duration, m.streams)
	return m
}

func (m *Relay) figures(agent, server string) *ServerFigures {
	k := serverKey{agent, server}
	if f, ok := m.servers.Load(k); ok {
		return f.(*ServerFigures)
	}
	f, _ := m.servers.LoadOrStore(k, &ServerFigures{Agent: agent, Server: server})
	return f.(*ServerFigures)
}

func (m *Relay) seriesFor(k seriesKey) *series {
	m.mu.RLock()
	s, ok := m.series[k]
	m.mu.RUnlock()
	if ok {
		return s
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if s, ok := m.series[k]; ok {
		return s
	}
	s = &series{
		requests: m.requests.WithLabelValues(k.agent, k.server, k.method, strconv.Itoa(k.code), k.reason),
		srv:      m.figures(k.agent, k.server),
	}
	if k.timed {
		// Only then: a refusal's label set gets no empty histogram.
		s.duration = m.duration.WithLabelValues(k.agent, k.server, k.method)
	}
	m.series[k] = s
	return s
}

// Exchange implements relay.Observer.
func (m *Relay) Exchange(agent, server, method string, status int, reason string, took time.Duration) {
	timed := took > 0 && method != "stream"
	s := m.seriesFor(seriesKey{agent: agent, server: server, method: method, reason: reason, code: status, timed: timed})
	s.requests.Inc()
	if agent != "" && server != "" {
		s.srv.Requests.Add(1)
	}
	if timed {
		s.duration.Observe(took.Seconds())
	}
	if status >= 400 || status == 0 {
		if agent != "" && server != "" {
			s.srv.Errors.Add(1)
		}
		m.errors.Add(Event{At: time.Now(), Agent: agent, Server: server, Status: status, Reason: reason})
	}
}

// StreamOpened implements relay.Observer.
func (m *Relay) StreamOpened(agent, server string) {
	m.streams.WithLabelValues(agent, server).Inc()
	m.figures(agent, server).Streams.Add(1)
}

// StreamClosed implements relay.Observer.
func (m *Relay) StreamClosed(agent, server string) {
	m.streams.WithLabelValues(agent, server).Dec()
	m.figures(agent, server).Streams.Add(-1)
}

// Servers lists the figures of every agent/server seen.
func (m *Relay) Servers() []*ServerFigures {
	var out []*ServerFigures
	m.servers.Range(func(_, v any) bool {
		f := v.(*ServerFigures)
		if f.Agent != "" && f.Server != "" {
			out = append(out, f)
		}
		return true
	})
	return out
}

// Errors lists the last failures, newest first.
func (m *Relay) Errors() []Event { return m.errors.List() }

// Event is one failure kept for the status API.
type Event struct {
	At            time.Time
	Agent, Server string
	Status        int
	Reason        string
	Message       string
}

// Ring keeps the last RingSize events.
type Ring struct {
	mu   sync.Mutex
	buf  [RingSize]Event
	n, i int
}

// RingSize is how many failures the status API shows.
const RingSize = 20

// Add keeps e, forgetting the oldest event if full.
func (r *Ring) Add(e Event) {
	r.mu.Lock()
	r.buf[r.i] = e
	r.i = (r.i + 1) % RingSize
	r.n = min(r.n+1, RingSize)
	r.mu.Unlock()
}

// List returns the events, newest first.
func (r *Ring) List() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Event, 0, r.n)
	for k := 1; k <= r.n; k++ {
		out = append(out, r.buf[(r.i-k+RingSize)%RingSize])
	}
	return out
}
