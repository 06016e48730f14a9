package stack_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/fleetflow/fleetflow/internal/config"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// The test binary doubles as the gateway and worker binaries of the stack under test: started with
// STACK_TEST_FAKE set, it plays that part instead of running tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "nats-node" {
		fakeNATSNode(os.Args[2:])
	}
	switch os.Getenv("STACK_TEST_FAKE") {
	case "":
		os.Exit(m.Run())
	case "gateway":
		fakeGateway()
	case "worker":
		if os.Getenv("FLEETFLOW_NATS_URL") == "" || os.Getenv("TEMPORAL_ADDRESS") == "" {
			fmt.Fprintln(os.Stderr, "fake worker: environment incomplete")
			os.Exit(1)
		}
		waitForSignal()
	}
}

// fakeGateway listens where the stack tells it to and serves the connected-devices gauge: the number of
// connections it holds open (a device's connection stays open until the client closes it).
func fakeGateway() {
	// The real gateway refuses to start without a loadable pair; so does the fake.
	if _, err := tls.LoadX509KeyPair(os.Getenv("FLEETFLOW_TLS_CERT"), os.Getenv("FLEETFLOW_TLS_KEY")); err != nil {
		fmt.Fprintln(os.Stderr, "fake gateway: TLS pair:", err)
		os.Exit(1)
	}
	if os.Getenv("FLEETFLOW_NATS_URL") == "" {
		fmt.Fprintln(os.Stderr, "fake gateway: no FLEETFLOW_NATS_URL")
		os.Exit(1)
	}
	var open atomic.Int64
	for _, addr := range []string{os.Getenv("FLEETFLOW_GATEWAY_LISTEN"), os.Getenv("FLEETFLOW_GATEWAY_TLS_LISTEN")} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake gateway:", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				open.Add(1)
				go func() {
					_, _ = io.Copy(io.Discard, c)
					_ = c.Close()
					open.Add(-1)
				}()
			}
		}()
	}
	if addr := os.Getenv("FLEETFLOW_GATEWAY_METRICS"); addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake gateway: metrics:", err)
			os.Exit(1)
		}
		go func() {
			_ = http.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fmt.Fprintf(w, "# TYPE fleetflow_gateway_connected_devices gauge\nfleetflow_gateway_connected_devices %d\n", open.Load())
			}))
		}()
	}
	fmt.Println("fake gateway NATS", os.Getenv("FLEETFLOW_NATS_URL"))
	waitForSignal()
}

// fakeNATSNode listens on --listen and --cluster-listen and logs its routes, as `fleetflow nats-node` would.
func fakeNATSNode(args []string) {
	flags := map[string]string{}
	for i := 0; i+1 < len(args); i += 2 {
		flags[args[i]] = args[i+1]
	}
	for _, addr := range []string{flags["--listen"], flags["--cluster-listen"]} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake nats node:", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_ = c.Close()
			}
		}()
	}
	fmt.Println("fake nats node", flags["--name"], "routes", flags["--routes"])
	waitForSignal()
}

func waitForSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	os.Exit(0)
}

func freeAddr(t *testing.T) string {
	t.Helper()
	port, err := stack.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// freeRun returns an address whose port and the n-1 ports after it (every step-th) are free, the base of a
// kind of numbered parts. All of them stay below 32768, out of the kernel's ephemeral range, where a client
// connection could take one meanwhile.
func freeRun(t *testing.T, n, step int) string {
	t.Helper()
	port, err := stack.FreePortRun(n, step)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", port)
}

// plus is addr with its port moved by n.
func plus(t *testing.T, addr string, n int) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return net.JoinHostPort(host, strconv.Itoa(p+n))
}

