package fleetworker

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// probeTimeout bounds each dependency check of a readiness probe, below the usual probe timeouts of
// orchestrators so that a hung dependency answers 503 rather than a timed-out probe.
const probeTimeout = 2 * time.Second

// Probes answers an orchestrator's liveness and readiness probes for a worker (docs/architecture.md,
// "Workers"): live while the process serves HTTP at all, ready only while the worker polls its task queue,
// Temporal answers a health check and the registry answers a ping. A worker that is not ready is taken out
// of rotation without being restarted.
type Probes struct {
	// Temporal checks the Temporal frontend (client.Client.CheckHealth in production).
	Temporal func(context.Context) error
	// Registry pings the registry (pgxpool.Pool.Ping in production).
	Registry func(context.Context) error

	polling atomic.Bool
}

// SetPolling records whether the worker polls its task queue: true once it has started, false as soon as it
// begins to stop, so that traffic moves away before the running activities finish.
func (p *Probes) SetPolling(on bool) { p.polling.Store(on) }

// Ready returns nil when the worker is ready, else the first reason it is not.
func (p *Probes) Ready(ctx context.Context) error {
	if !p.polling.Load() {
		return errors.New("worker is not polling its task queue")
	}
	for _, c := range []struct {
		name  string
		check func(context.Context) error
	}{{"temporal", p.Temporal}, {"registry", p.Registry}} {
		if c.check == nil {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := c.check(cctx)
		cancel()
		if err != nil {
			return fmt.Errorf("%s: %w", c.name, err)
		}
	}
	return nil
}

// Register serves /livez and /readyz on mux.
func (p *Probes) Register(mux interface {
	HandleFunc(string, func(http.ResponseWriter, *http.Request))
}) {
	mux.HandleFunc("/livez", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := p.Ready(r.Context()); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = fmt.Fprintf(w, "not ready: %v\n", err)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}
