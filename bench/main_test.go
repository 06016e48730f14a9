package bench

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/searchattr"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

var bins testenv.Binaries

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "fleetflow-bench-bin-")
	if err == nil {
		bins, err = testenv.BuildBinaries(dir)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// run executes the CLI with env and returns stdout; it fails the benchmark on error.
func run(b *testing.B, ctx context.Context, env []string, args ...string) string {
	b.Helper()
	out, err := runCLI(ctx, b.TempDir(), env, args...)
	if err != nil {
		b.Fatal(err)
	}
	return out
}

// runCLI executes the CLI with env in dir and returns stdout, and an error that carries the exit status
// (an *exec.ExitError) and stderr. Unlike run it may be called from any goroutine: b.Fatal outside the
// benchmark's own goroutine ends only that goroutine, and whoever waits for its result waits forever.
func runCLI(ctx context.Context, dir string, env []string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, bins.CLI, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Dir = dir
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("fleetflow %s: %w\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

// rssKiB reads a process's resident set size from /proc.
func rssKiB(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				return strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// report prints a result line and records it as a benchmark metric.
func report(b *testing.B, name string, value float64, unit string) {
	b.Helper()
	fmt.Printf("    %-58s %12.2f %s\n", name, value, unit)
	b.ReportMetric(value, unit)
}

// backend is a benchmark's registry, Temporal client and in-process worker on its own task queue.
type backend struct {
	reg          *registry.Registry
	tc           client.Client
	dbURL        string
	temporalAddr string
	queue        string
}

// startBackend opens the registry at dbURL, dials the shared Temporal server and starts a worker on queue;
// everything stops when the benchmark ends.
func startBackend(b *testing.B, dbURL, queue string) *backend {
	b.Helper()
	be := openBackend(b, dbURL, queue)
	w := fleetworker.New(be.tc, queue, &activities.Activities{Provision: be.reg, Monitor: be.reg, Scheme: be.reg})
	if err := w.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(w.Stop)
	return be
}

// openBackend opens the registry at dbURL and dials the shared Temporal server, without a worker.
func openBackend(b *testing.B, dbURL, queue string) *backend {
	b.Helper()
	be := &backend{dbURL: dbURL, temporalAddr: testenv.Temporal(b), queue: queue}
	reg, err := registry.Open(context.Background(), dbURL)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(reg.Close)
	tc, err := client.Dial(client.Options{HostPort: be.temporalAddr, Logger: quiet{}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(tc.Close)
	be.reg, be.tc = reg, tc
	return be
}

// env is the environment that points the CLI at this backend.
func (be *backend) env(extra ...string) []string {
	return append([]string{"FLEETFLOW_DATABASE_URL=" + be.dbURL, "TEMPORAL_ADDRESS=" + be.temporalAddr,
		"FLEETFLOW_TASK_QUEUE=" + be.queue}, extra...)
}

type quiet struct{}

func (quiet) Debug(string, ...any) {}
func (quiet) Info(string, ...any)  {}
func (quiet) Warn(string, ...any)  {}
func (quiet) Error(string, ...any) {}

// rolloutRun is how one benchmark rollout ended.
type rolloutRun struct {
	id     string
	total  int64
	claim  time.Duration // CreateRollout: claiming the devices
	wall   time.Duration // from the claim to the workflow's end
	result workflows.RolloutResult
}

// runRollout registers firmware version (sha256 is its fake digest) and runs the benchmarks' four-wave
// rollout (1%, 10%, 50%, 100%, no bake, 5% failure limit, 250 ms polls) over query, the way
// `fleetflow rollout start` would: the claim, then the FirmwareRollout workflow. start runs just before the
// clock starts (a benchmark's b.StartTimer). It fails the benchmark unless the rollout completes with all n
// devices succeeded.
func (be *backend) runRollout(b *testing.B, ctx context.Context, version, sha256, query string, n int, start func()) rolloutRun {
	b.Helper()
	fw, err := be.reg.AddFirmware(ctx, fleet.Firmware{Version: version, URL: "https://fw.example/" + version + ".bin",
		SHA256: strings.Repeat(sha256, 32)})
	if err != nil {
		b.Fatal(err)
	}
	waves, err := rollout.ParseWaves("1%,10%,50%,100%")
	if err != nil {
		b.Fatal(err)
	}
	th, err := rollout.ParseThreshold("5%")
	if err != nil {
		b.Fatal(err)
	}
	r := rolloutRun{id: "rollout-" + version + "-1"}
	start()
	t0 := time.Now()
	if r.total, err = be.reg.CreateRollout(ctx, fleet.NewRollout{ID: r.id, Version: version, Query: query, Spec: []byte("{}")}); err != nil {
		b.Fatal(err)
	}
	r.claim = time.Since(t0)
	run, err := be.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{
		ID: r.id, TaskQueue: be.queue, WorkflowIDReusePolicy: enumspb.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
		TypedSearchAttributes: temporal.NewSearchAttributes(searchattr.Op.ValueSet(searchattr.OpRollout),
			searchattr.State.ValueSet(searchattr.StateRunning), searchattr.Total.ValueSet(r.total), searchattr.Stage.ValueSet("starting")),
	}, workflows.FirmwareRollout, workflows.RolloutInput{RolloutID: r.id,
		Firmware: workflows.FirmwareRef{Version: fw.Version, URL: fw.URL, SHA256: fw.SHA256},
		Total:    r.total, Waves: waves, MaxFailures: th, PollInterval: 250 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	err = run.Get(ctx, &r.result)
	r.wall = time.Since(t0)
	if err != nil {
		b.Fatal(err)
	}
	if r.total != int64(n) || r.result.State != "completed" || r.result.Counts.Succeeded != r.total {
		b.Fatalf("rollout of %d devices: %s, %s", r.total, r.result.State, r.result.Counts)
	}
	return r
}
