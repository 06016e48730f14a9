package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/stack"
)

// newDevCmd is `fleetflow dev up | down | status`: the local stack a newcomer needs for the demo, started
// from the checkout's own binaries and reusing whatever services the environment already names.
func newDevCmd(g *globals) *cobra.Command {
	dev := &cobra.Command{
		Use:   "dev",
		Short: "Run the local stack: Postgres, the Temporal dev server, NATS, the MQTT gateways and workers",
		Long: `Run the local stack of this checkout.

Each part is reused when its variable names a reachable service (FLEETFLOW_DATABASE_URL, TEMPORAL_ADDRESS,
FLEETFLOW_NATS_URL, FLEETFLOW_MQTT_URL) and started locally otherwise. Started parts log to .fleetflow/logs/<part>.log and are
stopped by "fleetflow dev down", which touches nothing it did not start.`,
		Example: `  fleetflow dev up
  fleetflow dev status
  fleetflow dev down --purge`,
	}
	var opts stack.Options
	up := &cobra.Command{
		Use:   "up",
		Short: "Start every part that is not running yet (safe to repeat)",
		Long: `Start every part of the local stack that is not running yet: Postgres, the Temporal dev server, the NATS
node(s), the MQTT gateway(s) and the workers, from this checkout's binaries. A part whose variable names a
reachable service is used as it is. Safe to repeat; with other numbers of --gateways, --workers or
--nats-nodes it grows or shrinks the stack to them (the highest-numbered parts stop first).

Ports: NATS node j ("fleetflow nats-node") listens for clients on 127.0.0.1:4222+j-1 and for routes on
127.0.0.1:6222+j-1; gateway i serves MQTT on 127.0.0.1:1883+i-1, MQTT over TLS on 127.0.0.1:8883+i-1 and
metrics on 127.0.0.1:9464+100*(i-1); worker n serves metrics on 127.0.0.1:9465+n-1. FLEETFLOW_NATS_URL
naming a reachable cluster makes dev up start no NATS node; the gateways and workers are given it.

The gateways' TLS certificate comes from a local CA that the first dev up creates under .fleetflow/tls/
(ca.pem is what clients trust; keys are 0600) and later runs reuse, re-issuing the server certificate
when it nears its end; FLEETFLOW_TLS_CERT and FLEETFLOW_TLS_KEY name a certificate of your own instead.`,
		Example: `  fleetflow dev up
  fleetflow dev up --workers 3
  fleetflow dev up --gateways 3 --workers 2 --nats-nodes 3
  FLEETFLOW_NATS_URL=nats://nats-1.internal:4222,nats://nats-2.internal:4222 fleetflow dev up
  FLEETFLOW_DATABASE_URL=postgres://fleet@db.internal/fleet fleetflow dev up`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.Workers < 0 || opts.Gateways < 0 || opts.NATSNodes < 0 {
				return usagef("--workers, --gateways and --nats-nodes take a positive number (or none, to keep what runs)")
			}
			s, err := newStack(cmd, g, opts)
			if err != nil {
				return err
			}
			if err := s.Up(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Temporal UI: "+s.TemporalUI())
			return nil
		},
	}
	up.Flags().IntVar(&opts.Workers, "workers", 0, "number of workers to run (default: keep the running ones, at least 1)")
	up.Flags().IntVar(&opts.Gateways, "gateways", 0, "number of MQTT gateways to run (default: keep the running ones, at least 1)")
	up.Flags().IntVar(&opts.NATSNodes, "nats-nodes", 0, "number of NATS nodes to run as one cluster, unless FLEETFLOW_NATS_URL names a running one (default: keep the running ones, at least 1)")
	up.Flags().StringVar(&opts.WorkerBin, "worker-bin", "", "worker binary (default bin/fleetflow-worker)")
	up.Flags().StringVar(&opts.GatewayBin, "gateway-bin", "", "fleetflow binary run as `fleetflow gateway` (default bin/fleetflow)")
	up.Flags().StringVar(&opts.TemporalCLI, "temporal-cli", "", "temporal CLI binary (default $FLEETFLOW_TEMPORAL_CLI or bin/temporal, built when missing)")

	var purge bool
	down := &cobra.Command{
		Use:   "down",
		Short: "Stop the parts that dev up started, and nothing else",
		Long: `Stop the parts of the local stack that dev up started, and nothing else. --purge also deletes their data:
the local database, Temporal's history and the logs.`,
		Example: `  fleetflow dev down
  fleetflow dev down --purge`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := newStack(cmd, g, stack.Options{})
			if err != nil {
				return err
			}
			if err := s.Down(cmd.Context()); err != nil {
				return err
			}
			if purge {
				return s.Purge()
			}
			return nil
		},
	}
	down.Flags().BoolVar(&purge, "purge", false, "also delete the stack's data: the local database, Temporal history and logs")
	var statusOut *output
	status := &cobra.Command{
		Use:   "status",
		Short: "Show each part with its address, health and pid, and each gateway's connected devices",
		Long: `Show each part of the local stack with its address, health, pid (when dev up started it) and a note, and
the Temporal UI's address. Each gateway has a line of its own (gateway-1, gateway-2, ...) with its MQTT and
TLS addresses and the devices connected to it (read from its metrics); each NATS node too (nats-1, ...).`,
		Example: `  fleetflow dev status
  fleetflow dev status -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := newStack(cmd, g, stack.Options{})
			if err != nil {
				return err
			}
			parts, err := s.Status(cmd.Context())
			if err != nil {
				return err
			}
			if statusOut.structured() {
				return statusOut.print(cmd.OutOrStdout(), struct {
					Parts      any    `json:"parts"`
					TemporalUI string `json:"temporalUi"`
				}{parts, s.TemporalUI()}, nil)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PART\tADDRESS\tHEALTH\tPID\tDEVICES\tNOTE")
			for _, p := range parts {
				pid, devices := "-", "-"
				if p.PID > 0 {
					pid = strconv.Itoa(p.PID)
				}
				if p.Devices != nil {
					devices = strconv.FormatInt(*p.Devices, 10)
				}
				addr := p.Addr
				if p.TLSAddr != "" {
					addr += ", tls " + p.TLSAddr
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, addr, p.Health, pid, devices, p.Note)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "Temporal UI: "+s.TemporalUI())
			return nil
		},
	}
	simulate := &cobra.Command{
		Use:   "simulate -- [simulate flags]",
		Short: "Run `fleetflow simulate` in the background as part of the stack (dev down stops it)",
		Long: `Run "fleetflow simulate" in the background as a part of the local stack, with the flags after --; it logs
to .fleetflow/logs and dev down stops it. Its devices are spread over all the stack's gateways (and fail
over between them), connect over TLS and verify the gateways against .fleetflow/tls/ca.pem (unless
FLEETFLOW_MQTT_URL names another broker).`,
		Example: "  fleetflow dev simulate -- --creds .fleetflow/demo/creds.ndjson",
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := newStack(cmd, g, stack.Options{})
			if err != nil {
				return err
			}
			return s.StartSimulator(cmd.Context(), args)
		},
	}
	statusOut = addOutputFlag(status)
	dev.AddCommand(up, down, status, simulate)
	return dev
}

// newStack fills the options every dev subcommand shares: the checkout, the effective configuration and
// which addresses the user chose explicitly (environment variable or flag).
func newStack(cmd *cobra.Command, g *globals, opts stack.Options) (*stack.Stack, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	explicit := func(env, flag string) bool {
		return os.Getenv(env) != "" || cmd.Flags().Changed(flag)
	}
	opts.Root = root
	opts.Config = g.cfg
	opts.ExplicitDatabase = explicit("FLEETFLOW_DATABASE_URL", "database-url")
	opts.ExplicitTemporal = explicit("TEMPORAL_ADDRESS", "temporal-address")
	opts.ExplicitMQTT = explicit("FLEETFLOW_MQTT_URL", "mqtt-url")
	opts.ExplicitNATS = os.Getenv("FLEETFLOW_NATS_URL") != ""
	if f := cmd.Flags().Lookup("nats-url"); f != nil && f.Changed {
		opts.NATSURL, opts.ExplicitNATS = f.Value.String(), true
	} else {
		opts.NATSURL = os.Getenv("FLEETFLOW_NATS_URL")
	}
	opts.NATSClusterListen = os.Getenv("FLEETFLOW_NATS_CLUSTER_LISTEN")
	opts.GatewayListen = os.Getenv("FLEETFLOW_GATEWAY_LISTEN")
	opts.Out = cmd.OutOrStdout()
	return stack.New(opts)
}

// repoRoot finds the checkout from the working directory, else from the binary's location (bin/fleetflow),
// so `dev down` works from anywhere inside the tree and from the binary's own path.
func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err == nil {
		if root, err := stack.FindRoot(wd); err == nil {
			return root, nil
		}
	}
	if exe, err := os.Executable(); err == nil {
		if root, err := stack.FindRoot(filepath.Dir(filepath.Dir(exe))); err == nil {
			return root, nil
		}
	}
	return "", fmt.Errorf("cannot find the fleetflow checkout (no go.mod above %s); run this inside it", wd)
}
