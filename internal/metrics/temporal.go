package metrics

import (
	"fmt"
	"log/slog"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/otlptranslator"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.temporal.io/sdk/client"
	temporalotel "go.temporal.io/sdk/contrib/opentelemetry"
)

// NewTemporalHandler returns the Temporal SDK metrics handler of a worker or client process, exporting into
// r. Pass it as client.Options.MetricsHandler; call it once per registry.
//
// It is the SDK's supported path, go.temporal.io/sdk/contrib/opentelemetry, on an OpenTelemetry meter
// provider whose Prometheus exporter registers into r. Two settings make the names the ones Temporal's
// published Grafana dashboards for the Go SDK query, and conventional Prometheus besides:
//   - monotonic counters, so that counters are Prometheus counters with the _total suffix
//     (temporal_request_total, temporal_workflow_completed_total) rather than gauges;
//   - the exporter's suffixing translation, so that timers, which the contrib records in seconds, become
//     histograms named ..._seconds (temporal_activity_execution_latency_seconds_bucket).
//
// Gauges keep the SDK's names (temporal_worker_task_slots_available). Timers use TemporalBuckets rather
// than OpenTelemetry's default bounds, which are meant for milliseconds. Scope labels and target_info are
// left out: Prometheus' job and instance say which process a series came from.
//
// log receives, once per metric name, the errors the meter reports (none are expected); nil means
// slog.Default().
func NewTemporalHandler(r prometheus.Registerer, log *slog.Logger) (client.MetricsHandler, error) {
	if log == nil {
		log = slog.Default()
	}
	exp, err := otelprom.New(
		otelprom.WithRegisterer(r),
		otelprom.WithTranslationStrategy(otlptranslator.UnderscoreEscapingWithSuffixes),
		otelprom.WithoutScopeInfo(),
		otelprom.WithoutTargetInfo(),
	)
	if err != nil {
		return nil, fmt.Errorf("metrics: temporal sdk exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(
		sdkmetric.WithReader(exp),
		sdkmetric.WithView(sdkmetric.NewView(
			sdkmetric.Instrument{Kind: sdkmetric.InstrumentKindHistogram, Unit: "s"},
			sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{Boundaries: TemporalBuckets}},
		)),
	)
	var reported sync.Map // error texts already logged
	return temporalotel.NewMetricsHandler(temporalotel.MetricsHandlerOptions{
		Meter:                provider.Meter("temporal-sdk-go"),
		UseMonotonicCounters: true,
		// The contrib panics on a meter error by default; a metric is not worth a worker.
		OnError: func(err error) {
			if _, seen := reported.LoadOrStore(err.Error(), true); !seen {
				log.Warn("metrics: dropping a Temporal SDK metric", "err", err)
			}
		},
	}), nil
}
