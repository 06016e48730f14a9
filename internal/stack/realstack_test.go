package stack_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/registry/registrytest"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// `dev up --gateways 3 --nats-nodes 2` with the real binaries: three gateways listen on their ports, `dev
// simulate` spreads its devices over all three, `dev status` shows a line per gateway with its devices, and a
// method reaches a device on every gateway.
func TestDevUpWithThreeGateways(t *testing.T) {
	bins, err := testenv.BuildBinaries(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	_, opts := newTestStack(t, &out, 1)
	opts.GatewayBin, opts.WorkerBin, opts.Gateways, opts.NATSNodes = bins.CLI, bins.Worker, 3, 2
	s, err := stack.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		_ = s.Down(ctx)
		_ = s.Purge()
	})
	if err := s.Up(ctx); err != nil {
		t.Fatalf("up: %v\n%s", err, out.String())
	}
	t.Logf("up:\n%s", out.String())

	const n = 30
	reg, err := registry.Open(ctx, opts.Config.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	list := registrytest.Provision(t, reg, "stack", n)
	reg.Close()

	urls, _, ok := s.SimulatorTLS()
	if !ok || strings.Count(urls, "ssl://") != 3 {
		t.Fatalf("SimulatorTLS = %q, %v; want the three gateways' TLS listeners", urls, ok)
	}
	// dev simulate: the real simulator in the background, given the stack's gateways.
	credsFile := filepath.Join(t.TempDir(), "creds.ndjson")
	w, err := creds.Create(credsFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range list {
		if err := w.Write(c); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := s.StartSimulator(ctx, []string{"--creds", credsFile, "--telemetry-every", "0", "--status-every", "1s"}); err != nil {
		t.Fatalf("dev simulate: %v\n%s", err, out.String())
	}
	simLog := filepath.Join(opts.Root, ".fleetflow", "logs", "simulator.log")
	waitFor(t, 60*time.Second, func() bool {
		b, _ := os.ReadFile(simLog)
		return strings.Contains(string(b), fmt.Sprintf("reported=%d ", n))
	}, func() string { b, _ := os.ReadFile(simLog); return string(b) })
	if b, _ := os.ReadFile(simLog); !strings.Contains(string(b), "against "+strings.ReplaceAll(urls, ",", ", ")) {
		t.Errorf("the simulator was not given every gateway (%s):\n%s", urls, b)
	}

	// Each gateway holds a third of the devices, as its metrics say and dev status shows.
	var parts []stack.PartStatus
	waitFor(t, 30*time.Second, func() bool {
		parts, err = s.Status(ctx)
		found := 0
		for _, p := range parts {
			if strings.HasPrefix(p.Name, "gateway-") && p.Devices != nil && *p.Devices == n/3 {
				found++
			}
		}
		return err == nil && found == 3
	}, func() string { return fmt.Sprintf("%+v", parts) })

	env := append(os.Environ(), "FLEETFLOW_DATABASE_URL="+opts.Config.DatabaseURL, "TEMPORAL_ADDRESS="+opts.Config.TemporalAddress,
		"FLEETFLOW_MQTT_URL="+opts.Config.MQTTURL, "FLEETFLOW_GATEWAY_TLS_LISTEN="+opts.Config.GatewayTLSListen,
		"FLEETFLOW_NATS_URL="+opts.NATSURL, "FLEETFLOW_NATS_CLUSTER_LISTEN="+opts.NATSClusterListen)
	cli := func(args ...string) (string, string, error) {
		cmd := exec.Command(bins.CLI, args...)
		cmd.Dir, cmd.Env = opts.Root, env
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		return stdout.String(), stderr.String(), err
	}
	status, _, err := cli("dev", "status")
	if err != nil {
		t.Fatalf("dev status: %v\n%s", err, status)
	}
	var gatewayLines []string
	for _, line := range strings.Split(status, "\n") {
		if strings.HasPrefix(line, "gateway") {
			gatewayLines = append(gatewayLines, line)
		}
	}
	if len(gatewayLines) != 3 {
		t.Fatalf("dev status: %d lines start with gateway, want 3:\n%s", len(gatewayLines), status)
	}
	for i, line := range gatewayLines {
		f := strings.Fields(line)
		// PART ADDRESS, tls ADDRESS HEALTH PID DEVICES NOTE…
		if len(f) < 7 || f[0] != fmt.Sprintf("gateway-%d", i+1) || f[4] != "running" || f[6] != fmt.Sprint(n/3) {
			t.Errorf("dev status line %q: want gateway-%d running with %d devices", line, i+1, n/3)
		}
	}
	t.Logf("dev status:\n%s", status)

	// Device i is on gateway i mod 3 (the simulator's round-robin): a method reaches each of them over NATS,
	// whichever gateway holds the session.
	for i := range 3 {
		if stdout, stderr, err := cli("method", "invoke", list[i].ID, "ping"); err != nil || !strings.Contains(stdout, `"pong": true`) {
			t.Errorf("ping %s on gateway-%d: %v\n%s%s", list[i].ID, i+1, err, stdout, stderr)
		}
	}

	// Shrinking to two gateways stops gateway-3: its devices reconnect to the other two, half to each, and
	// are reachable there (device 2, of gateway-3, fails over to gateway-1 first).
	out.Reset()
	two := opts
	two.Gateways = 2
	if s, err = stack.New(two); err != nil {
		t.Fatal(err)
	}
	if err := s.Up(ctx); err != nil {
		t.Fatalf("up --gateways 2: %v\n%s", err, out.String())
	}
	waitFor(t, 60*time.Second, func() bool {
		parts, err = s.Status(ctx)
		found := 0
		for _, p := range parts {
			if (p.Name == "gateway-1" || p.Name == "gateway-2") && p.Devices != nil && *p.Devices == n/2 {
				found++
			}
		}
		return err == nil && found == 2
	}, func() string { return fmt.Sprintf("%+v", parts) })
	if stdout, stderr, err := cli("method", "invoke", list[2].ID, "ping"); err != nil || !strings.Contains(stdout, `"pong": true`) {
		t.Errorf("ping %s after its gateway stopped: %v\n%s%s", list[2].ID, err, stdout, stderr)
	}
}

// waitFor polls cond until it holds or the timeout passes, then fails with what describe says.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool, describe func() string) {
	t.Helper()
	for deadline := time.Now().Add(timeout); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %s", timeout, describe())
		}
	}
}
