package main

import "github.com/spf13/cobra"

// The command groups of `fleetflow --help`: the stages of a device's life, then the local stack.
const (
	groupPlan      = "plan"
	groupProvision = "provision"
	groupConfigure = "configure"
	groupMonitor   = "monitor"
	groupRetire    = "retire"
	groupStack     = "stack"
	groupOther     = "other"
)

// commandGroups lists the groups in the order help shows them.
var commandGroups = []*cobra.Group{
	{ID: groupPlan, Title: "Plan (read the fleet, manage the firmware catalogue):"},
	{ID: groupProvision, Title: "Provision:"},
	{ID: groupConfigure, Title: "Configure (twins, methods, bulk jobs, firmware rollouts):"},
	{ID: groupMonitor, Title: "Monitor:"},
	{ID: groupRetire, Title: "Retire:"},
	{ID: groupStack, Title: "Local stack:"},
	{ID: groupOther, Title: "Other:"},
}

// commands lists the CLI's top-level subcommands, each in its lifecycle group; each lives in its own file.
// A command added without a group lands in "Other".
func commands(g *globals) []*cobra.Command {
	return concat(
		inGroup(groupPlan,
			newDevicesCmd(g),  // devices get|query|history|disable|enable (cmd_devices.go)
			newFirmwareCmd(g), // firmware add|list (cmd_rollout.go)
			newSchemeCmd(g),   // scheme set|show|history|check (cmd_scheme.go)
			newGroupCmd(g),    // group create|add|remove|list|show|delete (cmd_group.go)
		),
		inGroup(groupProvision,
			newProvisionCmd(g),   // provision (cmd_provision.go)
			newCACmd(g),          // ca init|show (cmd_ca.go)
			newCredentialsCmd(g), // credentials rotate|status (cmd_credentials.go)
			newEnrollCmd(g),      // enroll create|list|show|disable|enable|secret (cmd_enroll.go)
		),
		inGroup(groupConfigure,
			newTwinCmd(g),    // twin get|set-desired|set-tags (cmd_twin.go)
			newMethodCmd(g),  // method invoke (cmd_twin.go)
			newJobCmd(g),     // job start|status|pause|resume|cancel (cmd_job.go)
			newRolloutCmd(g), // rollout plan|start|status|pause|resume|approve|abort (cmd_rollout.go)
			newConfigCmd(g),  // config apply|list|status|pause|resume|delete (cmd_config.go)
		),
		inGroup(groupMonitor,
			newHealthCmd(g), // health schedule|unschedule|run|status (cmd_health.go)
			newAlertsCmd(g), // alerts list|ack (cmd_health.go)
			newReportCmd(g), // report (cmd_report.go)
		),
		inGroup(groupRetire,
			newRetireCmd(g),  // retire (cmd_retire.go)
			newReplaceCmd(g), // replace OLD NEW (cmd_retire.go)
			newPurgeCmd(g),   // purge --older-than (cmd_retire.go)
		),
		inGroup(groupStack,
			newDevCmd(g),      // dev up|down|status|simulate (cmd_dev.go)
			newGatewayCmd(g),  // gateway (cmd_gateway.go)
			newSimulateCmd(g), // simulate (cmd_simulate.go)
			newNATSNodeCmd(g), // nats-node (cmd_natsnode.go)
		),
		inGroup(groupOther,
			newMigrateCmd(g), // migrate [--status] (cmd_migrate.go)
			newVersionCmd(),  // version (cmd_version.go)
		),
	)
}

// inGroup puts cmds in the help group id.
func inGroup(id string, cmds ...*cobra.Command) []*cobra.Command {
	for _, c := range cmds {
		c.GroupID = id
	}
	return cmds
}

func concat(groups ...[]*cobra.Command) []*cobra.Command {
	var all []*cobra.Command
	for _, g := range groups {
		all = append(all, g...)
	}
	return all
}
