package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"go.temporal.io/sdk/client"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/channel"
	"github.com/fleetflow/fleetflow/internal/creds"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/gateway"
	"github.com/fleetflow/fleetflow/internal/pki"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// bins holds the CLI and worker built once for the package, so tests run the binaries users run.
var bins struct{ cli, worker string }

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fleetflow-e2e-bin-")
	if err == nil {
		var b testenv.Binaries
		if b, err = testenv.BuildBinaries(dir); err == nil {
			bins.cli, bins.worker = b.CLI, b.Worker
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	// The shared Postgres and Temporal servers end with the test binary (testenv), so no Main is needed.
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's stack: a fresh database, the shared Temporal server with a task queue of its own, a NATS
// node of its own (through which workers and the CLI reach devices, as in the local stack), and an
// in-process gateway listening on free loopback ports, for plaintext MQTT and for MQTT over TLS (devices),
// with a CA and server certificate made for this test.
type env struct {
	t         *testing.T
	dbURL     string
	temporal  string
	taskQueue string
	reg       *registry.Registry
	gw        *gateway.Gateway
	mqttURL   string    // the plaintext listener
	natsURL   string    // the bus workers and the CLI use
	tls       pki.Local // the CA (tls.CA, for clients) and the gateway's certificate, in a temporary directory
	tc        client.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvOn(t, testenv.Postgres(t))
}

// newEnvOn is newEnv on the database at dbURL (a cluster of the test's own it may restart, say).
func newEnvOn(t *testing.T, dbURL string) *env {
	t.Helper()
	return newEnvWith(t, dbURL, testenv.Temporal(t))
}

// newEnvWith is newEnv on the database at dbURL and the Temporal server at temporalAddr (a server of the
// test's own it may restart, say).
func newEnvWith(t *testing.T, dbURL, temporalAddr string) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	e := &env{t: t, dbURL: dbURL, temporal: temporalAddr,
		taskQueue: "e2e-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-"))}
	reg, err := registry.Open(ctx, e.dbURL)
	require.NoError(t, err)
	t.Cleanup(reg.Close)
	e.reg = reg
	e.tls, err = pki.EnsureLocal(t.TempDir(), pki.LocalHosts, time.Now())
	require.NoError(t, err)
	e.natsURL = testenv.NATS(t)
	relay, err := channel.DialRelay(channel.Config{URL: e.natsURL, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	require.NoError(t, err)
	t.Cleanup(relay.Close)
	e.gw = gateway.New(gateway.Config{Listen: "127.0.0.1:0", Downlinks: relay,
		TLSListen: "127.0.0.1:0", TLSCertFile: e.tls.Cert, TLSKeyFile: e.tls.Key},
		reg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.NoError(t, e.gw.Start(ctx))
	require.NotEmpty(t, e.gw.TLSAddr(), "the gateway listens for TLS")
	t.Cleanup(func() { e.gw.Close() })
	e.mqttURL = "tcp://" + e.gw.Addr()
	tc, err := client.Dial(client.Options{HostPort: e.temporal, Logger: quietLogger{}})
	require.NoError(t, err)
	t.Cleanup(tc.Close)
	e.tc = tc
	return e
}

// startWorker runs a worker in this process until the test ends.
func (e *env) startWorker() {
	w := fleetworker.New(e.tc, e.taskQueue, &activities.Activities{Provision: e.reg, Monitor: e.reg, PollInterval: 200 * time.Millisecond})
	require.NoError(e.t, w.Start())
	e.t.Cleanup(w.Stop)
}

// workerProcess runs the worker binary, which a test may kill, with extraEnv (NAME=value) added.
func (e *env) workerProcess(extraEnv ...string) *exec.Cmd {
	cmd := exec.Command(bins.worker)
	cmd.Env = append(e.environ(), extraEnv...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	require.NoError(e.t, cmd.Start())
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if e.t.Failed() {
			e.t.Logf("worker output:\n%s", buf.String())
		}
	})
	return cmd
}

func (e *env) environ() []string {
	return append(os.Environ(),
		"FLEETFLOW_DATABASE_URL="+e.dbURL,
		"TEMPORAL_ADDRESS="+e.temporal,
		"FLEETFLOW_TASK_QUEUE="+e.taskQueue,
		"FLEETFLOW_MQTT_URL="+e.mqttURL,
		"FLEETFLOW_NATS_URL="+e.natsURL,
		"FLEETFLOW_WORKER_METRICS=", // the default (off): concurrent test workers must not share a port
	)
}

// cli runs the fleetflow binary and returns its stdout; stderr is logged on failure.
func (e *env) cli(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bins.cli, args...)
	cmd.Env = e.environ()
	cmd.Dir = e.t.TempDir()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		e.t.Logf("fleetflow %s: %v\nstderr:\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), err
}

// exitCodeOf is the exit code of a CLI run that returned err (0 when err is nil, -1 when it did not exit).
func exitCodeOf(err error) int {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	}
	return -1
}

// cliResult is the outcome of a CLI run started with cliAsync.
type cliResult struct {
	out string
	err error
}

// cliAsync runs the CLI in the background, for commands that wait on something the test does meanwhile.
func (e *env) cliAsync(ctx context.Context, args ...string) <-chan cliResult {
	done := make(chan cliResult, 1)
	go func() {
		out, err := e.cli(ctx, args...)
		done <- cliResult{out, err}
	}()
	return done
}

// provisionSummary is the CLI's --output json summary.
type provisionSummary struct {
	WorkflowID  string `json:"workflowId"`
	Rows        int64  `json:"rows"`
	Credentials int    `json:"credentials"`
	Counts      struct {
		Created, Existing, Invalid int64
	} `json:"counts"`
	Invalid []fleet.RowResult `json:"invalid"`
	Connect *struct {
		Created, Connected, Reported int64
		Missing                      []string
	} `json:"connect"`
}

func parseSummary(t *testing.T, out string) provisionSummary {
	t.Helper()
	var s provisionSummary
	require.NoError(t, json.Unmarshal([]byte(out), &s), "summary: %s", out)
	return s
}

// waitFile waits until path exists.
func waitFile(t *testing.T, path string, within time.Duration) {
	t.Helper()
	require.Eventually(t, func() bool { _, err := os.Stat(path); return err == nil }, within, 50*time.Millisecond,
		"%s was not written", path)
}

type quietLogger struct{}

func (quietLogger) Debug(string, ...any) {}
func (quietLogger) Info(string, ...any)  {}
func (quietLogger) Warn(string, ...any)  {}
func (quietLogger) Error(string, ...any) {}

func itoa(n int) string { return fmt.Sprint(n) }

func mustCreds(t *testing.T, path string) []creds.Credential {
	t.Helper()
	cs, err := creds.ReadFile(path)
	require.NoError(t, err)
	return cs
}

// cliCombined runs the fleetflow binary and returns stdout and stderr together, for checking error messages.
func (e *env) cliCombined(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bins.cli, args...)
	cmd.Env = e.environ()
	cmd.Dir = e.t.TempDir()
	out, err := cmd.CombinedOutput()
	return string(out), err
}
