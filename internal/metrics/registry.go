// Package metrics is fleetflow's small, dependency-free Prometheus instrumentation: a registry of counters,
// gauges and histograms with labels, the text exposition format (version 0.0.4) behind an http.Handler, and
// adapters that feed it from the libraries fleetflow runs on — a Temporal SDK MetricsHandler and a pgx query
// tracer — plus the process basics every scrape target is expected to have.
//
// It exists instead of prometheus/client_golang (or tally) for two reasons. The module stays small: a handful
// of metric types and one text format is all fleetflow exports. And the Temporal SDK emits one metric name with
// different tag sets (temporal_request with and without workflow_type, for example), which the text format
// allows but client_golang's registry refuses; here a family created for the SDK accepts any label set.
//
// Metric and label names are validated when a family is created; an invalid name or a name reused with
// another type is a programming error and panics, like client_golang's MustRegister. Series are created on
// first use and live as long as the registry: label values must come from small sets (operation names, task
// queues), never from device IDs.
package metrics

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// kind is the Prometheus type of a family.
type kind uint8

const (
	kindCounter kind = iota
	kindGauge
	kindHistogram
)

func (k kind) String() string {
	switch k {
	case kindCounter:
		return "counter"
	case kindGauge:
		return "gauge"
	default:
		return "histogram"
	}
}

// Registry holds metric families and renders them in the text exposition format. It is safe for concurrent
// use; the zero value is not usable, call NewRegistry.
type Registry struct {
	mu       sync.RWMutex
	families map[string]*family
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{families: make(map[string]*family)}
}

// family is all series of one metric name.
type family struct {
	name, help string
	kind       kind
	// labelNames are the label names of a static family in the order With takes their values, and order
	// maps that order to the names' sorted order. Dynamic families (the Temporal adapter's) have neither
	// and accept any label set.
	labelNames []string
	order      []int
	dynamic    bool
	buckets    []float64 // histogram upper bounds, ascending, without +Inf

	mu     sync.RWMutex
	series map[string]*series
}

// series is one labelled time series; metric is a *Counter, *Gauge, *Histogram or valueFunc.
type series struct {
	labels []labelPair // sorted by name
	metric any
}

// labelPair is one label of a series.
type labelPair struct{ name, value string }

// valueFunc is a counter or gauge series whose value is computed at scrape time.
type valueFunc func() float64

// family returns the family called name, creating it on first use. A second registration of the same name
// must agree on type, labels and buckets; the first help text wins.
func (r *Registry) family(name, help string, k kind, buckets []float64, labelNames []string, dynamic bool) (*family, error) {
	r.mu.RLock()
	f, ok := r.families[name]
	r.mu.RUnlock()
	if !ok {
		if !validMetricName(name) {
			return nil, fmt.Errorf("metrics: invalid metric name %q", name)
		}
		nf := &family{name: name, help: help, kind: k, dynamic: dynamic, series: make(map[string]*series)}
		if !dynamic {
			seen := make(map[string]bool, len(labelNames))
			for _, l := range labelNames {
				if !validLabelName(l) || (k == kindHistogram && l == "le") || seen[l] {
					return nil, fmt.Errorf("metrics: %s: invalid or repeated label name %q", name, l)
				}
				seen[l] = true
			}
			nf.labelNames = slices.Clone(labelNames)
			nf.order = make([]int, len(labelNames))
			for i := range nf.order {
				nf.order[i] = i
			}
			slices.SortFunc(nf.order, func(a, b int) int { return strings.Compare(labelNames[a], labelNames[b]) })
		}
		if k == kindHistogram {
			b, err := checkBuckets(buckets)
			if err != nil {
				return nil, fmt.Errorf("metrics: %s: %w", name, err)
			}
			nf.buckets = b
		}
		r.mu.Lock()
		f, ok = r.families[name]
		if !ok {
			r.families[name], f = nf, nf
		}
		r.mu.Unlock()
		if !ok {
			return f, nil
		}
	}
	// An existing family: it must be the same metric.
	switch {
	case f.kind != k:
		return nil, fmt.Errorf("metrics: %s is already registered as a %s, not a %s", name, f.kind, k)
	case f.dynamic != dynamic:
		return nil, fmt.Errorf("metrics: %s is already registered with fixed labels and cannot take the Temporal SDK's, or the reverse", name)
	case !dynamic && !slices.Equal(f.labelNames, labelNames):
		return nil, fmt.Errorf("metrics: %s is already registered with labels %v", name, f.labelNames)
	case k == kindHistogram && !dynamic && !equalBuckets(f.buckets, buckets):
		return nil, fmt.Errorf("metrics: %s is already registered with buckets %v", name, f.buckets)
	}
	return f, nil
}

