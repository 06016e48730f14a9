// Command temporal-server runs services of the Temporal server (frontend,
// history, matching, worker, internal-frontend) from a config directory, the
// way the upstream server binary does, linked with the Postgres persistence
// plugin only. `make cluster-test` runs one process per service, two of them
// history hosts (see docs/architecture.md, "Temporal cluster test").
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	"go.temporal.io/server/common/authorization"
	"go.temporal.io/server/common/config"
	"go.temporal.io/server/common/dynamicconfig"
	"go.temporal.io/server/common/log"
	_ "go.temporal.io/server/common/persistence/sql/sqlplugin/postgresql" // Postgres persistence
	"go.temporal.io/server/temporal"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "temporal-server:", err)
		os.Exit(1)
	}
}

func run() error {
	configDir := flag.String("config", "config", "directory holding <env>.yaml")
	env := flag.String("env", "development", "config file name without .yaml")
	services := flag.String("services", strings.Join(temporal.DefaultServices, ","), "comma-separated services to run in this process")
	flag.Parse()

	cfg, err := config.LoadConfig(*env, *configDir, "")
	if err != nil {
		return fmt.Errorf("load config %s/%s: %w", *configDir, *env, err)
	}
	logger := log.NewZapLogger(log.BuildZapLogger(cfg.Log))

	dc := dynamicconfig.NewNoopClient()
	if cfg.DynamicConfigClient != nil {
		fc, err := dynamicconfig.NewFileBasedClient(cfg.DynamicConfigClient, logger, temporal.InterruptCh())
		if err != nil {
			return fmt.Errorf("dynamic config: %w", err)
		}
		dc = fc
	}
	authorizer, err := authorization.GetAuthorizerFromConfig(&cfg.Global.Authorization)
	if err != nil {
		return fmt.Errorf("authorizer: %w", err)
	}
	claimMapper, err := authorization.GetClaimMapperFromConfig(&cfg.Global.Authorization, logger)
	if err != nil {
		return fmt.Errorf("claim mapper: %w", err)
	}

	s, err := temporal.NewServer(
		temporal.ForServices(strings.Split(*services, ",")),
		temporal.WithConfig(cfg),
		temporal.WithDynamicConfigClient(dc),
		temporal.WithLogger(logger),
		temporal.InterruptOn(temporal.InterruptCh()),
		temporal.WithAuthorizer(authorizer),
		temporal.WithClaimMapper(func(*config.Config) authorization.ClaimMapper { return claimMapper }),
	)
	if err != nil {
		return fmt.Errorf("create server: %w", err)
	}
	// Start blocks until the interrupt channel fires (SIGINT/SIGTERM).
	if err := s.Start(); err != nil {
		return fmt.Errorf("start server: %w", err)
	}
	return nil
}
