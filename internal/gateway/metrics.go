package gateway

import (
	"sync/atomic"

	"github.com/fleetflow/fleetflow/internal/metrics"
)

// ingestMetrics are the histograms of the batched registry writes. The counters of Stats are exported by
// functions that read the atomics at scrape time, so only what Stats cannot say (distributions) is recorded
// as it happens.
type ingestMetrics struct {
	reportedSeconds, reportedSize *metrics.Histogram
	jobSeconds, jobSize           *metrics.Histogram
	connSeconds, connSize         *metrics.Histogram
}

// registerMetrics exports the gateway's counters into r and returns the ingest histograms, fed by the batch
// writers. With Config.Metrics unset r is a private registry nobody scrapes, which keeps the hot paths free of
// nil checks.
func (g *Gateway) registerMetrics(r *metrics.Registry) ingestMetrics {
	load := func(v *atomic.Int64) func() float64 { return func() float64 { return float64(v.Load()) } }
	counter := func(name, help string, v *atomic.Int64) { r.CounterFunc(name, help, load(v)) }

	r.GaugeFunc("fleetflow_gateway_connected_devices", "Device sessions open now.", load(&g.c.connected))
	connects := r.CounterVec("fleetflow_gateway_connects_total", "Sessions established, by client kind.", "kind")
	connects.Func(load(&g.c.connects), "device")
	connects.Func(load(&g.c.serviceConnects), "service")
	counter("fleetflow_gateway_auth_failures_total", "CONNECTs refused (bad credentials, unknown, disabled or retired devices).", &g.c.authFailures)
	counter("fleetflow_gateway_acl_denials_total", "Publishes, subscriptions and wills refused by the ACL.", &g.c.aclDenials)
	counter("fleetflow_gateway_kicks_total", "Live sessions dropped because the device was revoked or kicked.", &g.c.kicks)

	counter("fleetflow_gateway_messages_in_total", "Publishes received from devices.", &g.c.messagesIn)
	r.CounterFunc("fleetflow_gateway_messages_out_total", "Publishes written to clients (devices and services).", func() float64 {
		if !g.started.Load() { // g.server is set before started, and a scrape may come during Start
			return 0
		}
		return float64(atomic.LoadInt64(&g.server.Info.MessagesSent))
	})
	r.CounterFunc("fleetflow_gateway_messages_dropped_slow_client_total",
		"Publishes the broker dropped because the receiving client's outbound queue was full (a slow subscriber).", func() float64 {
			if !g.started.Load() {
				return 0
			}
			return float64(atomic.LoadInt64(&g.server.Info.MessagesDropped))
		})
	counter("fleetflow_gateway_telemetry_messages_total", "Telemetry messages received from devices.", &g.c.telemetry)
	counter("fleetflow_gateway_twin_gets_total", "twin/get requests answered with the twin.", &g.c.twinGets)
	counter("fleetflow_gateway_method_responses_total", "Method responses received from devices.", &g.c.methodResponses)
	counter("fleetflow_gateway_method_offline_replies_total", "Method requests answered 404 DeviceNotOnline by the gateway.", &g.c.methodsOffline)
	counter("fleetflow_gateway_job_statuses_total", "Valid job status messages recorded in the registry.", &g.c.jobStatus)

	// Three separate counters rather than one with a reason label: a job status dropped because its queue
	// was full counts as throttled too, so a sum over reasons would count it twice.
	counter("fleetflow_gateway_malformed_messages_total", "Device messages dropped or refused as malformed (topic or payload).", &g.c.malformed)
	counter("fleetflow_gateway_throttled_total", "Requests answered 429, or job statuses dropped, because an ingest queue was full.", &g.c.throttled)
	counter("fleetflow_gateway_job_statuses_dropped_total", "Valid job status messages lost: queue full, or the registry write kept failing.", &g.c.jobStatusDropped)

	reported := r.CounterVec("fleetflow_gateway_reported_patches_total", "Reported-property patches by outcome.", "result")
	reported.Func(load(&g.c.reportedApplied), "applied")
	reported.Func(load(&g.c.reportedFailed), "failed")
	conn := r.CounterVec("fleetflow_gateway_connection_events_total", "Connection events by outcome of their registry write.", "result")
	conn.Func(load(&g.c.connEventsWritten), "written")
	conn.Func(load(&g.c.connEventsDropped), "dropped")
	counter("fleetflow_gateway_store_errors_total", "Failed registry calls of any kind.", &g.c.storeErrors)

	r.GaugeFunc("fleetflow_gateway_auth_cache_entries", "Device records in the authentication cache.",
		func() float64 { return float64(g.auth.len()) })
	counter("fleetflow_gateway_auth_lookups_total", "Registry queries made for CONNECTs (cache misses).", &g.auth.lookups)
	counter("fleetflow_gateway_auth_cache_hits_total", "CONNECTs answered from the authentication cache.", &g.auth.hits)

	seconds := r.HistogramVec("fleetflow_gateway_ingest_batch_duration_seconds",
		"Latency of one batched registry write by stream: reported patches, job statuses, connection events.",
		metrics.LatencyBuckets, "stream")
	size := r.HistogramVec("fleetflow_gateway_ingest_batch_size",
		"Items per batched registry write by stream.", metrics.SizeBuckets, "stream")
	return ingestMetrics{
		reportedSeconds: seconds.With("reported"), reportedSize: size.With("reported"),
		jobSeconds: seconds.With("job_status"), jobSize: size.With("job_status"),
		connSeconds: seconds.With("connection"), connSize: size.With("connection"),
	}
}
