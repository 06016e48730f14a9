package e2e

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/internal/stack"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// restartableTemporal is a Temporal dev server of one test's own that persists to a SQLite file (as the local
// stack's does, .fleetflow/temporal.db), so that the test can stop it and start it again on the same port
// with the same state: what a server restart does to running workflows.
type restartableTemporal struct {
	t        *testing.T
	hostPort string
	db       string
	log      *os.File
	srv      *testsuite.DevServer
}

func startRestartableTemporal(t *testing.T) *restartableTemporal {
	t.Helper()
	port, err := stack.FreePort()
	require.NoError(t, err)
	dir := t.TempDir()
	logf, err := os.Create(filepath.Join(dir, "temporal.log"))
	require.NoError(t, err)
	r := &restartableTemporal{t: t, hostPort: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		db: filepath.Join(dir, "temporal.db"), log: logf}
	t.Cleanup(func() {
		r.stop()
		_ = logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("temporal log (tail):\n%s", tailString(string(b), 4000))
		}
	})
	r.start()
	return r
}

// start runs the server on r's port and database file; the state of an earlier run is kept.
func (r *restartableTemporal) start() {
	r.t.Helper()
	cli, err := testenv.TemporalCLI()
	require.NoError(r.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := testsuite.StartDevServer(ctx, testsuite.DevServerOptions{
		ExistingPath:     cli,
		DBFilename:       r.db,
		LogLevel:         "warn",
		ClientOptions:    &client.Options{HostPort: r.hostPort, Logger: quietLogger{}},
		SearchAttributes: searchattr.Registration(),
		Stdout:           r.log,
		Stderr:           r.log,
	})
	require.NoError(r.t, err, "temporal dev server on %s", r.hostPort)
	srv.Client().Close()
	r.srv = srv
}

// stop interrupts the server and waits for it to exit.
func (r *restartableTemporal) stop() {
	if r.srv != nil {
		_ = r.srv.Stop()
		r.srv = nil
	}
}

// crash kills the server with SIGKILL (no shutdown of any kind) and reaps it.
func (r *restartableTemporal) crash() {
	r.t.Helper()
	_, port, err := net.SplitHostPort(r.hostPort)
	require.NoError(r.t, err)
	pid := serverPID(r.t, port)
	require.NoError(r.t, syscall.Kill(pid, syscall.SIGKILL))
	r.stop() // the interrupt reaches a process already dead; this reaps it
}

// serverPID finds the dev server this process started on port: a child whose command line runs start-dev
// with --port port.
func serverPID(t *testing.T, port string) int {
	t.Helper()
	stats, err := filepath.Glob("/proc/[0-9]*/stat")
	require.NoError(t, err)
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 {
			continue
		}
		if f := strings.Fields(string(b)[i+1:]); len(f) < 2 || f[1] != strconv.Itoa(os.Getpid()) { // field 4: the parent
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join(filepath.Dir(st), "cmdline"))
		if err != nil {
			continue
		}
		argv := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if p := slices.Index(argv, "--port"); slices.Contains(argv, "start-dev") && p >= 0 && p+1 < len(argv) && argv[p+1] == port {
			pid, err := strconv.Atoi(filepath.Base(filepath.Dir(st)))
			require.NoError(t, err)
			return pid
		}
	}
	t.Fatalf("no temporal dev server child on port %s", port)
	return 0
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// A declarative configuration survives a restart of the Temporal server and of its worker — an operator's
// restart (SIGINT) and a crash (SIGKILL) of the server, the worker SIGKILLed meanwhile: devices that join
// after both came back are picked up and acknowledge the configuration, `config status` counts them exactly,
// and the configuration is still the same workflow (the same run chain: continue-as-new would keep its first
// run) — not one started again.
func TestConfigurationSurvivesTemporalRestart(t *testing.T) {
	for _, crash := range []bool{false, true} {
		name := "restart"
		if crash {
			name = "crash"
		}
		t.Run(name, func(t *testing.T) { configurationSurvivesTemporalRestart(t, crash) })
	}
}

func configurationSurvivesTemporalRestart(t *testing.T, crash bool) {
	temporal := startRestartableTemporal(t)
	e := newEnvWith(t, testenv.Postgres(t), temporal.hostPort)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	worker := e.workerProcess()
	first := e.fleet(ctx, 3, "eu")
	e.simulate(ctx, first, simulator.Config{})

	_, err := e.cli(ctx, "config", "apply", "base", "--target", "SELECT * FROM devices WHERE tags.region = 'eu'", "--priority", "1",
		"--set-desired", `{"interval": 30}`)
	require.NoError(t, err)
	// (configCounts fails the test on an error, which it is until the workflow has saved the configuration.)
	require.Eventually(t, func() bool {
		for _, c := range first {
			if e.reportedField(ctx, c.ID, "interval") != "30" {
				return false
			}
		}
		return true
	}, 2*time.Minute, 200*time.Millisecond, "the configuration reaches the devices")
	require.Eventually(t, func() bool { return e.configCounts(ctx, "base").Acked == 3 }, time.Minute, 200*time.Millisecond)
	before, err := e.tc.DescribeWorkflow(ctx, workflows.ConfigWorkflowID("base"), "")
	require.NoError(t, err)
	chain := before.RawResponse.GetWorkflowExecutionInfo().GetFirstRunId()
	require.NotEmpty(t, chain)

	// The worker dies while the server is going down; both come back, the worker as a new process.
	require.NoError(t, worker.Process.Signal(syscall.SIGKILL))
	_, _ = worker.Process.Wait()
	if crash {
		temporal.crash()
	} else {
		temporal.stop()
	}
	temporal.start()
	e.workerProcess()

	// Late joiners, provisioned after the restart: picked up by themselves.
	lateCreds := filepath.Join(t.TempDir(), "late.creds")
	_, err = e.cli(ctx, "provision", "--count", "2", "--prefix", "eu-late-", "--tags", "region=eu", "--creds-out", lateCreds, "-o", "json")
	require.NoError(t, err)
	late := mustCreds(t, lateCreds)
	e.simulate(ctx, late, simulator.Config{})
	require.Eventually(t, func() bool {
		return e.reportedField(ctx, late[0].ID, "interval") == "30" && e.reportedField(ctx, late[1].ID, "interval") == "30"
	}, 2*time.Minute, 200*time.Millisecond, "the late joiners get the configuration")
	require.Eventually(t, func() bool {
		return reflect.DeepEqual(e.configCounts(ctx, "base"), fleet.ConfigCounts{Targeted: 5, Applied: 5, Acked: 5})
	}, time.Minute, 200*time.Millisecond, "config status counts every device once: %+v", e.configCounts(ctx, "base"))

	after, err := e.tc.DescribeWorkflow(ctx, workflows.ConfigWorkflowID("base"), "")
	require.NoError(t, err)
	info := after.RawResponse.GetWorkflowExecutionInfo()
	assert.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_RUNNING, info.GetStatus())
	assert.Equal(t, chain, info.GetFirstRunId(), "the same run chain, not a configuration started again")
}
