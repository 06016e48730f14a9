package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/report"
)

// reportOperations caps the operations a report lists; a fleet with more in flight has the Temporal UI.
const reportOperations = 200

// newReportCmd is `fleetflow report`: the fleet at a glance, for a terminal, a script (JSON) or a browser.
func newReportCmd(g *globals) *cobra.Command {
	var htmlPath string
	var out *output
	cmd := &cobra.Command{
		Use:   "report [-o text|json|yaml] [--html FILE]",
		Short: "The fleet at a glance: devices, firmware versions, open alerts, operations in flight, health trend",
		Long: `Report the fleet at a glance: devices by status and connection, firmware versions, open alerts by
kind, the operations in flight with their progress (from Temporal's visibility), and the trend of the last
health checks. The registry is read in one consistent snapshot with a few GROUP BY queries, so the report
stays fast on a million devices. When Temporal cannot be reached the report says so and shows the rest.

--html FILE also writes the report as one self-contained HTML page (inline CSS and SVG charts, no scripts,
nothing fetched) that a browser opens offline.`,
		Example: `  fleetflow report
  fleetflow report -o json | jq .devices
  fleetflow report -o yaml
  fleetflow report --html fleet.html`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runReport(cmd.Context(), g, cmd.OutOrStdout(), out, htmlPath)
		},
	}
	out = addOutputFlag(cmd)
	cmd.Flags().StringVar(&htmlPath, "html", "", "also write a self-contained HTML report to FILE")
	return cmd
}

// runReport gathers the report and writes it to w as text or JSON, and to htmlPath as a page.
func runReport(ctx context.Context, g *globals, w io.Writer, out *output, htmlPath string) error {
	// Temporal is asked while the registry counts, so an unreachable Temporal costs no time on top.
	type opsResult struct {
		ops  []report.Operation
		more bool
		err  error
	}
	opsc := make(chan opsResult, 1)
	go func() {
		ops, more, err := operationsInFlight(ctx, g)
		opsc <- opsResult{ops, more, err}
	}()

	reg, err := openRegistryCtx(ctx, g)
	if err != nil {
		return err
	}
	defer reg.Close()
	fleet, err := reg.ReportData(ctx)
	if err != nil {
		return err
	}
	d := report.Data{FleetReport: fleet}
	res := <-opsc
	d.Operations, d.OperationsMore = res.ops, res.more
	if res.err != nil {
		d.OperationsError = res.err.Error()
	}

	if htmlPath != "" {
		if err := writeHTMLReport(htmlPath, d); err != nil {
			return err
		}
		defer fmt.Fprintf(os.Stderr, "HTML report written to %s\n", htmlPath)
	}
	return out.print(w, d, func() error { return report.BuildText(w, d) })
}

// operationsInFlight lists the running fleet operations from Temporal's visibility.
func operationsInFlight(ctx context.Context, g *globals) ([]report.Operation, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := dialTemporal(g)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	return report.ListOperations(ctx, c, g.cfg.Namespace, reportOperations)
}

// writeHTMLReport writes the page next to path and renames it into place, so that a web server or a
// browser never sees half a report when a scheduled run overwrites the last one.
func writeHTMLReport(path string, d report.Data) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write html report: %w", err)
	}
	defer os.Remove(f.Name()) //nolint:errcheck // gone after the rename; removes the partial file on failure
	if err := report.HTML(f, d); err != nil {
		_ = f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		_ = f.Close()
		return fmt.Errorf("write html report: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write html report: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write html report: %w", err)
	}
	return nil
}
