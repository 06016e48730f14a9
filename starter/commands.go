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
	}
}
