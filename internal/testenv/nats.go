package testenv

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/natsnode"
)

// NATSCluster is a throwaway NATS cluster on loopback (docs/architecture.md, "Scale-out: gateways over NATS").
type NATSCluster struct {
	Nodes []*natsnode.Node
}

// URL is every node's client URL, comma-separated, as FLEETFLOW_NATS_URL takes it.
func (c *NATSCluster) URL() string {
	urls := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		urls[i] = n.ClientURL()
	}
	return strings.Join(urls, ",")
}

// StartNATSCluster starts n NATS nodes on free loopback ports, routed into one cluster (n = 1 is a single node
// without a route listener), waits until every node has a route to every other one, and stops them when the
// test ends. Tests may Close a node early to see the cluster lose it; closing twice is harmless.
func StartNATSCluster(t testing.TB, n int) *NATSCluster {
	t.Helper()
	if n < 1 {
		t.Fatalf("StartNATSCluster: %d nodes", n)
	}
	c := &NATSCluster{}
	t.Cleanup(func() {
		for _, node := range c.Nodes {
			node.Close()
		}
	})
	var seed string
	for i := 0; i < n; i++ {
		cfg := natsnode.Config{Name: fmt.Sprintf("%s-nats-%d", dbName(t.Name()), i+1), Listen: "127.0.0.1:0"}
		if n > 1 {
			cfg.ClusterListen = "127.0.0.1:0"
			if seed != "" {
				// Routes gossip: pointing every node at the first one yields a full mesh.
				cfg.Routes = []string{seed}
			}
		}
		node, err := natsnode.Start(cfg)
		if err != nil {
			t.Fatalf("start NATS node %d: %v", i+1, err)
		}
		c.Nodes = append(c.Nodes, node)
		if seed == "" {
			seed = node.ClusterURL()
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, node := range c.Nodes {
		for node.NumPeers() < n-1 {
			if time.Now().After(deadline) {
				t.Fatalf("NATS cluster of %d did not form within 60 s (node %s has %d peers)", n, node.ClientURL(), node.NumPeers())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return c
}

// NATS starts a single throwaway NATS node for the test and returns its client URL.
func NATS(t testing.TB) string {
	t.Helper()
	return StartNATSCluster(t, 1).URL()
}
