package stack_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
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
	switch os.Getenv("STACK_TEST_FAKE") {
	case "":
		os.Exit(m.Run())
	case "gateway":
		// The real gateway refuses to start without a loadable pair; so does the fake.
		if _, err := tls.LoadX509KeyPair(os.Getenv("FLEETFLOW_TLS_CERT"), os.Getenv("FLEETFLOW_TLS_KEY")); err != nil {
			fmt.Fprintln(os.Stderr, "fake gateway: TLS pair:", err)
			os.Exit(1)
		}
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
					_ = c.Close()
				}
			}()
		}
		waitForSignal()
	case "worker":
		if os.Getenv("FLEETFLOW_SERVICE_TOKEN") == "" || os.Getenv("TEMPORAL_ADDRESS") == "" {
			fmt.Fprintln(os.Stderr, "fake worker: environment incomplete")
			os.Exit(1)
		}
		waitForSignal()
	}
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
	cfg.MQTTURL = "tcp://" + freeAddr(t)
	cfg.GatewayTLSListen = freeAddr(t)
	cfg.TLSCert, cfg.TLSKey, cfg.MQTTCA = "", "", "" // the stack makes its own
	cfg.TemporalProfile = ""                         // a developer's temporal.toml must not make the test's Temporal external
	opts := stack.Options{
		Root: root, Config: cfg, TemporalCLI: cli, GatewayBin: self, WorkerBin: self,
		Workers: workers, Out: out,
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
	if url, ca, ok := s.SimulatorTLS(); !ok || url != "ssl://"+opts.Config.GatewayTLSListen || ca != s.CAFile() {
		t.Errorf("SimulatorTLS = %q, %q, %v; want the gateway's TLS address and the stack's CA", url, ca, ok)
	}

	parts, err := s.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	health := map[string]string{}
	for _, p := range parts {
		if p.Name == "gateway" && p.TLSAddr != opts.Config.GatewayTLSListen {
			t.Errorf("status of the gateway: TLS address %q, want %q", p.TLSAddr, opts.Config.GatewayTLSListen)
		}
		health[p.Name] = p.Health
		if p.Health == stack.HealthRunning && p.PID == 0 {
			t.Errorf("%s running without pid", p.Name)
		}
	}
	for _, name := range []string{"postgres", "temporal", "gateway", "worker-1", "worker-2"} {
		if health[name] != stack.HealthRunning {
			t.Errorf("status of %s = %q, want running (all: %v)", name, health[name], health)
		}
	}

	// A second up leaves everything alone.
	out.Reset()
	if err := s.Up(ctx); err != nil {
		t.Fatalf("second up: %v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), "already running"); n != 5 {
		t.Errorf("second up: %d parts already running, want 5:\n%s", n, out.String())
	}
	if !strings.Contains(out.String(), "schema    version") || !strings.Contains(out.String(), "up to date") {
		t.Errorf("second up: schema not reported up to date:\n%s", out.String())
	}
	if caAfter, _ := os.ReadFile(s.CAFile()); !bytes.Equal(caBefore, caAfter) || strings.Contains(out.String(), "tls ") {
		t.Errorf("second up must reuse the CA and the certificate:\n%s", out.String())
	}

	out.Reset()
	if err := s.Down(ctx); err != nil {
		t.Fatalf("down: %v\n%s", err, out.String())
	}
	if n := strings.Count(out.String(), "stopped"); n != 5 {
		t.Errorf("down: %d parts stopped, want 5:\n%s", n, out.String())
	}
	for _, addr := range []string{opts.Config.TemporalAddress, strings.TrimPrefix(opts.Config.MQTTURL, "tcp://"), opts.Config.GatewayTLSListen} {
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
	if n := strings.Count(out.String(), "external"); n != 3 {
		t.Errorf("%d parts reported external, want 3:\n%s", n, out.String())
	}
}
