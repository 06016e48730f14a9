package main

import (
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/query"
)

func newQueryCmd(g *globals) *cobra.Command {
	var out *output
	var maxRows int
	cmd := &cobra.Command{
		Use:   `query "SELECT ... FROM devices [WHERE ...] [GROUP BY ...]"`,
		Short: "Run a twin query (strongly consistent) and print a table or JSON",
		Long: `query runs a query in the twin query language, e.g.

  SELECT * FROM devices WHERE tags.region = 'eu' AND properties.reported.firmware.version != '2.0.0'
  SELECT properties.reported.model, COUNT() AS n FROM devices GROUP BY properties.reported.model

Retired devices are left out unless the query names status. With -o json (or yaml) the result is an array
with one object per row keyed by the selected names (whole twins for SELECT *). -o table is a synonym of
-o text. A query that does not parse is a usage error (exit 2), with the position of the mistake.`,
		Example: `  fleetflow devices query "SELECT * FROM devices WHERE tags.region = 'eu'"
  fleetflow devices query "SELECT properties.reported.model, COUNT() AS n FROM devices GROUP BY properties.reported.model"
  fleetflow devices query -o json "SELECT deviceId FROM devices WHERE connectionState = 'disconnected'" | jq -r '.[].deviceId'`,
		Args: cobra.ExactArgs(1),
		ValidArgsFunction: func(cmd *cobra.Command, args []string, to string) ([]cobra.Completion, cobra.ShellCompDirective) {
			if len(args) > 0 {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			return completeQueryPaths(g)(cmd, args, to)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			reg, err := openRegistry(cmd, g)
			if err != nil {
				return err
			}
			defer reg.Close()
			res, err := reg.Query(cmd.Context(), args[0], query.Options{MaxRows: maxRows})
			if err != nil {
				return err
			}
			printWarnings(res.Warnings)
			if out.structured() {
				return out.print(stdout(cmd), res.Objects(), nil)
			}
			w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			if res.Star {
				fmt.Fprintln(w, "DEVICE\tSTATUS\tCONNECTION\tTAGS\tREPORTED")
				for _, t := range res.Twins {
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", t.DeviceID, t.Status, t.ConnectionState,
						clip(string(t.Tags), 50), clip(string(t.Properties.Reported.Doc), 60))
				}
				if err := w.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(os.Stderr, "%d devices\n", len(res.Twins))
				return nil
			}
			fmt.Fprintln(w, strings.ToUpper(strings.Join(res.Columns, "\t")))
			for _, r := range res.Rows {
				cells := make([]string, len(r))
				for i, v := range r {
					cells[i] = cell(v)
				}
				fmt.Fprintln(w, strings.Join(cells, "\t"))
			}
			if err := w.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "%d rows\n", len(res.Rows))
			return nil
		},
	}
	out = addOutputFlag(cmd)
	cmd.Flags().IntVar(&maxRows, "max-rows", 1000, "cap on returned rows when the query has no TOP (0: no cap)")
	return cmd
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-1] + "…"
}
