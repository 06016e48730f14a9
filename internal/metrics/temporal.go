package metrics

import (
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"go.temporal.io/sdk/client"
)

// temporalHelp is the HELP text of the SDK's families; the SDK gives its metrics no descriptions.
const temporalHelp = "Temporal Go SDK metric; see https://docs.temporal.io/references/sdk-metrics (timers in seconds)."

// TemporalHandler implements the Temporal SDK's client.MetricsHandler on a Registry, so that a worker's
// task slots, poller counts, request and activity latencies appear at /metrics under the SDK's own names
// (temporal_worker_task_slots_available, temporal_activity_execution_latency, ...). Tags become labels;
// counters and gauges keep their type, and timers become histograms in seconds, the unit the SDK documents
// for Go. Names and tag keys that are not valid in Prometheus are sanitized.
//
// Pass it as client.Options.MetricsHandler. The SDK calls Counter, Gauge and Timer on its hot paths, so
// WithTags does the sorting once and each lookup costs two read-locked map hits.
type TemporalHandler struct {
	r      *Registry
	tags   map[string]string // as given, for merging in WithTags
	labels []labelPair       // sanitized and sorted
	key    string
	shared *temporalShared
}

// temporalShared is state common to a handler and everything derived from it with WithTags.
type temporalShared struct {
	log      *slog.Logger
	mu       sync.Mutex
	reported map[string]bool // names already logged as unusable
}

var _ client.MetricsHandler = (*TemporalHandler)(nil)

// NewTemporalHandler returns a handler that records into r. log receives one warning per metric name the
// registry cannot take (a name the SDK uses both as a counter and a gauge, say); nil means slog.Default().
func NewTemporalHandler(r *Registry, log *slog.Logger) *TemporalHandler {
	if log == nil {
		log = slog.Default()
	}
	return &TemporalHandler{r: r, key: seriesKey(nil), shared: &temporalShared{log: log, reported: map[string]bool{}}}
}

// WithTags returns a handler whose metrics carry these tags on top of the current ones; a key present in
// both takes the new value, as the SDK's contract requires.
func (h *TemporalHandler) WithTags(tags map[string]string) client.MetricsHandler {
	if len(tags) == 0 {
		return h
	}
	merged := make(map[string]string, len(h.tags)+len(tags))
	maps.Copy(merged, h.tags)
	maps.Copy(merged, tags)
	// Two tag keys may sanitize to the same label name ("task.queue" and "task_queue"); the one that sorts
	// last wins, deterministically.
	byLabel := make(map[string]string, len(merged))
	for _, k := range slices.Sorted(maps.Keys(merged)) {
		byLabel[sanitizeName(k, true)] = merged[k]
	}
	labels := make([]labelPair, 0, len(byLabel))
	for _, name := range slices.Sorted(maps.Keys(byLabel)) {
		labels = append(labels, labelPair{name, byLabel[name]})
	}
	return &TemporalHandler{r: h.r, tags: merged, labels: labels, key: seriesKey(labels), shared: h.shared}
}

// Counter returns the counter called name with this handler's tags.
func (h *TemporalHandler) Counter(name string) client.MetricsCounter {
	s := h.series(name, kindCounter)
	if s == nil {
		return client.MetricsNopHandler.Counter(name)
	}
	return temporalCounter{s.metric.(*Counter)}
}

// Gauge returns the gauge called name with this handler's tags.
func (h *TemporalHandler) Gauge(name string) client.MetricsGauge {
	s := h.series(name, kindGauge)
	if s == nil {
		return client.MetricsNopHandler.Gauge(name)
	}
	return temporalGauge{s.metric.(*Gauge)}
}

// Timer returns the timer called name with this handler's tags, recorded as a histogram in seconds with
// TemporalBuckets.
func (h *TemporalHandler) Timer(name string) client.MetricsTimer {
	s := h.series(name, kindHistogram)
	if s == nil {
		return client.MetricsNopHandler.Timer(name)
	}
	return temporalTimer{s.metric.(*Histogram)}
}

// series finds or creates the series, or returns nil (after logging once) when the registry refuses the name
// because it already holds it with another type.
func (h *TemporalHandler) series(name string, k kind) *series {
	n := sanitizeName(name, false)
	f, err := h.r.family(n, temporalHelp, k, TemporalBuckets, nil, true)
	if err != nil {
		h.shared.refuse(n, err)
		return nil
	}
	return f.get(h.labels, h.key, func() any {
		switch k {
		case kindCounter:
			return new(Counter)
		case kindGauge:
			return new(Gauge)
		default:
			return newHistogram(f.buckets)
		}
	})
}

func (s *temporalShared) refuse(name string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reported[name] {
		return
	}
	s.reported[name] = true
	s.log.Warn("metrics: dropping a Temporal SDK metric", "name", name, "err", strings.TrimPrefix(err.Error(), "metrics: "))
}

// The SDK's metric interfaces, implemented on the registry's types.
type (
	temporalCounter struct{ c *Counter }
	temporalGauge   struct{ g *Gauge }
	temporalTimer   struct{ h *Histogram }
)

// Inc implements client.MetricsCounter.
func (t temporalCounter) Inc(d int64) { t.c.Add(float64(d)) }

// Update implements client.MetricsGauge.
func (t temporalGauge) Update(v float64) { t.g.Set(v) }

// Record implements client.MetricsTimer.
func (t temporalTimer) Record(d time.Duration) { t.h.ObserveDuration(d) }
