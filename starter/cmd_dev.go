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
		Short: "Run the local stack: Postgres, the Temporal dev server, the MQTT gateway and workers",
		Long: `Run the local stack of this checkout.

Each part is reused when its variable names a reachable service (FLEETFLOW_DATABASE_URL, TEMPORAL_ADDRESS,
FLEETFLOW_MQTT_URL) and started locally otherwise. Started parts log to .fleetflow/logs/<part>.log and are
stopped by "fleetflow dev down", which touches nothing it did not start.`,
		Example: `  fleetflow dev up
  fleetflow dev status
  fleetflow dev down --purge`,
	}
	var opts stack.Options
	up := &cobra.Command{
		Use:   "up",
		Short: "Start every part that is not running yet (safe to repeat)",
		Long: `Start every part of the local stack that is not running yet: Postgres, the Temporal dev server, the MQTT
gateway and the workers, from this checkout's binaries. A part whose variable names a reachable service is
used as it is. Safe to repeat.

The gateway serves MQTT over TLS on 127.0.0.1:8883 (FLEETFLOW_GATEWAY_TLS_LISTEN) besides plaintext on
127.0.0.1:1883. Its certificate comes from a local CA that the first dev up creates under .fleetflow/tls/
(ca.pem is what clients trust; keys are 0600) and later runs reuse, re-issuing the server certificate
when it nears its end; FLEETFLOW_TLS_CERT and FLEETFLOW_TLS_KEY name a certificate of your own instead.`,
		Example: `  fleetflow dev up
  fleetflow dev up --workers 3
  FLEETFLOW_DATABASE_URL=postgres://fleet@db.internal/fleet fleetflow dev up`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
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
		Short: "Show each part with its address, health and pid",
		Long: `Show each part of the local stack with its address, health, pid (when dev up started it) and a note, and
the Temporal UI's address.`,
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
			fmt.Fprintln(tw, "PART\tADDRESS\tHEALTH\tPID\tNOTE")
			for _, p := range parts {
				pid := "-"
				if p.PID > 0 {
					pid = strconv.Itoa(p.PID)
				}
				addr := p.Addr
				if p.TLSAddr != "" {
					addr += ", tls " + p.TLSAddr
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", p.Name, addr, p.Health, pid, p.Note)
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
to .fleetflow/logs and dev down stops it. Its devices connect to the stack's gateway over TLS and verify it
against .fleetflow/tls/ca.pem (unless FLEETFLOW_MQTT_URL names another broker).`,
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
