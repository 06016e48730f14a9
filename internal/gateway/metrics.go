package gateway

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fleetflow/fleetflow/internal/metrics"
)

// histogram is one series of an ingest histogram; ObserveDuration records in seconds, the unit of every
// fleetflow latency.
type histogram struct{ prometheus.Observer }

// ObserveDuration records d in seconds.
func (h histogram) ObserveDuration(d time.Duration) { h.Observe(d.Seconds()) }

// ingestMetrics are the histograms of the batched registry writes. The counters of Stats are exported by a
// collector that reads the atomics at scrape time, so only what Stats cannot say (distributions) is recorded
// as it happens.
type ingestMetrics struct {
	reportedSeconds, reportedSize histogram
	jobSeconds, jobSize           histogram
	connSeconds, connSize         histogram
}

// registerMetrics exports the gateway's counters into r and returns the ingest histograms, fed by the batch
// writers. With Config.Metrics unset r is a private registry nobody scrapes, which keeps the hot paths free of
// nil checks. A gateway registered again in the same registry (a restart within one process) takes over the
// counters' series; the histograms continue.
func (g *Gateway) registerMetrics(r *metrics.Registry) ingestMetrics {
	metrics.Replace(r, gatewayCollector{g})
	seconds := metrics.Register(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetflow_gateway_ingest_batch_duration_seconds",
		Help:    "Latency of one batched registry write by stream: reported patches, job statuses, connection events.",
		Buckets: metrics.LatencyBuckets,
	}, []string{"stream"}))
	size := metrics.Register(r, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "fleetflow_gateway_ingest_batch_items",
		Help:    "Items per batched registry write by stream.",
		Buckets: metrics.SizeBuckets,
	}, []string{"stream"}))
	h := func(v *prometheus.HistogramVec, stream string) histogram { return histogram{v.WithLabelValues(stream)} }
	return ingestMetrics{
		reportedSeconds: h(seconds, "reported"), reportedSize: h(size, "reported"),
		jobSeconds: h(seconds, "job_status"), jobSize: h(size, "job_status"),
		connSeconds: h(seconds, "connection"), connSize: h(size, "connection"),
	}
}

// gatewayMetric is one series of the gateway collector: its description, type, label values and the
// value read at scrape time.
type gatewayMetric struct {
	desc   *prometheus.Desc
	typ    prometheus.ValueType
	labels []string
	value  func(g *Gateway) float64
}

func load(f func(c *counters) *atomic.Int64) func(g *Gateway) float64 {
	return func(g *Gateway) float64 { return float64(f(&g.c).Load()) }
}

