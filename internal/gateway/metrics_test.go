package gateway_test

import (
	"context"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/gateway/gatewaytest"
	"github.com/fleetflow/fleetflow/internal/metrics"
)

// scrapeMetrics GETs url and returns each sample (name with labels) and its value.
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	res, err := http.Get(url)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	require.True(t, strings.HasPrefix(res.Header.Get("Content-Type"), "text/plain"), res.Header.Get("Content-Type"))
	body, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	out := map[string]float64{}
	for line := range strings.SplitSeq(strings.TrimSpace(string(body)), "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		require.Positive(t, i, "sample line %q", line)
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, "sample line %q", line)
		out[line[:i]] = v
	}
	return out
}

// TestMetricsEndpoint scrapes /metrics of a started gateway over HTTP while a device connects, publishes
// and reports, and checks that the series follow.
func TestMetricsEndpoint(t *testing.T) {
	store := gatewaytest.New()
	store.Add("dev-m", "s3cret")
	reg := metrics.NewRegistry()
	g := gatewaytest.StartGateway(t, store, gateway.Config{Metrics: reg})
	srv, err := metrics.Serve("127.0.0.1:0", metrics.Handler(reg), gatewaytest.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })

	before := scrapeMetrics(t, srv.URL())
	assert.Equal(t, 0.0, before["fleetflow_gateway_connected_devices"])
	assert.Equal(t, 0.0, before["fleetflow_gateway_messages_in_total"])
	for _, name := range []string{
		"fleetflow_gateway_auth_failures_total", "fleetflow_gateway_kicks_total", "fleetflow_gateway_messages_out_total",
		"fleetflow_gateway_malformed_messages_total", "fleetflow_gateway_throttled_total",
		"fleetflow_gateway_job_statuses_dropped_total", "fleetflow_gateway_method_offline_replies_total",
		`fleetflow_gateway_connects_total{kind="device"}`, `fleetflow_gateway_reported_patches_total{result="applied"}`,
		`fleetflow_gateway_ingest_batch_duration_seconds_count{stream="reported"}`,
		`fleetflow_gateway_ingest_batch_items_bucket{stream="job_status",le="1"}`,
	} {
		assert.Contains(t, before, name)
	}

	d := mustConnect(t, gatewaytest.URL(g), "dev-m", "s3cret")
	_, err = gatewaytest.Dial(t, gatewaytest.URL(g), "dev-m", "dev-m", "wrong")
	require.Error(t, err)
	require.NoError(t, d.PublishTelemetry("", map[string]int{"temp": 21}))
	_, err = d.ReportPatch(context.Background(), map[string]any{"fw": "1.0"})
	require.NoError(t, err)

	var after map[string]float64
	require.Eventually(t, func() bool {
		after = scrapeMetrics(t, srv.URL())
		return after["fleetflow_gateway_telemetry_messages_total"] == 1
	}, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1.0, after["fleetflow_gateway_connected_devices"])
	assert.Equal(t, 1.0, after[`fleetflow_gateway_connects_total{kind="device"}`])
	assert.Equal(t, 1.0, after["fleetflow_gateway_auth_failures_total"])
	// Birth state, twin/get, telemetry and the reported patch at least.
	assert.GreaterOrEqual(t, after["fleetflow_gateway_messages_in_total"], 4.0)
	assert.Equal(t, float64(g.Stats().MessagesIn), after["fleetflow_gateway_messages_in_total"])
	assert.Greater(t, after["fleetflow_gateway_messages_out_total"], 0.0, "twin responses")
	assert.Equal(t, 1.0, after[`fleetflow_gateway_reported_patches_total{result="applied"}`])
	assert.Equal(t, 1.0, after[`fleetflow_gateway_ingest_batch_duration_seconds_count{stream="reported"}`])
	assert.Equal(t, 1.0, after[`fleetflow_gateway_ingest_batch_items_bucket{stream="reported",le="1"}`])
	assert.Equal(t, 1.0, after[`fleetflow_gateway_ingest_batch_items_sum{stream="reported"}`])
	assert.Equal(t, 1.0, after[`fleetflow_gateway_ingest_batch_duration_seconds_bucket{stream="reported",le="+Inf"}`])

	d.Close()
	require.Eventually(t, func() bool {
		after = scrapeMetrics(t, srv.URL())
		return after["fleetflow_gateway_connected_devices"] == 0 &&
			after[`fleetflow_gateway_connection_events_total{result="written"}`] >= 2
	}, 5*time.Second, 10*time.Millisecond, "disconnect and the connection events' write: %v", after)
	assert.GreaterOrEqual(t, after[`fleetflow_gateway_ingest_batch_duration_seconds_count{stream="connection"}`], 1.0)
}

// TestMetricsRegistryReused starts a second gateway on the registry of a closed one, as a process that
// restarts its gateway does: registration must not panic, the counters must be the new gateway's, and the
// ingest histograms continue.
func TestMetricsRegistryReused(t *testing.T) {
	store := gatewaytest.New()
	reg := metrics.NewRegistry()
	first := gateway.New(gateway.Config{Metrics: reg}, store, gatewaytest.Logger(t))
	second := gatewaytest.StartGateway(t, store, gateway.Config{Metrics: reg})
	_, err := gatewaytest.Dial(t, gatewaytest.URL(second), "dev-x", "dev-x", "wrong")
	require.Error(t, err)
	srv, err := metrics.Serve("127.0.0.1:0", metrics.Handler(reg), gatewaytest.Logger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = srv.Close() })
	got := scrapeMetrics(t, srv.URL())
	assert.Equal(t, float64(second.Stats().AuthFailures), got["fleetflow_gateway_auth_failures_total"])
	assert.Equal(t, 1.0, got["fleetflow_gateway_auth_failures_total"], "the started gateway's count, not the first one's zero")
	assert.Zero(t, first.Stats().AuthFailures)
	assert.Contains(t, got, `fleetflow_gateway_ingest_batch_duration_seconds_count{stream="connection"}`)
}
