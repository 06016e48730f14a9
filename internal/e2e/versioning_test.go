package e2e

import (
	"context"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"

	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/workflows"
)

// setCurrentVersion makes buildID the current version of the Worker Deployment, once a worker of that
// version has polled (the server knows a version only from its pollers).
func (e *env) setCurrentVersion(ctx context.Context, deployment, buildID string) {
	e.t.Helper()
	h := e.tc.WorkerDeploymentClient().GetHandle(deployment)
	var err error
	require.Eventually(e.t, func() bool {
		_, err = h.SetCurrentVersion(ctx, client.WorkerDeploymentSetCurrentVersionOptions{BuildID: buildID})
		return err == nil
	}, time.Minute, 200*time.Millisecond, "set %s %s current: %v", deployment, buildID, err)
}

// replayCheck runs `fleetflow-worker replay-check` on the test's task queue and returns its output and exit code.
func (e *env) replayCheck(ctx context.Context, args ...string) (string, int) {
	e.t.Helper()
	cmd := exec.CommandContext(ctx, bins.worker, append([]string{"replay-check", "--closed-within", "1h"}, args...)...)
	cmd.Env = e.environ()
	out, err := cmd.CombinedOutput()
	return string(out), exitCodeOf(err)
}

func versionFlags(deployment, build string) []string {
	return []string{"--deployment-name", deployment, "--build-id", build}
}

// A new worker version rolls out while a rollout runs (docs/architecture.md, "Worker versioning"): workers of
// build v1 of a Worker Deployment run the rollout; a v2 worker starts, the replay check passes the open
// histories on v2's code and makes v2 current (--promote), and v1 stops (SIGTERM, as a deployment's rolling update does).
// The rollout moves to v2 (auto-upgrade) and completes there with every device updated.
func TestWorkerVersionRollsOutDuringARollout(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	deployment := "fleetflow-" + e.taskQueue
	version := func(build string) []string {
		return []string{"FLEETFLOW_WORKER_DEPLOYMENT=" + deployment, "FLEETFLOW_WORKER_BUILD_ID=" + build}
	}
	v1 := e.workerProcess(version("v1")...)
	e.setCurrentVersion(ctx, deployment, "v1")

	cs := e.fleet(ctx, 12, "wv")
	e.simulate(ctx, cs, simulator.Config{FirmwareStepDelay: 500 * time.Millisecond})
	_, err := e.cli(ctx, "firmware", "add", "--version", "6.0.0", "--url", "https://fw.example/6.bin", "--sha256", strings.Repeat("ef", 32))
	require.NoError(t, err)
	out, err := e.cli(ctx, "rollout", "start", "--firmware", "6.0.0", "--query", "SELECT * FROM devices", "--waves", "25%,50%,100%", "--detach")
	require.NoError(t, err)
	id := startedRollout(t, out)
	require.Eventually(t, func() bool {
		return e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE rollout_id = $1 AND wave = 1 AND phase <> 'pending'", id) > 0
	}, time.Minute, 50*time.Millisecond, "the second wave under way")
	d, err := e.tc.DescribeWorkflow(ctx, id, "")
	require.NoError(t, err)
	vi := d.RawResponse.GetWorkflowExecutionInfo().GetVersioningInfo()
	assert.Equal(t, "v1", vi.GetDeploymentVersion().GetBuildId(), "the rollout runs on v1: %v", vi)
	assert.Equal(t, enumspb.VERSIONING_BEHAVIOR_AUTO_UPGRADE, vi.GetBehavior())

	e.workerProcess(version("v2")...)
	report, code := e.replayCheck(ctx)
	require.Equal(t, 0, code, "replay-check:\n%s", report)
	assert.Contains(t, report, "replay on this build")
	// The same check with --promote makes v2 current once it passes (and v2's workers poll).
	require.Eventually(t, func() bool {
		report, code = e.replayCheck(ctx, append([]string{"--promote"}, versionFlags(deployment, "v2")...)...)
		return code == 0
	}, time.Minute, 500*time.Millisecond, "replay-check --promote:\n%s", report)
	assert.Contains(t, report, "v2 is now the current version of "+deployment)
	require.NoError(t, v1.Process.Signal(syscall.SIGTERM))
	_ = v1.Wait()

	var res workflows.RolloutResult
	require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res))
	assert.Equal(t, "completed", res.State)
	assert.EqualValues(t, 12, res.Counts.Succeeded, "%s", res.Counts)
	for _, c := range cs {
		assert.Equal(t, "6.0.0", e.reportedField(ctx, c.ID, "firmware", "version"), c.ID)
	}
	d, err = e.tc.DescribeWorkflow(ctx, id, "")
	require.NoError(t, err)
	assert.Equal(t, "v2", d.RawResponse.GetWorkflowExecutionInfo().GetVersioningInfo().GetDeploymentVersion().GetBuildId(),
		"the rollout finished on v2")
}