// newTestStack builds a stack in a temporary checkout on free ports, with the test binary as gateway and
// worker. The checkout is a t.TempDir, 0700 root when tests run as root, so this also exercises the
// out-of-tree data directory.
func newTestStack(t *testing.T, out *bytes.Buffer, workers int) (*stack.Stack, stack.Options) {
	t.Helper()
	cli, err := testenv.TemporalCLI()
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "go.mod"), []byte("module scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.FromEnv()
	cfg.DatabaseURL = "postgres://fleetflow@" + freeAddr(t) + "/fleetflow?sslmode=disable"
	cfg.TemporalAddress = freeAddr(t)
	cfg.TemporalUI = "http://" + freeAddr(t)
	// Room for three gateways and three NATS nodes on consecutive ports (addresses.go), and gateway metrics
	// 100 apart, all off the defaults so that a developer's running stack is not in the way.
	cfg.MQTTURL = "tcp://" + freeRun(t, 3, 1)
	cfg.GatewayTLSListen = freeRun(t, 3, 1)
	t.Setenv("FLEETFLOW_GATEWAY_METRICS", freeRun(t, 3, 100))
	t.Setenv("FLEETFLOW_WORKER_METRICS", "")
	cfg.TLSCert, cfg.TLSKey, cfg.MQTTCA = "", "", "" // the stack makes its own
	cfg.TemporalProfile = ""                         // a developer's temporal.toml must not make the test's Temporal external
	opts := stack.Options{
		Root: root, Config: cfg, TemporalCLI: cli, GatewayBin: self, WorkerBin: self,
		Workers: workers, Out: out,
		NATSURL: "nats://" + freeRun(t, 3, 1), NATSClusterListen: freeRun(t, 3, 1),
	}
	s, err := stack.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return s, opts
}

