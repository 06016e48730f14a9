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

	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/registry"
)

func main() {
	cfg := config.FromEnv()
	flag.StringVar(&cfg.DatabaseURL, "database-url", cfg.DatabaseURL, "Postgres registry (FLEETFLOW_DATABASE_URL)")
	flag.StringVar(&cfg.TemporalAddress, "temporal-address", cfg.TemporalAddress, "Temporal frontend (TEMPORAL_ADDRESS)")
	flag.StringVar(&cfg.Namespace, "namespace", cfg.Namespace, "Temporal namespace (TEMPORAL_NAMESPACE)")
	flag.StringVar(&cfg.TaskQueue, "task-queue", cfg.TaskQueue, "task queue to poll (FLEETFLOW_TASK_QUEUE)")
	flag.StringVar(&cfg.MQTTURL, "mqtt-url", cfg.MQTTURL, "gateway for desired pushes and methods (FLEETFLOW_MQTT_URL; token in FLEETFLOW_SERVICE_TOKEN)")
	flag.Parse()

	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	slog.SetDefault(log)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, log); err != nil {
		fmt.Fprintln(os.Stderr, "fleetflow-worker:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg config.Config, log *slog.Logger) error {
	reg, err := registry.Open(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer reg.Close()
	c, err := client.Dial(client.Options{HostPort: cfg.TemporalAddress, Namespace: cfg.Namespace,
		Logger: tlog.NewStructuredLogger(log)})
	if err != nil {
		return fmt.Errorf("connect to temporal at %s: %w", cfg.TemporalAddress, err)
	}
	defer c.Close()
	ch := &lazyChannel{cfg: channel.Config{BrokerURL: cfg.MQTTURL, Token: os.Getenv("FLEETFLOW_SERVICE_TOKEN"), Logger: log}}
	defer ch.Close()
	w := fleetworker.New(c, cfg.TaskQueue, &activities.Activities{Registry: reg, Configure: reg, Retire: reg, Channel: ch})
	log.Info("worker started", "task_queue", cfg.TaskQueue, "temporal", cfg.TemporalAddress)
	interrupt := make(chan any)
	go func() { <-ctx.Done(); close(interrupt) }()
	if err := w.Run(interrupt); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	return nil
}
