// Command fleetflow-worker runs fleetflow's workflows and activities. Workers are stateless: start as many
// as the load needs, on one or many machines, all polling the same task queue.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/jackc/pgx/v5"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/metrics"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func main() {
	cfg := config.FromEnv()
	flag.StringVar(&cfg.DatabaseURL, "database-url", cfg.DatabaseURL, "Postgres registry (FLEETFLOW_DATABASE_URL)")
	flag.StringVar(&cfg.TemporalAddress, "temporal-address", cfg.TemporalAddress, "Temporal frontend (TEMPORAL_ADDRESS or the temporal.toml profile's)")
	flag.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "Temporal namespace (TEMPORAL_NAMESPACE or the temporal.toml profile's)")
	flag.StringVar(&cfg.TaskQueue, "task-queue", cfg.TaskQueue, "task queue to poll (FLEETFLOW_TASK_QUEUE)")
	flag.StringVar(&cfg.NATSURL, "nats-url", cfg.NATSURL, "NATS servers, comma-separated, through which desired pushes and method calls reach the gateways (FLEETFLOW_NATS_URL; credentials as user:password@)")
	// The default comes from FLEETFLOW_NATS_URL, which may hold a password: -h shows it masked.
	flag.Lookup("nats-url").DefValue = channel.RedactURL(cfg.NATSURL)
	flag.StringVar(&cfg.NATSCA, "nats-ca", cfg.NATSCA, "CA file to verify tls:// NATS servers with (FLEETFLOW_NATS_CA; default: system roots)")
	metricsAddr := os.Getenv("FLEETFLOW_WORKER_METRICS")
	flag.StringVar(&metricsAddr, "metrics-listen", metricsAddr, "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9465; empty: off (FLEETFLOW_WORKER_METRICS)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, metricsAddr, log); err != nil {
		fmt.Fprintln(os.Stderr, "fleetflow-worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config.Config, metricsAddr string, log *slog.Logger) error {
	// Metrics are off unless asked for: then the registry's statements and the Temporal SDK report into one
	// registry served at /metrics. Interface-typed nils keep pgx and the SDK on their no-op paths otherwise.
	var (
		mreg    *metrics.Registry
		tracer  pgx.QueryTracer
		handler client.MetricsHandler
	)
	if metricsAddr != "" {
		mreg = metrics.NewRegistry()
		metrics.RegisterProcess(mreg, "worker")
		tracer = metrics.NewQueryTracer(mreg)
		h, err := metrics.NewTemporalHandler(mreg, log)
		if err != nil {
			return err
		}
		handler = h
		srv, err := metrics.Serve(metricsAddr, metrics.Handler(mreg), log)
		if err != nil {
			return err
		}
		defer srv.Close()
		log.Info("serving metrics", "url", srv.URL())
	}
	reg, err := registry.OpenWithOptions(ctx, cfg.DatabaseURL, registry.Options{Tracer: tracer})
	if err != nil {
		return err
	}
	defer reg.Close()
	if mreg != nil {
		metrics.RegisterPool(mreg, reg.Pool())
	}
	topts, err := config.TemporalClientOptions(cfg.TemporalAddress, cfg.Namespace) // + temporal.toml, TEMPORAL_TLS*, TEMPORAL_API_KEY
	if err != nil {
		return err
	}
	topts.Logger, topts.MetricsHandler = tlog.NewStructuredLogger(log), handler
	c, err := client.Dial(topts)
	if err != nil {
		return fmt.Errorf("connect to temporal at %s: %w", cfg.TemporalAddress, err)
	}
	defer c.Close()
	ch := &lazyChannel{cfg: channel.Config{URL: cfg.NATSURL, CAFile: cfg.NATSCA, Name: "fleetflow-worker", Logger: log}}
	defer ch.Close()
	w := fleetworker.New(c, cfg.TaskQueue, activities.New(reg, ch))
	log.Info("worker started", "task_queue", cfg.TaskQueue, "temporal", cfg.TemporalAddress)
	interrupt := make(chan any)
	go func() { <-ctx.Done(); close(interrupt) }()
	if err := w.Run(interrupt); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}
