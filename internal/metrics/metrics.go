// Package metrics is fleetflow's Prometheus instrumentation, built on prometheus/client_golang: one registry
// per process with the standard Go and process collectors and fleetflow_build_info, the /metrics server,
// a pgx tracer and pool collector for the registry's Postgres traffic, and the Temporal SDK's metrics through
// the SDK's OpenTelemetry contrib exported into the same registry.
//
// Names follow Prometheus' conventions (base units, _seconds, _bytes, _total on counters), so that the
// Temporal SDK's published Grafana dashboards and the ones under deploy/grafana work unchanged. Labels take
// values from small sets (SQL verbs, task queues, activity types, client kinds), never device IDs.
package metrics

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry is the Prometheus registry a process serves at /metrics. It is an alias so that packages that
// are handed one (gateway.Config.Metrics) need not import client_golang to name it.
type Registry = prometheus.Registry

// NewRegistry returns an empty registry. A process that serves /metrics also calls RegisterProcess on it.
func NewRegistry() *Registry { return prometheus.NewRegistry() }

// Bucket layouts. Latencies are in seconds.
var (
	// LatencyBuckets suit database and broker round trips: 0.5 ms to 10 s.
	LatencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}
	// TemporalBuckets add the minutes and hours that activities and workflows take to LatencyBuckets' range.
	TemporalBuckets = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400}
	// SizeBuckets suit batch sizes, up to the 5,000 devices of the largest activity batches.
	SizeBuckets = []float64{1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000}
)

// RegisterProcess registers what every scrape target is expected to have: client_golang's Go collector
// (go_goroutines, go_memstats_*, go_gc_duration_seconds, go_sched_gomaxprocs_threads, ...), its process
// collector (process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... where /proc
// exists), and fleetflow_build_info{component,version,revision,go_version} = 1, which tells which build a
// process runs. component names the process ("worker", "gateway").
func RegisterProcess(r *Registry, component string) {
	r.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	version, revision := "(devel)", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if bi.Main.Version != "" {
			version = bi.Main.Version
		}
		modified := false
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				revision = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified {
			revision += "-dirty"
		}
	}
	r.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "fleetflow_build_info",
		Help: "A constant 1 labelled with the build that this process runs.",
		ConstLabels: prometheus.Labels{
			"component": component, "version": version, "revision": revision, "go_version": runtime.Version(),
		},
	}, func() float64 { return 1 }))
}

// Register registers c in r and returns it; when r already holds an equal collector (a component started
// twice in one process, as tests do), it returns the registered one instead, so that its series continue.
// Any other registration error is a programming error and panics, like MustRegister.
func Register[C prometheus.Collector](r prometheus.Registerer, c C) C {
	err := r.Register(c)
	if err == nil {
		return c
	}
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	panic(fmt.Errorf("metrics: register: %w", err))
}

// Replace registers c in r in place of an equal collector already registered. It is for collectors that
// read a component's state at scrape time (the gateway's counters, a pool's statistics): after a restart
// within one process, the new instance is the one to report.
func Replace(r prometheus.Registerer, c prometheus.Collector) {
	err := r.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		r.Unregister(are.ExistingCollector)
		err = r.Register(c)
	}
	if err != nil {
		panic(fmt.Errorf("metrics: register: %w", err))
	}
}

// Handler serves r in the Prometheus exposition format that the scraper negotiates (text or protobuf,
// gzip-compressed when accepted). A collector that fails does not blank the scrape: the rest is served and
// the error logged through slog.Default(). Only GET and HEAD are served: a scrape never changes anything,
// and a POST is a misconfigured client.
func Handler(r *Registry) http.Handler {
	h := promhttp.HandlerFor(r, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn),
	})
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, req)
	})
}
