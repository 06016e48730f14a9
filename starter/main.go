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

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/config"
)

// globals are the settings every subcommand shares.
type globals struct {
	cfg     config.Config
	verbose bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile := startCPUProfile(os.Getenv("FLEETFLOW_CPUPROFILE"))
	cmd, err := newRoot().ExecuteContextC(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleetflow:", err)
	}
	var ue *usageError
	if errors.As(err, &ue) && ue.cmdLine && cmd != nil {
		fmt.Fprintf(os.Stderr, "See '%s --help'.\n", cmd.CommandPath())
	}
	// The profile is written before os.Exit, which skips deferred calls.
	stop()
	code := exitCode(err)
	if stopProfile != nil {
		stopProfile()
	}
	os.Exit(code)
}

func newRoot() *cobra.Command {
	g := &globals{cfg: config.FromEnv()}
	root := &cobra.Command{
		Use:   "fleetflow",
		Short: "Run the lifecycle of an IoT device fleet as durable Temporal workflows",
		Long: `fleetflow is the operator CLI of an IoT fleet: it provisions devices, configures them (twins, methods,
bulk jobs, staged firmware rollouts), monitors them (health checks, alerts, reports) and retires them. Every
operation is a durable Temporal workflow over the Postgres device registry; the CLI starts it and follows it.

Commands that print take -o text|json|yaml. Exit codes: 0 done, 1 failed, 2 usage or invalid input,
3 finished with per-device failures, 130 interrupted (the operation goes on; follow it with its status
command). Shell completion: fleetflow completion --help.`,
		Example: `  fleetflow dev up
  fleetflow provision --count 1000 --prefix sim-
  fleetflow devices query "SELECT * FROM devices WHERE tags.region = 'eu'" -o yaml
  fleetflow rollout start --firmware 2.1.0 --query "SELECT * FROM devices" --detach`,
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
	pf.StringVar(&g.cfg.MQTTURL, "mqtt-url", g.cfg.MQTTURL, "MQTT broker URL for devices, tcp:// or ssl:// (FLEETFLOW_MQTT_URL)")
	pf.StringVar(&g.cfg.MQTTCA, "mqtt-ca", g.cfg.MQTTCA, "CA file to verify the gateway with on an ssl:// --mqtt-url (FLEETFLOW_MQTT_CA; default: system roots)")
	pf.StringVar(&g.cfg.NATSURL, "nats-url", g.cfg.NATSURL,
		`NATS servers, comma-separated (nats:// or tls://, credentials as user:password@), through which the gateway, workers and the CLI reach devices (FLEETFLOW_NATS_URL)`)
	// The default comes from FLEETFLOW_NATS_URL, which may hold a password: --help shows it masked.
	pf.Lookup("nats-url").DefValue = channel.RedactURL(g.cfg.NATSURL)
	pf.StringVar(&g.cfg.NATSCA, "nats-ca", g.cfg.NATSCA,
		"CA file to verify tls:// NATS servers with (FLEETFLOW_NATS_CA; default: .fleetflow/tls/ca.pem inside a checkout that has one, else the system's roots)")
	pf.BoolVarP(&g.verbose, "verbose", "v", false, "log debug details to stderr")
	root.AddGroup(commandGroups...)
	root.AddCommand(commands(g)...)
	root.SetHelpCommandGroupID(groupOther)
	root.SetCompletionCommandGroupID(groupOther)
	// Made now rather than at Execute, so that they get the usage-error marking, a group and examples too.
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	for _, c := range root.Commands() {
		if c.GroupID == "" {
			c.GroupID = groupOther
		}
		switch c.Name() {
		case "completion":
			describeCompletion(c)
		case "help":
			c.Example = "  fleetflow help rollout start"
		}
	}
	markUsageErrors(root)
	return root
}
