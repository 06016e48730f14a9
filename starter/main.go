// Command fleetflow is the operator CLI: it manages the local stack, starts fleet operations as Temporal
// workflows, reads the registry and runs the gateway and the device simulator.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/spf13/cobra"
)

// globals are the settings every subcommand shares.
type globals struct {
	cfg     config.Config
	verbose bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if stopProfile := startCPUProfile(os.Getenv("FLEETFLOW_CPUPROFILE")); stopProfile != nil {
		defer stopProfile()
	}
	if err := newRoot().ExecuteContext(ctx); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			fmt.Fprintln(os.Stderr, "fleetflow:", ee.Error())
			os.Exit(ee.code)
		}
		fmt.Fprintln(os.Stderr, "fleetflow:", err)
		os.Exit(1)
	}
}

// exitError carries a specific exit code (e.g. 2 when a provisioning run had invalid rows).
type exitError struct {
	code int
	err  error
}

// Error is the wrapped error's message.
func (e *exitError) Error() string { return e.err.Error() }

// Unwrap lets errors.Is and errors.As see the cause.
func (e *exitError) Unwrap() error { return e.err }

func newRoot() *cobra.Command {
	g := &globals{cfg: config.FromEnv()}
	root := &cobra.Command{
		Use:           "fleetflow",
		Short:         "Run the lifecycle of an IoT device fleet as durable Temporal workflows",
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRun: func(cmd *cobra.Command, args []string) {
			level := slog.LevelWarn
			if g.verbose {
				level = slog.LevelDebug
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
		},
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.cfg.DatabaseURL, "database-url", g.cfg.DatabaseURL, "Postgres registry (FLEETFLOW_DATABASE_URL)")
	pf.StringVar(&g.cfg.TemporalAddress, "temporal-address", g.cfg.TemporalAddress, "Temporal frontend host:port (TEMPORAL_ADDRESS)")
	pf.StringVar(&g.cfg.Namespace, "namespace", g.cfg.Namespace, "Temporal namespace (TEMPORAL_NAMESPACE)")
	pf.StringVar(&g.cfg.TaskQueue, "task-queue", g.cfg.TaskQueue, "Temporal task queue of the workers (FLEETFLOW_TASK_QUEUE)")
	pf.StringVar(&g.cfg.MQTTURL, "mqtt-url", g.cfg.MQTTURL, "MQTT broker URL for devices (FLEETFLOW_MQTT_URL)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log debug details to stderr")
	root.AddCommand(commands(g)...)
	return root
}
