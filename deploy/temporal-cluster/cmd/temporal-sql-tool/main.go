// Command temporal-sql-tool is the Temporal server's SQL schema tool, built
// from the go.temporal.io/server module so `make cluster-test` can create the
// server's schemas in Postgres without a container image (see
// docs/architecture.md, "Temporal cluster test").
package main

import (
	"os"

	_ "go.temporal.io/server/common/persistence/sql/sqlplugin/postgresql" // the only store fleetflow runs Temporal on
	"go.temporal.io/server/tools/sql"
)

func main() {
	if err := sql.RunTool(os.Args); err != nil {
		os.Exit(1)
	}
}
