package main

import "github.com/spf13/cobra"

// commands lists the CLI's top-level subcommands; each lives in its own file.
func commands(g *globals) []*cobra.Command {
	return []*cobra.Command{
		newDevCmd(g),      // dev up|down|status (cmd_dev.go)
		newGatewayCmd(g),  // gateway (cmd_gateway.go)
		newSimulateCmd(g), // simulate (cmd_simulate.go)
		newProvisionCmd(g),
		newDevicesCmd(g),
		newTwinCmd(g),
		newMethodCmd(g),   // method invoke (cmd_twin.go)
		newJobCmd(g),      // job start|status|pause|resume|cancel (cmd_job.go)
		newFirmwareCmd(g), // firmware add|list (cmd_rollout.go)
		newRolloutCmd(g),  // rollout plan|start|status|pause|resume|approve|abort (cmd_rollout.go)
		newRetireCmd(g),   // retire (cmd_retire.go)
		newReplaceCmd(g),  // replace OLD NEW (cmd_retire.go)
		newPurgeCmd(g),    // purge --older-than (cmd_retire.go)
		newReportCmd(g),   // report [-o json] [--html FILE] (cmd_report.go)
		newHealthCmd(g),   // health schedule|unschedule|run|status (cmd_health.go)
		newAlertsCmd(g),   // alerts list|ack (cmd_health.go)
		newMigrateCmd(g),  // migrate [--status] (cmd_migrate.go)
		newVersionCmd(),   // version (cmd_version.go)
	}
}
