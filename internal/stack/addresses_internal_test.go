package stack

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fleetflow/fleetflow/internal/config"
)

// The default ports of numbered parts (docs/architecture.md, "Several gateways"), and how they move with the
// variables that name the first part.
func TestPortsOfNumberedParts(t *testing.T) {
	t.Setenv("FLEETFLOW_GATEWAY_METRICS", "127.0.0.1:9464")
	s, err := New(Options{Root: t.TempDir(), Config: config.Config{MQTTURL: config.DefaultMQTTURL}})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range map[int][3]string{
		1: {"127.0.0.1:1883", "127.0.0.1:8883", "127.0.0.1:9464"},
		2: {"127.0.0.1:1884", "127.0.0.1:8884", "127.0.0.1:9564"},
		3: {"127.0.0.1:1885", "127.0.0.1:8885", "127.0.0.1:9664"},
	} {
		listen, tlsListen, err := s.gatewayAddrs(i)
		if err != nil || listen != want[0] || tlsListen != want[1] || gatewayMetricsAddr(i) != want[2] {
			t.Errorf("gateway %d: %s, %s, metrics %s, %v; want %v", i, listen, tlsListen, gatewayMetricsAddr(i), err, want)
		}
	}
	for j, want := range map[int][2]string{1: {"127.0.0.1:4222", "127.0.0.1:6222"}, 3: {"127.0.0.1:4224", "127.0.0.1:6224"}} {
		client, cluster, err := s.natsAddrs(j)
		if err != nil || client != want[0] || cluster != want[1] {
			t.Errorf("nats node %d: %s, %s, %v; want %v", j, client, cluster, err, want)
		}
	}
	// Worker metrics (9465, 9466, …) and gateway metrics never meet below a hundred workers.
	for n := 1; n < 100; n++ {
		for i := 1; i <= 10; i++ {
			if workerMetrics(n) == gatewayMetricsAddr(i) {
				t.Fatalf("worker %d and gateway %d share metrics address %s", n, i, workerMetrics(n))
			}
		}
	}

	// Moved bases: the first part's variables move the others with them.
	t.Setenv("FLEETFLOW_GATEWAY_METRICS", "")
	s, err = New(Options{Root: t.TempDir(), GatewayListen: "127.0.0.1:11883",
		Config:  config.Config{MQTTURL: config.DefaultMQTTURL, GatewayTLSListen: "[::1]:18883"},
		NATSURL: "nats://fleet:pw@127.0.0.1:14222,nats://127.0.0.1:14223", NATSClusterListen: "127.0.0.1:16222"})
	if err != nil {
		t.Fatal(err)
	}
	if listen, tlsListen, _ := s.gatewayAddrs(2); listen != "127.0.0.1:11884" || tlsListen != "[::1]:18884" {
		t.Errorf("gateway 2 with moved bases: %s, %s", listen, tlsListen)
	}
	if gatewayMetricsAddr(2) != "" {
		t.Errorf("FLEETFLOW_GATEWAY_METRICS= turns every gateway's metrics off, got %q", gatewayMetricsAddr(2))
	}
	if client, cluster, _ := s.natsAddrs(2); client != "127.0.0.1:14223" || cluster != "127.0.0.1:16223" {
		t.Errorf("nats node 2 with moved bases: %s, %s", client, cluster)
	}

	if _, err := offsetPort("127.0.0.1:65535", 1); err == nil {
		t.Error("offsetPort past 65535 succeeded")
	}
	if _, err := offsetPort("no-port", 1); err == nil {
		t.Error("offsetPort without a port succeeded")
	}
	for in, want := range map[string]string{"nats://127.0.0.1": "127.0.0.1:4222", "tls://u:p@[::1]:4333": "[::1]:4333"} {
		if got, err := natsHostPort(in); err != nil || got != want {
			t.Errorf("natsHostPort(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if got := natsURLs(" nats://a:1, ,nats://b:2 "); len(got) != 2 || got[0] != "nats://a:1" || got[1] != "nats://b:2" {
		t.Errorf("natsURLs = %q", got)
	}
}

func TestWantedGrowsAndShrinks(t *testing.T) {
	for _, c := range []struct{ asked, running, want int }{
		{0, 0, 1}, // nothing runs: one
		{0, 3, 3}, // no number given: keep what runs
		{2, 3, 2}, // shrink
		{5, 3, 5}, // grow
	} {
		if got := wanted(c.asked, c.running); got != c.want {
			t.Errorf("wanted(%d, %d) = %d, want %d", c.asked, c.running, got, c.want)
		}
	}
}

// Shrinking stops the highest-numbered live parts above the wanted number and leaves the others.
func TestShrinkStopsTheHighestNumbers(t *testing.T) {
	s, err := New(Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(s.run, 0o755); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	s.opts.Out = &out
	for i := 1; i <= 3; i++ {
		startSleeper(t, s, gatewayName(i))
	}
	running, highest := s.runningCount(PartGateway)
	if running != 3 || highest != 3 {
		t.Fatalf("runningCount = %d, %d; want 3, 3", running, highest)
	}
	if err := s.shrink(PartGateway, 1, highest, "--gateways"); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(s.numberedParts(PartGateway), ","); got != "gateway-1" {
		t.Errorf("left %s, want gateway-1", got)
	}
	if p, _ := ReadPIDFile(s.pidPath(gatewayName(1))); !p.Alive() {
		t.Error("gateway-1 was stopped")
	}
	if o := out.String(); !strings.Contains(o, "gateway-3 stopped") || strings.Index(o, "gateway-3") > strings.Index(o, "gateway-2") ||
		!strings.Contains(o, "--gateways 1)") {
		t.Errorf("output:\n%s", o)
	}
}

// A gateway started before numbered gateways existed (gateway.pid) becomes gateway-1.
func TestLegacyGatewayIsAdoptedAsTheFirst(t *testing.T) {
	s, err := New(Options{Root: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.lock()
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	if err := os.WriteFile(s.pidPath(PartGateway), []byte(`{"pid":1,"addr":"127.0.0.1:1883"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	unlock, err = s.lock()
	if err != nil {
		t.Fatal(err)
	}
	unlock()
	p, err := ReadPIDFile(s.pidPath(gatewayName(1)))
	if err != nil || p == nil || p.Addr != "127.0.0.1:1883" {
		t.Fatalf("gateway-1 pid file: %+v, %v", p, err)
	}
	if _, err := os.Stat(s.pidPath(PartGateway)); !os.IsNotExist(err) {
		t.Errorf("gateway.pid still there: %v", err)
	}
}

func TestParseConnectedDevices(t *testing.T) {
	text := `# HELP fleetflow_gateway_connected_devices Device sessions open now.
# TYPE fleetflow_gateway_connected_devices gauge
fleetflow_gateway_connected_devices_other 7
fleetflow_gateway_connected_devices 1234
`
	n, err := parseGauge(bufio.NewScanner(strings.NewReader(text)), connectedDevicesMetric)
	if err != nil || n != 1234 {
		t.Fatalf("parseGauge = %d, %v; want 1234", n, err)
	}
	if _, err := parseGauge(bufio.NewScanner(strings.NewReader("other 1\n")), connectedDevicesMetric); err == nil {
		t.Fatal("a missing series parsed")
	}
}

// startSleeper starts a process that stands for part until it is stopped (or the test ends).
func startSleeper(t *testing.T, s *Stack, part string) {
	t.Helper()
	unlock, err := s.lock() // creates the run and log directories
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	l, err := s.launch(part, exec.Command("sleep", "300"), "", "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stopProcess(l.pid, syscall.SIGKILL, time.Second) })
}
