package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// historyTimeLayout shows milliseconds: a reconnect storm puts several entries in one second.
const historyTimeLayout = "2006-01-02 15:04:05.000"

// newDeviceHistoryCmd is `fleetflow devices history ID`: one device's timeline across the lifecycle.
func newDeviceHistoryCmd(g *globals) *cobra.Command {
	var limit int
	var out *output
	cmd := &cobra.Command{
		Use:   "history ID [--limit N] [-o text|json|yaml]",
		Short: "Show a device's timeline: provisioning, connections, desired and tag changes, jobs, rollouts, alerts and retirement",
		Long: `Show what happened to one device, oldest first: when and by which operation it was provisioned, its
connections, every desired-property and tag change, the jobs and rollouts that reached it and their outcome,
its alerts, its last activity and reported version, and its retirement or replacement. Reported-property
changes are not listed one by one (they are too frequent); jobs and rollouts show what the device acknowledged.
A retired device whose row has been removed is answered from the archive.`,
		Example: `  fleetflow devices history sensor-0042
  fleetflow devices history sensor-0042 --limit 0 -o json`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: completeFrom(g, registry.CandidateDevices, 1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// One more than asked tells whether older entries were left out.
			ask := limit
			if ask > 0 {
				ask++
			}
			entries, err := readDevice(cmd, g, args[0], func(reg *registry.Registry, ctx context.Context, id string) ([]registry.HistoryEntry, error) {
				return reg.DeviceHistory(ctx, id, ask)
			})
			if err != nil {
				return err
			}
			more := limit > 0 && len(entries) > limit
			if more {
				entries = entries[1:]
			}
			if entries == nil {
				entries = []registry.HistoryEntry{} // [] rather than null for scripts
			}
			return out.print(stdout(cmd), entries, func() error { return printHistory(entries, limit, more) })
		},
	}
	cmd.Flags().IntVar(&limit, "limit", 100, "show the newest N entries (0 = all)")
	out = addOutputFlag(cmd)
	return cmd
}

// printHistory prints a timeline as a table, newest last, in the operator's time zone.
func printHistory(entries []registry.HistoryEntry, limit int, more bool) error {
	if more {
		fmt.Printf("(the newest %d entries; --limit 0 shows all)\n", limit)
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "TIME\tSTAGE\tWHAT")
	for _, e := range entries {
		fmt.Fprintf(w, "%s\t%s\t%s\n", e.At.Local().Format(historyTimeLayout), e.Stage, e.Summary)
	}
	return w.Flush()
}