// brokerInfo reads one of mochi's own counters; before Start there is no broker and the value is 0
// (g.server is set before started, and a scrape may come during Start).
func brokerInfo(f func(g *Gateway) *int64) func(g *Gateway) float64 {
	return func(g *Gateway) float64 {
		if !g.started.Load() {
			return 0
		}
		return float64(atomic.LoadInt64(f(g)))
	}
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

var (
	connectsDesc      = desc("fleetflow_gateway_connects_total", "Sessions established, by client kind (devices only since services moved to NATS).", "kind")
	reportedDesc      = desc("fleetflow_gateway_reported_patches_total", "Reported-property patches by outcome.", "result")
	relayedDesc       = desc("fleetflow_gateway_downlinks_relayed_total", "Messages relayed from the bus to devices, by kind.", "kind")
	refusedReportDesc = desc("fleetflow_gateway_reported_refused_total",
		"Reported-property patches refused with a 4xx answer, by reason: too_large, malformed (JSON or twin limits), "+
			"scheme (violates the metadata scheme's reported-properties schema), unknown_device, inactive_device. Each is also counted as failed in fleetflow_gateway_reported_patches_total.", "reason")
	connEvDesc = desc("fleetflow_gateway_connection_events_total", "Connection events by outcome of their registry write.", "result")
)

// refusedBusyDesc counts CONNECTs refused by admission control, by reason (see busyReasons).
var refusedBusyDesc = desc("fleetflow_gateway_connects_refused_busy_total",
	"CONNECTs refused at once with \"server unavailable\" because the gateway could not serve them in time, by reason: "+
		"pending (too many in authentication), lag (starved of CPU), wait (slow registry lookup), registry (lookup failed), "+
		"shed (lookups of never-seen ids all taken).", "reason")

// admissionMetrics are the admission-control series, one per refusal reason plus the gauges.
func admissionMetrics() []gatewayMetric {
	out := []gatewayMetric{
		{desc("fleetflow_gateway_connects_pending", "CONNECTs being authenticated now."),
			prometheus.GaugeValue, nil, func(g *Gateway) float64 { return float64(g.admit.pending.Load()) }},
		{desc("fleetflow_gateway_scheduling_lag_seconds", "How late the gateway's 100 ms probe ticker last ran: the time its goroutines wait for a core."),
			prometheus.GaugeValue, nil, func(g *Gateway) float64 { return g.admit.lag().Seconds() }},
	}
	for _, r := range busyReasons {
		out = append(out, gatewayMetric{refusedBusyDesc, prometheus.CounterValue, []string{r},
			func(g *Gateway) float64 { return float64(g.admit.refused[r].Load()) }})
	}
	return out
}

// gatewayMetrics are the series read from the gateway's counters.
var gatewayMetrics = append(admissionMetrics(), []gatewayMetric{
	{desc("fleetflow_gateway_connected_devices", "Device sessions open now."), prometheus.GaugeValue, nil,
		load(func(c *counters) *atomic.Int64 { return &c.connected })},
	{connectsDesc, prometheus.CounterValue, []string{"device"}, load(func(c *counters) *atomic.Int64 { return &c.connects })},
	{desc("fleetflow_gateway_auth_failures_total", "CONNECTs refused (bad credentials, unknown, disabled or retired devices)."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.authFailures })},
	{desc("fleetflow_gateway_auth_expired_total", "CONNECTs with the right credentials refused because the credentials have expired (also counted in auth failures)."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.authExpired })},
	{desc("fleetflow_gateway_auth_refetched_total", "CONNECTs whose credentials did not match the cached record and were decided again on a fresh registry read (a credential staged moments before)."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.authRefetched })},
	{desc("fleetflow_gateway_acl_denials_total", "Publishes, subscriptions and wills refused by the ACL."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.aclDenials })},
	{desc("fleetflow_gateway_kicks_total", "Live sessions dropped because the device was revoked or kicked."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.kicks })},
	{desc("fleetflow_gateway_takeovers_total", "Live sessions dropped because the device connected to another gateway."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.takeovers })},
	{relayedDesc, prometheus.CounterValue, []string{"desired"}, load(func(c *counters) *atomic.Int64 { return &c.desiredRelayed })},
	{relayedDesc, prometheus.CounterValue, []string{"method"}, load(func(c *counters) *atomic.Int64 { return &c.methodsRelayed })},

	{desc("fleetflow_gateway_messages_in_total", "Publishes received from devices."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.messagesIn })},
	{desc("fleetflow_gateway_messages_out_total", "Publishes written to devices."),
		prometheus.CounterValue, nil, brokerInfo(func(g *Gateway) *int64 { return &g.server.Info.MessagesSent })},
	{desc("fleetflow_gateway_messages_dropped_slow_client_total",
		"Publishes the broker dropped because the receiving client's outbound queue was full (a slow subscriber)."),
		prometheus.CounterValue, nil, brokerInfo(func(g *Gateway) *int64 { return &g.server.Info.MessagesDropped })},
	{desc("fleetflow_gateway_telemetry_messages_total", "Telemetry messages received from devices."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.telemetry })},
	{desc("fleetflow_gateway_twin_gets_total", "twin/get requests answered with the twin."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.twinGets })},
	{desc("fleetflow_gateway_method_responses_total", "Method responses received from devices."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.methodResponses })},
	{desc("fleetflow_gateway_method_offline_replies_total", "Method requests answered 404 DeviceNotOnline by the gateway."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.methodsOffline })},
	{desc("fleetflow_gateway_job_statuses_total", "Valid job status messages recorded in the registry."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.jobStatus })},

	// Three separate counters rather than one with a reason label: a job status dropped because its queue
	// was full counts as throttled too, so a sum over reasons would count it twice.
	{desc("fleetflow_gateway_malformed_messages_total", "Device messages dropped or refused as malformed (topic or payload)."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.malformed })},
	{desc("fleetflow_gateway_throttled_total", "Requests answered 429, or job statuses dropped, because an ingest queue was full."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.throttled })},
	{desc("fleetflow_gateway_requests_overdue_total", "twin/get and reported requests answered 503 without being served: they waited in their queue longer than a device waits for the answer."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.overdue })},
	{desc("fleetflow_gateway_job_statuses_dropped_total", "Valid job status messages lost: queue full, or the registry write kept failing."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.jobStatusDropped })},

	{refusedReportDesc, prometheus.CounterValue, []string{"too_large"}, load(func(c *counters) *atomic.Int64 { return &c.refusedTooLarge })},
	{refusedReportDesc, prometheus.CounterValue, []string{"malformed"}, load(func(c *counters) *atomic.Int64 { return &c.refusedMalformed })},
	{refusedReportDesc, prometheus.CounterValue, []string{"scheme"}, load(func(c *counters) *atomic.Int64 { return &c.refusedScheme })},
	{refusedReportDesc, prometheus.CounterValue, []string{"unknown_device"}, load(func(c *counters) *atomic.Int64 { return &c.refusedUnknown })},
	{refusedReportDesc, prometheus.CounterValue, []string{"inactive_device"}, load(func(c *counters) *atomic.Int64 { return &c.refusedInactive })},
	{reportedDesc, prometheus.CounterValue, []string{"applied"}, load(func(c *counters) *atomic.Int64 { return &c.reportedApplied })},
	{reportedDesc, prometheus.CounterValue, []string{"failed"}, load(func(c *counters) *atomic.Int64 { return &c.reportedFailed })},
	{connEvDesc, prometheus.CounterValue, []string{"written"}, load(func(c *counters) *atomic.Int64 { return &c.connEventsWritten })},
	{connEvDesc, prometheus.CounterValue, []string{"dropped"}, load(func(c *counters) *atomic.Int64 { return &c.connEventsDropped })},
	{desc("fleetflow_gateway_store_errors_total", "Failed registry calls of any kind."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.storeErrors })},

	{desc("fleetflow_gateway_auth_cache_entries", "Device records in the authentication cache."),
		prometheus.GaugeValue, nil, func(g *Gateway) float64 { return float64(g.auth.len()) }},
	{desc("fleetflow_gateway_auth_lookups_total", "Registry queries made for CONNECTs (cache misses)."),
		prometheus.CounterValue, nil, func(g *Gateway) float64 { return float64(g.auth.lookups.Load()) }},
	{desc("fleetflow_gateway_auth_cache_hits_total", "CONNECTs answered from the authentication cache."),
		prometheus.CounterValue, nil, func(g *Gateway) float64 { return float64(g.auth.hits.Load()) }},
	{desc("fleetflow_gateway_auth_negative_entries", "Device ids remembered as unknown by the authentication cache."),
		prometheus.GaugeValue, nil, func(g *Gateway) float64 { return float64(g.auth.negativeLen()) }},
	{desc("fleetflow_gateway_auth_negative_hits_total", "CONNECTs of unknown device ids refused from the negative cache, without a registry query."),
		prometheus.CounterValue, nil, func(g *Gateway) float64 { return float64(g.auth.negHits.Load()) }},
	{desc("fleetflow_gateway_auth_rate_limited_total", "CONNECTs refused without a lookup because their remote address had used up its failed CONNECTs."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.authRateLimited })},
	{desc("fleetflow_gateway_auth_shed_total", "CONNECTs of device ids never seen active refused at once because too many such lookups were waiting."),
		prometheus.CounterValue, nil, func(g *Gateway) float64 { return float64(g.auth.coldShed.Load()) }},
	{desc("fleetflow_gateway_enrolled_total", "Unknown device ids registered on first contact through an enrollment group."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.enrolled })},
	{desc("fleetflow_gateway_enroll_refused_total", "First contacts whose secret matched an enrollment group that refused them (disabled, full, pattern, id taken), or whose registration failed."),
		prometheus.CounterValue, nil, load(func(c *counters) *atomic.Int64 { return &c.enrollRefused })},
}...)

// gatewayCollector exports the gateway's counters, read from its atomics at each scrape.
type gatewayCollector struct{ g *Gateway }

// Describe implements prometheus.Collector.
func (gatewayCollector) Describe(ch chan<- *prometheus.Desc) {
	seen := map[*prometheus.Desc]bool{}
	for _, m := range gatewayMetrics {
		if !seen[m.desc] {
			seen[m.desc] = true
			ch <- m.desc
		}
	}
}

// Collect implements prometheus.Collector.
func (c gatewayCollector) Collect(ch chan<- prometheus.Metric) {
	for _, m := range gatewayMetrics {
		ch <- prometheus.MustNewConstMetric(m.desc, m.typ, m.value(c.g), m.labels...)
	}
}
