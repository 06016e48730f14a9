package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/registry"
)

// newMigrateCmd is `fleetflow migrate [--status]`: the only way, with `dev up`, that the registry's schema
// changes. Other commands and processes refuse a schema that is not theirs and point here.
func newMigrateCmd(g *globals) *cobra.Command {
	var status bool
	var o *output
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Bring the registry's database schema to this fleetflow's version",
		Long: `Apply the registry's pending schema migrations to the database named by --database-url
(FLEETFLOW_DATABASE_URL), and print what was applied.

Migrations are recorded in the table goose_db_version (the goose migration tool's), so several
"fleetflow migrate" runs at once are safe: one applies, the others wait and find nothing to do.
A database migrated by an older fleetflow (table schema_migrations) is adopted: its migrations are
recorded, not run again. "fleetflow dev up" migrates the local stack's database itself; other
commands, the gateway and the workers never migrate, and stop with a hint to run this command when
the schema is behind.

With --status, nothing changes: the database's version, this fleetflow's, and each migration.`,
		Example: `  fleetflow migrate
  fleetflow migrate --status
  fleetflow migrate --status -o yaml
  FLEETFLOW_DATABASE_URL=postgres://fleetflow@db.internal/fleetflow fleetflow migrate`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			if status {
				st, err := registry.Status(cmd.Context(), g.cfg.DatabaseURL)
				if err != nil {
					return err
				}
				return o.print(out, st, func() error { return printSchemaStatus(out, st) })
			}
			applied, err := registry.Migrate(cmd.Context(), g.cfg.DatabaseURL)
			if o.structured() && err == nil {
				if applied == nil {
					applied = []registry.Migration{}
				}
				return o.print(out, struct {
					Applied []registry.Migration `json:"applied"`
					Version int64                `json:"version"`
				}{applied, registry.SchemaVersion()}, nil)
			}
			for _, m := range applied {
				if m.Adopted {
					fmt.Fprintf(out, "adopted %s (applied by an older fleetflow)\n", m.Name)
				} else {
					fmt.Fprintf(out, "applied %s (%s)\n", m.Name, m.Duration.Round(time.Millisecond))
				}
			}
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintf(out, "schema at version %d, up to date\n", registry.SchemaVersion())
			} else {
				fmt.Fprintf(out, "schema at version %d\n", registry.SchemaVersion())
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&status, "status", false, "show the schema versions and each migration; change nothing")
	o = addOutputFlag(cmd)
	return cmd
}

// printSchemaStatus prints the database's schema version against the binary's, then each migration.
func printSchemaStatus(out io.Writer, st registry.SchemaStatus) error {
	switch {
	case st.Current == st.Latest:
		fmt.Fprintf(out, "schema at version %d, up to date\n", st.Current)
	case st.Current > st.Latest:
		fmt.Fprintf(out, "schema at version %d, newer than this fleetflow's %d: upgrade fleetflow\n", st.Current, st.Latest)
	case st.Legacy:
		fmt.Fprintf(out, "schema migrated by an older fleetflow; this fleetflow needs version %d: run `fleetflow migrate` to adopt it\n", st.Latest)
	default:
		fmt.Fprintf(out, "schema at version %d, this fleetflow needs %d: run `fleetflow migrate`\n", st.Current, st.Latest)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tMIGRATION\tAPPLIED")
	for _, m := range st.Migrations {
		at := "pending"
		if m.Applied {
			at = m.AppliedAt.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\n", m.Version, m.Name, at)
	}
	return tw.Flush()
}