func TestUpStatusDown(t *testing.T) {
	t.Setenv("STACK_TEST_FAKE", "gateway") // the children inherit it; the worker's is set below
	var out bytes.Buffer
	s, opts := newTestStack(t, &out, 2)
	ctx := context.Background()
	t.Cleanup(func() {
		_ = s.Down(ctx)
		_ = s.Purge() // the out-of-tree cluster is not under t.TempDir
	})

	// Gateway and workers are the same binary here, told apart by STACK_TEST_FAKE; the stack starts the
	// gateway with the argument "gateway", which the fake ignores, so run the fake worker through a wrapper.
	wrapper := filepath.Join(opts.Root, "worker.sh")
	script := "#!/bin/sh\nSTACK_TEST_FAKE=worker exec " + opts.WorkerBin + "\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	opts.WorkerBin = wrapper
	opts.Gateways, opts.NATSNodes = 2, 2
	s, err := stack.New(opts)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.Up(ctx); err != nil {
		t.Fatalf("up: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("up:\n%s", out.String())

	// Postgres is real and has the database; Temporal is real and healthy (Up checked it).
	conn, err := pgx.Connect(ctx, opts.Config.DatabaseURL)
	if err != nil {
		t.Fatalf("connect to the stack's Postgres: %v", err)
	}
	var one int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1: %d, %v", one, err)
	}
	_ = conn.Close(ctx)
	// Up migrated the registry before starting the gateway and the workers, which refuse an old schema.
	reg, err := registry.Open(ctx, opts.Config.DatabaseURL)
	if err != nil {
		t.Fatalf("registry after up: %v\noutput:\n%s", err, out.String())
	}
	reg.Close()
	if !strings.Contains(out.String(), "schema    migrated to version") {
		t.Errorf("up did not report the migration:\n%s", out.String())
	}

	// The local CA and the gateway's certificate were made under .fleetflow/tls, keys private.
	tlsDir := filepath.Join(opts.Root, ".fleetflow", "tls")
	for file, mode := range map[string]os.FileMode{"ca.pem": 0o644, "ca-key.pem": 0o600, "server.pem": 0o644, "server-key.pem": 0o600} {
		st, err := os.Stat(filepath.Join(tlsDir, file))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v, mode %v, want %v", file, err, st.Mode().Perm(), mode)
		}
	}
	if s.CAFile() != filepath.Join(tlsDir, "ca.pem") || !strings.Contains(out.String(), "created a local CA") {
		t.Errorf("CA file %s; up output:\n%s", s.CAFile(), out.String())
	}
	caBefore, _ := os.ReadFile(s.CAFile())

	// Gateway i and NATS node j on the ports of their number; dev simulate gets every gateway.
	mqtt := strings.TrimPrefix(opts.Config.MQTTURL, "tcp://")
	natsBase := strings.TrimPrefix(opts.NATSURL, "nats://")
	tlsAddrs := []string{opts.Config.GatewayTLSListen, plus(t, opts.Config.GatewayTLSListen, 1)}
	if urls, ca, ok := s.SimulatorTLS(); !ok || urls != "ssl://"+tlsAddrs[0]+",ssl://"+tlsAddrs[1] || ca != s.CAFile() {
		t.Errorf("SimulatorTLS = %q, %q, %v; want both gateways' TLS addresses and the stack's CA", urls, ca, ok)
	}
	// FLEETFLOW_MQTT_URL naming our own first gateway (where dev up started it) is still our stack.
	explicit := opts
	explicit.ExplicitMQTT = true
	if es, err := stack.New(explicit); err != nil {
		t.Fatal(err)
	} else if urls, _, ok := es.SimulatorTLS(); !ok || strings.Count(urls, "ssl://") != 2 {
		t.Errorf("SimulatorTLS with FLEETFLOW_MQTT_URL at gateway-1 = %q, %v; want both gateways", urls, ok)
	}
	// Devices hold connections open: three on gateway-1, one on gateway-2, as dev status must show.
	for _, addr := range []string{tlsAddrs[0], tlsAddrs[0], tlsAddrs[0], tlsAddrs[1]} {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = c.Close() }()
	}
	want := map[string]stack.PartStatus{
		"nats-1":    {Addr: natsBase},
		"nats-2":    {Addr: plus(t, natsBase, 1)},
		"gateway-1": {Addr: mqtt, TLSAddr: tlsAddrs[0]},
		"gateway-2": {Addr: plus(t, mqtt, 1), TLSAddr: tlsAddrs[1]},
		"postgres":  {}, "temporal": {}, "worker-1": {}, "worker-2": {},
	}
	devices := map[string]int64{"gateway-1": 3, "gateway-2": 1}
	var parts []stack.PartStatus
	deadline := time.Now().Add(30 * time.Second)
	for {
		if parts, err = s.Status(ctx); err != nil {
			t.Fatal(err)
		}
		counted := 0
		for _, p := range parts {
			if p.Devices != nil && *p.Devices == devices[p.Name] {
				counted++
			}
		}
		if counted == len(devices) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	checkStatus(t, parts, want, devices)

	// The gateways were given every NATS node, and each node the routes of all.
	gwLog, _ := os.ReadFile(filepath.Join(opts.Root, ".fleetflow", "logs", "gateway-2.log"))
	natsURL := "nats://" + natsBase + ",nats://" + plus(t, natsBase, 1)
	if !strings.Contains(string(gwLog), "fake gateway NATS "+natsURL+"\n") {
		t.Errorf("gateway-2 was not given FLEETFLOW_NATS_URL=%s; its log:\n%s", natsURL, gwLog)
	}
	natsLog, _ := os.ReadFile(filepath.Join(opts.Root, ".fleetflow", "logs", "nats-2.log"))
	routes := "nats://" + opts.NATSClusterListen + ",nats://" + plus(t, opts.NATSClusterListen, 1)
	if !strings.Contains(string(natsLog), "fake nats node nats-2 routes "+routes+"\n") {
		t.Errorf("nats-2 was not given the routes %s; its log:\n%s", routes, natsLog)
	}

	// A second up leaves everything alone.
	out.Reset()
	if err := s.Up(ctx); err != nil {
		t.Fatalf("second up: %v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), "already running"); n != 8 {
		t.Errorf("second up: %d parts already running, want 8:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "schema    version") || !strings.Contains(out.String(), "up to date") {
		t.Errorf("second up: schema not reported up to date:\n%s", out.String())
	}
	if caAfter, _ := os.ReadFile(s.CAFile()); !bytes.Equal(caBefore, caAfter) || strings.Contains(out.String(), "tls ") {
		t.Errorf("second up must reuse the CA and the certificate:\n%s", out.String())
	}

	// Other numbers grow and shrink the stack to them; the highest-numbered parts go first.
	out.Reset()
	grown := opts
	grown.Gateways, grown.NATSNodes, grown.Workers = 3, 1, 1
	if s, err = stack.New(grown); err != nil {
		t.Fatal(err)
	}
	if err := s.Up(ctx); err != nil {
		t.Fatalf("up --gateways 3 --nats-nodes 1 --workers 1: %v\n%s", err, out.String())
	}
	for _, line := range []string{"nats-2    stopped (pid", "; --nats-nodes 1)", "worker-2  stopped (pid", "; --workers 1)",
		"gateway-3 " + plus(t, mqtt, 2)} {
		if !strings.Contains(out.String(), line) {
			t.Errorf("grow/shrink: no %q in\n%s", line, out.String())
		}
	}
	if parts, err = s.Status(ctx); err != nil {
		t.Fatal(err)
	}
	checkStatus(t, parts, map[string]stack.PartStatus{
		"nats-1": {Addr: natsBase}, "gateway-1": {Addr: mqtt}, "gateway-2": {Addr: plus(t, mqtt, 1)},
		"gateway-3": {Addr: plus(t, mqtt, 2), TLSAddr: plus(t, opts.Config.GatewayTLSListen, 2)},
		"postgres":  {}, "temporal": {}, "worker-1": {},
	}, nil)
	if stack.Reachable(plus(t, natsBase, 1), time.Second) {
		t.Error("nats-2 still answers after --nats-nodes 1")
	}

	out.Reset()
	shrunk := grown
	shrunk.Gateways = 1
	if s, err = stack.New(shrunk); err != nil {
		t.Fatal(err)
	}
	if err := s.Up(ctx); err != nil {
		t.Fatalf("up --gateways 1: %v\n%s", err, out.String())
	}
	if !strings.Contains(out.String(), "gateway-3 stopped") || !strings.Contains(out.String(), "gateway-2 stopped") ||
		strings.Index(out.String(), "gateway-3 stopped") > strings.Index(out.String(), "gateway-2 stopped") {
		t.Errorf("--gateways 1 should stop gateway-3, then gateway-2:\n%s", out.String())
	}
	for _, addr := range []string{plus(t, mqtt, 1), plus(t, mqtt, 2), tlsAddrs[1]} {
		if stack.Reachable(addr, time.Second) {
			t.Errorf("%s still answers after --gateways 1", addr)
		}
	}

	out.Reset()
	if err := s.Down(ctx); err != nil {
		t.Fatalf("down: %v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), "stopped"); n != 5 {
		t.Errorf("down: %d parts stopped, want 5:\n%s", n, out.String())
	}
	for _, addr := range []string{opts.Config.TemporalAddress, mqtt, opts.Config.GatewayTLSListen, natsBase} {
		if stack.Reachable(addr, time.Second) {
			t.Errorf("%s still answers after down", addr)
		}
	}
	out.Reset()
	if err := s.Down(ctx); err != nil || !strings.Contains(out.String(), "nothing to stop") {
		t.Errorf("second down: %v, %q", err, out.String())
	}

	location, err := os.ReadFile(filepath.Join(opts.Root, ".fleetflow", "pgdata-location"))
	if err != nil && os.Geteuid() == 0 {
		t.Errorf("as root in a 0700 checkout the cluster should live outside it: %v", err)
	}
	if err := s.Purge(); err != nil {
		t.Fatalf("purge: %v", err)
	}
	gone := []string{filepath.Join(opts.Root, ".fleetflow")}
	if len(location) > 0 {
		gone = append(gone, filepath.Dir(strings.TrimSpace(string(location))))
	}
	for _, dir := range gone {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survives purge", dir)
		}
	}
}

// checkStatus checks that exactly the parts of want run, with the addresses want gives (when not empty), and
// that the gateways named in devices report those connected devices.
func checkStatus(t *testing.T, parts []stack.PartStatus, want map[string]stack.PartStatus, devices map[string]int64) {
	t.Helper()
	running := map[string]bool{}
	for _, p := range parts {
		if p.Health != stack.HealthRunning {
			continue
		}
		running[p.Name] = true
		if p.PID == 0 {
			t.Errorf("%s running without pid", p.Name)
		}
		w, ok := want[p.Name]
		if !ok {
			t.Errorf("%s runs and should not: %+v", p.Name, p)
			continue
		}
		if (w.Addr != "" && p.Addr != w.Addr) || (w.TLSAddr != "" && p.TLSAddr != w.TLSAddr) {
			t.Errorf("%s at %s, tls %s; want %s, tls %s", p.Name, p.Addr, p.TLSAddr, w.Addr, w.TLSAddr)
		}
		if n, ok := devices[p.Name]; ok && (p.Devices == nil || *p.Devices != n) {
			t.Errorf("%s: devices %v, want %d", p.Name, p.Devices, n)
		}
		if strings.HasPrefix(p.Name, "gateway") && !strings.Contains(p.Note, "metrics http://") {
			t.Errorf("%s: no metrics address in %q", p.Name, p.Note)
		}
	}
	for name := range want {
		if !running[name] {
			t.Errorf("%s is not running; status: %+v", name, parts)
		}
	}
}

func TestUpRefusesPortOfAnotherProcess(t *testing.T) {
	var out bytes.Buffer
	_, opts := newTestStack(t, &out, 1)
	// Something that is not ours listens on the Postgres port.
	l, err := net.Listen("tcp", strings.Split(strings.TrimPrefix(opts.Config.DatabaseURL, "postgres://fleetflow@"), "/")[0])
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	s, err := stack.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	err = s.Up(context.Background())
	t.Cleanup(func() { _ = s.Down(context.Background()) })
	var pe *stack.PartError
	if !errors.As(err, &pe) || pe.Part != "postgres" || !strings.Contains(pe.Msg, "is in use by another process; stop it or set FLEETFLOW_DATABASE_URL") {
		t.Fatalf("got %v, want the postgres port-in-use error", err)
	}
}

func TestWorkerThatDiesIsReportedWithItsLog(t *testing.T) {
	var out bytes.Buffer
	_, opts := newTestStack(t, &out, 1)
	crash := filepath.Join(opts.Root, "crash.sh")
	if err := os.WriteFile(crash, []byte("#!/bin/sh\necho 'fake worker: cannot reach anything' >&2\nexit 3\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	opts.WorkerBin = crash
	// The other parts are external here, which also covers reuse of services named by the environment.
	opts.Config.DatabaseURL, opts.ExplicitDatabase = testenv.StartPostgres(t), true
	opts.Config.TemporalAddress, opts.ExplicitTemporal = testenv.StartTemporal(t), true
	broker, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = broker.Close() })
	opts.Config.MQTTURL, opts.ExplicitMQTT = "tcp://"+broker.Addr().String(), true
	nats, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nats.Close() })
	opts.NATSURL, opts.ExplicitNATS = "nats://"+nats.Addr().String(), true

	s, err := stack.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Down(context.Background()) })
	err = s.Up(context.Background())
	var pe *stack.PartError
	if !errors.As(err, &pe) || pe.Part != "worker-1" || !strings.Contains(pe.Msg, "exited during start-up") ||
		!strings.Contains(pe.Log, "cannot reach anything") {
		t.Fatalf("got %v, want worker-1 exited during start-up with its log", err)
	}
	if n := strings.Count(out.String(), "external"); n != 4 {
		t.Errorf("%d parts reported external, want 4:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "nats      "+nats.Addr().String()) {
		t.Errorf("the NATS cluster of FLEETFLOW_NATS_URL is not the one used:\n%s", out.String())
	}
}
