package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/natsnode"
)

// newNATSNodeCmd is `fleetflow nats-node`: one node of the NATS cluster that carries the device channel
// between gateways, workers and the CLI, run in the foreground. `fleetflow dev up` starts its nodes with it;
// in production it is one way to run the cluster (any NATS server cluster will do).
func newNATSNodeCmd(g *globals) *cobra.Command {
	var (
		cfg      natsnode.Config
		insecure bool
	)
	cmd := &cobra.Command{
		Use:   "nats-node",
		Short: "Run one node of the NATS cluster that links gateways, workers and the CLI, in the foreground",
		Long: `Run one NATS server node (nats-server, embedded) in the foreground. Gateways, workers and the CLI reach
devices through a NATS cluster (FLEETFLOW_NATS_URL): the gateway holding a device's session subscribes to
its subjects, workers and the CLI publish desired patches and call methods there.

A single node needs only --listen. For a cluster, give each node its own --name and --cluster-listen, and
every node the same --routes (the route URLs of all nodes; a node ignores its own). Nodes may start in any
order and keep trying their routes. "fleetflow dev up --nats-nodes K" runs K of these on 127.0.0.1: node j
listens for clients on port 4222+j-1 and for routes on 6222+j-1.

Off loopback the node refuses to start without TLS (--tls-cert, --tls-key, and --tls-ca, which route peers
must be signed by) and credentials (FLEETFLOW_NATS_USER and FLEETFLOW_NATS_PASSWORD, then required from
clients and route peers), unless --allow-insecure says the network is trusted. The node stops on SIGINT
or SIGTERM.`,
		Example: `  fleetflow nats-node
  fleetflow nats-node --name n1 --listen 127.0.0.1:4222 --cluster-listen 127.0.0.1:6222 --routes nats://127.0.0.1:6222,nats://127.0.0.1:6223
  FLEETFLOW_NATS_USER=fleet FLEETFLOW_NATS_PASSWORD=... fleetflow nats-node --listen 10.0.0.5:4222 --cluster-listen 10.0.0.5:6222 \
    --routes nats://10.0.0.5:6222,nats://10.0.0.6:6222,nats://10.0.0.7:6222 --tls-cert node.pem --tls-key node-key.pem --tls-ca ca.pem`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.User, cfg.Password = os.Getenv("FLEETFLOW_NATS_USER"), os.Getenv("FLEETFLOW_NATS_PASSWORD")
			if err := checkNATSNodeExposure(cfg, insecure); err != nil {
				return asUsage(err)
			}
			level := slog.LevelInfo
			if g.verbose {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			node, err := natsnode.Start(cfg)
			if err != nil {
				return err
			}
			if c := node.ClusterURL(); c != "" {
				fmt.Fprintf(cmd.OutOrStdout(), "nats node %s listening on %s, routes on %s (Ctrl-C to stop)\n", cfg.Name, node.ClientURL(), c)
			} else {
				fmt.Fprintf(cmd.OutOrStdout(), "nats node %s listening on %s (Ctrl-C to stop)\n", cfg.Name, node.ClientURL())
			}
			<-cmd.Context().Done()
			node.Close()
			fmt.Fprintln(cmd.OutOrStdout(), "nats node stopped")
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Name, "name", "", "server name, unique in the cluster (default: from --listen)")
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:4222", "host:port of the client listener")
	f.StringVar(&cfg.ClusterName, "cluster-name", "fleetflow", "name every node of the cluster shares")
	f.StringVar(&cfg.ClusterListen, "cluster-listen", "", "host:port of the route listener (empty: a single node)")
	f.StringSliceVar(&cfg.Routes, "routes", nil, "nats://host:port of the nodes' route listeners, comma-separated or repeated")
	f.StringVar(&cfg.TLSCertFile, "tls-cert", "", "PEM certificate of the node, for clients and routes")
	f.StringVar(&cfg.TLSKeyFile, "tls-key", "", "PEM private key of --tls-cert")
	f.StringVar(&cfg.TLSCAFile, "tls-ca", "", "PEM CA that route peers' certificates must chain to")
	f.BoolVar(&insecure, "allow-insecure", false, "listen on a non-loopback address without TLS or credentials (a trusted network only)")
	return cmd
}

// checkNATSNodeExposure refuses a node reachable from the network without TLS or without credentials, unless
// insecure says the network is trusted: the bus carries the desired state and method calls of every device,
// and whoever can publish on it can command the fleet. It is the rule of the gateway's plaintext listener.
func checkNATSNodeExposure(cfg natsnode.Config, insecure bool) error {
	if (cfg.User == "") != (cfg.Password == "") {
		return errors.New("FLEETFLOW_NATS_USER and FLEETFLOW_NATS_PASSWORD go together")
	}
	for _, addr := range []string{cfg.Listen, cfg.ClusterListen} {
		if addr == "" || insecure || gateway.IsLoopbackAddr(addr) {
			continue
		}
		if cfg.TLSCertFile == "" || cfg.User == "" {
			return fmt.Errorf("%s is not a loopback address: a NATS node on the network needs --tls-cert, --tls-key and FLEETFLOW_NATS_USER/FLEETFLOW_NATS_PASSWORD (or --allow-insecure on a trusted network)", addr)
		}
	}
	return nil
}
