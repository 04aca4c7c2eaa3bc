package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Sample is one value of a gauge or counter read at scrape time.
type Sample struct {
	Value  float64
	Labels []string
}

// Func is a metric whose samples a function reads at scrape time, from
// counters a package keeps anyway: nothing is added to the request path.
type Func struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
	read func() []Sample
}

// NewFunc describes a metric read by read; kind is prometheus.GaugeValue
// or prometheus.CounterValue.
func NewFunc(name, help string, kind prometheus.ValueType, labels []string, read func() []Sample) *Func {
	return &Func{desc: prometheus.NewDesc(name, help, labels, nil), kind: kind, read: read}
}

// Describe implements prometheus.Collector.
func (f *Func) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }

// Collect implements prometheus.Collector.
func (f *Func) Collect(ch chan<- prometheus.Metric) {
	for _, s := range f.read() {
		ch <- prometheus.MustNewConstMetric(f.desc, f.kind, s.Value, s.Labels...)
	}
}

// One is a read function for a metric without labels.
func One(v func() float64) func() []Sample {
	return func() []Sample { return []Sample{{Value: v()}} }
}