// mustFamily is family for static registrations, where an error is a programming error.
func (r *Registry) mustFamily(name, help string, k kind, buckets []float64, labelNames []string) *family {
	f, err := r.family(name, help, k, buckets, labelNames, false)
	if err != nil {
		panic(err)
	}
	return f
}

// staticLabels pairs a static family's label names with values and sorts them; the key identifies the series.
func (f *family) staticLabels(values []string) ([]labelPair, string) {
	if len(values) != len(f.labelNames) {
		panic(fmt.Sprintf("metrics: %s takes %d label values (%v), got %d", f.name, len(f.labelNames), f.labelNames, len(values)))
	}
	pairs := make([]labelPair, len(values))
	for i, j := range f.order {
		pairs[i] = labelPair{f.labelNames[j], values[j]}
	}
	return pairs, seriesKey(pairs)
}

// seriesKey encodes sorted label pairs as a map key. The separators cannot occur in label names, and a value
// cannot make two different label sets collide because every value is followed by a byte names never hold.
func seriesKey(pairs []labelPair) string {
	var b strings.Builder
	for _, p := range pairs {
		b.WriteString(p.name)
		b.WriteByte(0)
		b.WriteString(p.value)
		b.WriteByte(0xff)
	}
	return b.String()
}

// get returns the series with these labels, creating it with newMetric on first use.
func (f *family) get(pairs []labelPair, key string, newMetric func() any) *series {
	f.mu.RLock()
	s, ok := f.series[key]
	f.mu.RUnlock()
	if ok {
		return s
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s, ok = f.series[key]; !ok {
		s = &series{labels: pairs, metric: newMetric()}
		f.series[key] = s
	}
	return s
}

// setFunc installs fn as the series with these labels; a later call replaces the function, so a component
// restarted within one process reports its new instance.
func (f *family) setFunc(pairs []labelPair, key string, fn func() float64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.series[key] = &series{labels: pairs, metric: valueFunc(fn)}
}

// Counter is a monotonically increasing value.
type Counter struct{ bits atomic.Uint64 }

// Inc adds one.
func (c *Counter) Inc() { c.Add(1) }

// Add adds v. Negative and NaN values are ignored: a counter that went down would read as a restart of the
// process to Prometheus' rate().
func (c *Counter) Add(v float64) {
	if !(v > 0) {
		return
	}
	addFloat(&c.bits, v)
}

// Value is the current value.
func (c *Counter) Value() float64 { return math.Float64frombits(c.bits.Load()) }

// Gauge is a value that goes up and down.
type Gauge struct{ bits atomic.Uint64 }

// Set sets the value.
func (g *Gauge) Set(v float64) { g.bits.Store(math.Float64bits(v)) }

// Add adds v (which may be negative).
func (g *Gauge) Add(v float64) { addFloat(&g.bits, v) }

// Value is the current value.
func (g *Gauge) Value() float64 { return math.Float64frombits(g.bits.Load()) }

func addFloat(bits *atomic.Uint64, v float64) {
	for {
		old := bits.Load()
		if bits.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Histogram counts observations in buckets. A mutex rather than atomics guards it so that a scrape always
// sees the +Inf bucket equal to the count and the sum of the same observations.
type Histogram struct {
	upper []float64 // shared with the family; never written

	mu     sync.Mutex
	counts []uint64 // per bucket, not cumulative; the last is the +Inf bucket
	sum    float64
}

func newHistogram(upper []float64) *Histogram {
	return &Histogram{upper: upper, counts: make([]uint64, len(upper)+1)}
}

// Observe records v. NaN is ignored.
func (h *Histogram) Observe(v float64) {
	if math.IsNaN(v) {
		return
	}
	// Buckets are upper-inclusive (le); the first bound >= v is v's bucket.
	i, _ := slices.BinarySearch(h.upper, v)
	h.mu.Lock()
	h.counts[i]++
	h.sum += v
	h.mu.Unlock()
}

// ObserveDuration records d in seconds, the unit of every fleetflow latency histogram.
func (h *Histogram) ObserveDuration(d time.Duration) { h.Observe(d.Seconds()) }

// snapshot returns the cumulative bucket counts (the last being +Inf, which equals the count) and the sum.
func (h *Histogram) snapshot() ([]uint64, float64) {
	cum := make([]uint64, len(h.counts))
	h.mu.Lock()
	var n uint64
	for i, c := range h.counts {
		n += c
		cum[i] = n
	}
	sum := h.sum
	h.mu.Unlock()
	return cum, sum
}

// Count is the number of observations.
func (h *Histogram) Count() uint64 {
	cum, _ := h.snapshot()
	return cum[len(cum)-1]
}

// Sum is the sum of the observations.
func (h *Histogram) Sum() float64 {
	_, sum := h.snapshot()
	return sum
}

// Bucket layouts. Latencies are in seconds.
var (
	// LatencyBuckets suit database and broker round trips: 0.5 ms to 10 s.
	LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// TemporalBuckets add the minutes and hours that activities and workflows take to LatencyBuckets' range.
	TemporalBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400}
	// SizeBuckets suit batch sizes, up to the 5,000 devices of the largest activity batches.
	SizeBuckets = []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000}
)

// checkBuckets validates histogram bounds and drops a trailing +Inf, which is always implied.
func checkBuckets(b []float64) ([]float64, error) {
	if len(b) > 0 && math.IsInf(b[len(b)-1], +1) {
		b = b[:len(b)-1]
	}
	for i, v := range b {
		if math.IsNaN(v) || math.IsInf(v, 0) || (i > 0 && v <= b[i-1]) {
			return nil, fmt.Errorf("buckets %v are not strictly increasing finite numbers", b)
		}
	}
	return slices.Clone(b), nil
}

func equalBuckets(have, want []float64) bool {
	w, err := checkBuckets(want)
	return err == nil && slices.Equal(have, w)
}

// Counter registers (or returns the already registered) counter without labels.
func (r *Registry) Counter(name, help string) *Counter { return r.CounterVec(name, help).With() }

// Gauge registers (or returns the already registered) gauge without labels.
func (r *Registry) Gauge(name, help string) *Gauge { return r.GaugeVec(name, help).With() }

// Histogram registers (or returns the already registered) histogram without labels.
func (r *Registry) Histogram(name, help string, buckets []float64) *Histogram {
	return r.HistogramVec(name, help, buckets).With()
}

// CounterFunc registers a counter whose value fn computes at each scrape, for counts another component
// already keeps (the gateway's atomics, pgx's pool statistics). fn must be monotonic and safe for concurrent
// use.
func (r *Registry) CounterFunc(name, help string, fn func() float64) {
	r.CounterVec(name, help).Func(fn)
}

// GaugeFunc registers a gauge whose value fn computes at each scrape. fn must be safe for concurrent use.
func (r *Registry) GaugeFunc(name, help string, fn func() float64) {
	r.GaugeVec(name, help).Func(fn)
}

// CounterVec is a counter family with fixed label names.
type CounterVec struct{ f *family }

// CounterVec registers (or returns the already registered) counter family with these label names.
func (r *Registry) CounterVec(name, help string, labelNames ...string) *CounterVec {
	return &CounterVec{r.mustFamily(name, help, kindCounter, nil, labelNames)}
}

// With returns the counter for these label values, in the order of the family's label names. Callers on hot
// paths should keep the result rather than call With each time.
func (v *CounterVec) With(values ...string) *Counter {
	pairs, key := v.f.staticLabels(values)
	s := v.f.get(pairs, key, func() any { return new(Counter) })
	c, ok := s.metric.(*Counter)
	if !ok {
		panic(fmt.Sprintf("metrics: %s%v is computed by a function", v.f.name, values))
	}
	return c
}

// Func makes the series with these label values report fn's value at each scrape (see CounterFunc).
func (v *CounterVec) Func(fn func() float64, values ...string) {
	pairs, key := v.f.staticLabels(values)
	v.f.setFunc(pairs, key, fn)
}

// GaugeVec is a gauge family with fixed label names.
type GaugeVec struct{ f *family }

// GaugeVec registers (or returns the already registered) gauge family with these label names.
func (r *Registry) GaugeVec(name, help string, labelNames ...string) *GaugeVec {
	return &GaugeVec{r.mustFamily(name, help, kindGauge, nil, labelNames)}
}

// With returns the gauge for these label values, in the order of the family's label names.
func (v *GaugeVec) With(values ...string) *Gauge {
	pairs, key := v.f.staticLabels(values)
	s := v.f.get(pairs, key, func() any { return new(Gauge) })
	g, ok := s.metric.(*Gauge)
	if !ok {
		panic(fmt.Sprintf("metrics: %s%v is computed by a function", v.f.name, values))
	}
	return g
}

// Func makes the series with these label values report fn's value at each scrape (see GaugeFunc).
func (v *GaugeVec) Func(fn func() float64, values ...string) {
	pairs, key := v.f.staticLabels(values)
	v.f.setFunc(pairs, key, fn)
}

// HistogramVec is a histogram family with fixed label names and buckets.
type HistogramVec struct{ f *family }

// HistogramVec registers (or returns the already registered) histogram family with these buckets (upper
// bounds, strictly increasing; +Inf is implied) and label names.
func (r *Registry) HistogramVec(name, help string, buckets []float64, labelNames ...string) *HistogramVec {
	return &HistogramVec{r.mustFamily(name, help, kindHistogram, buckets, labelNames)}
}

// With returns the histogram for these label values, in the order of the family's label names.
func (v *HistogramVec) With(values ...string) *Histogram {
	pairs, key := v.f.staticLabels(values)
	return v.f.get(pairs, key, func() any { return newHistogram(v.f.buckets) }).metric.(*Histogram)
}
