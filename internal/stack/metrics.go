package stack

import (
	"os"

	"github.com/fleetflow/fleetflow/internal/metrics"
)

// Metrics addresses of the local stack: the gateway serves /metrics on FLEETFLOW_GATEWAY_METRICS (default
// 127.0.0.1:9464) and worker-n on 127.0.0.1:9465+n-1, so that every process of one machine's stack has its
// own port and a Prometheus scrape config can list them. Setting FLEETFLOW_GATEWAY_METRICS or
// FLEETFLOW_WORKER_METRICS to the empty string turns the respective metrics off. A port that is already taken
// turns that process's metrics off with a note instead of failing `dev up`: metrics are a convenience here,
// not a part of the stack.

// gatewayMetrics is the address the gateway should serve metrics on, "" for none.
func gatewayMetrics() string {
	if v, ok := os.LookupEnv("FLEETFLOW_GATEWAY_METRICS"); ok {
		return v
	}
	return metrics.DefaultGatewayListen
}

// workerMetrics is the address worker-n should serve metrics on, "" for none. One address cannot serve
// several workers, so a non-empty FLEETFLOW_WORKER_METRICS is overridden by the per-worker port.
func workerMetrics(n int) string {
	if v, ok := os.LookupEnv("FLEETFLOW_WORKER_METRICS"); ok && v == "" {
		return ""
	}
	return metrics.WorkerListen(n)
}

// freeMetrics returns addr when nothing listens there, else "" and says so.
func (s *Stack) freeMetrics(part, addr string) string {
	if addr != "" && PortInUse(addr) {
		s.say("%-9s metrics address %s is in use; starting without metrics", part, addr)
		return ""
	}
	return addr
}

// recordMetrics notes a started part's metrics address in its pid file, for `dev status`.
func (s *Stack) recordMetrics(part string, l *launched, addr string) {
	if addr == "" {
		return
	}
	l.pid.Metrics = addr
	_ = WritePIDFile(s.pidPath(part), l.pid) // only the status note depends on it
}

// metricsNote is a running part's note in `dev status`.
func metricsNote(addr string) string {
	if addr == "" {
		return ""
	}
	return "metrics http://" + addr + "/metrics"
}

// startedMetrics is the suffix of a part's "started" line.
func startedMetrics(addr string) string {
	if addr == "" {
		return ""
	}
	return ", " + metricsNote(addr)
}
