package main

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/fleetflow/fleetflow/internal/natsnode"
	"github.com/fleetflow/fleetflow/internal/stack"
)

func TestNATSNodeRefusesTheNetworkWithoutTLSAndCredentials(t *testing.T) {
	ok := []natsnode.Config{
		{Listen: "127.0.0.1:4222"},
		{Listen: "[::1]:4222", ClusterListen: "localhost:6222"},
		{Listen: "10.0.0.5:4222", TLSCertFile: "c.pem", TLSKeyFile: "k.pem", User: "u", Password: "p"},
	}
	for _, cfg := range ok {
		require.NoError(t, checkNATSNodeExposure(cfg, false), "%+v", cfg)
	}
	bad := []natsnode.Config{
		{Listen: "0.0.0.0:4222"},
		{Listen: ":4222"},
		{Listen: "127.0.0.1:4222", ClusterListen: "10.0.0.5:6222", User: "u", Password: "p"}, // no TLS
		{Listen: "10.0.0.5:4222", TLSCertFile: "c.pem", TLSKeyFile: "k.pem"},                 // no credentials
	}
	for _, cfg := range bad {
		require.ErrorContains(t, checkNATSNodeExposure(cfg, false), "not a loopback address", "%+v", cfg)
		require.NoError(t, checkNATSNodeExposure(cfg, true), "--allow-insecure: %+v", cfg)
	}
	require.ErrorContains(t, checkNATSNodeExposure(natsnode.Config{Listen: "127.0.0.1:1", User: "u"}, false), "go together")
}

// The command runs a node until its context ends; the stack's dev up starts it like this.
func TestNATSNodeCommandServesUntilStopped(t *testing.T) {
	port, err := stack.FreePort()
	require.NoError(t, err)
	route, err := stack.FreePort()
	require.NoError(t, err)
	listen, cluster := fmt.Sprintf("127.0.0.1:%d", port), fmt.Sprintf("127.0.0.1:%d", route)
	root := newRoot()
	var out syncBuffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs([]string{"nats-node", "--name", "t1", "--listen", listen, "--cluster-listen", cluster, "--routes", "nats://" + cluster})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	want := "nats node t1 listening on nats://" + listen + ", routes on nats://" + cluster
	require.Eventually(t, func() bool { return strings.Contains(out.String(), want) }, 20*time.Second, 20*time.Millisecond,
		"output:\n%s", out.String())
	require.True(t, stack.Reachable(listen, time.Second) && stack.Reachable(cluster, time.Second))
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("nats-node did not stop with its context")
	}
	require.False(t, stack.Reachable(listen, time.Second), "still listening after stop")
	require.True(t, strings.HasSuffix(out.String(), "nats node stopped\n"), out.String())
}

// syncBuffer is a bytes.Buffer safe for the command's writes and the test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Wrong stack settings are usage errors (exit 2), refused before anything starts or listens.
func TestStackUsageErrors(t *testing.T) {
	t.Setenv("FLEETFLOW_NATS_USER", "")
	t.Setenv("FLEETFLOW_NATS_PASSWORD", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"nats-node", "--listen", "0.0.0.0:4222"}, "--allow-insecure"},
		{[]string{"dev", "up", "--gateways", "-1"}, "positive number"},
		{[]string{"dev", "up", "--nats-nodes", "-2"}, "positive number"},
	} {
		_, _, code, err := runCLI(t, tc.args...)
		require.Error(t, err, "%v", tc.args)
		require.Equal(t, exitUsage, code, "%v: %v", tc.args, err)
		require.Contains(t, err.Error(), tc.want)
	}
}
