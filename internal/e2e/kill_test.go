package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/api/workflowservice/v1"
	"go.temporal.io/sdk/client"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/rollout"
	"github.com/fleetflow/fleetflow/internal/simulator"
	"github.com/fleetflow/fleetflow/workflows"
)

// crashPoints are where the CLI's test hook (FLEETFLOW_CRASH_AT, starter/created.go) kills it with SIGKILL:
// before the workflow start, right after it, and while it waits for the operation to end.
var crashPoints = []string{"before-start", "after-start", "mid-wait"}

// cliKilled runs the CLI with FLEETFLOW_CRASH_AT=point and asserts that it died of SIGKILL there.
func (e *env) cliKilled(ctx context.Context, point string, args ...string) {
	e.t.Helper()
	cmd := exec.CommandContext(ctx, bins.cli, args...)
	cmd.Env = append(e.environ(), "FLEETFLOW_CRASH_AT="+point)
	cmd.Dir = e.t.TempDir()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(e.t, errors.As(err, &exit), "fleetflow %s with the crash hook at %s: %v\n%s", strings.Join(args, " "), point, err, out)
	ws, ok := exit.Sys().(syscall.WaitStatus)
	require.True(e.t, ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL, "fleetflow %s was not killed at %s: %v\n%s",
		strings.Join(args, " "), point, err, out)
}

// workflowsOnQueue lists the ids of every workflow (open or closed) started on the test's task queue.
func (e *env) workflowsOnQueue(ctx context.Context) map[string]bool {
	e.t.Helper()
	ids := map[string]bool{}
	var token []byte
	for {
		resp, err := e.tc.ListWorkflow(ctx, &workflowservice.ListWorkflowExecutionsRequest{
			Query: fmt.Sprintf("TaskQueue = '%s'", e.taskQueue), NextPageToken: token})
		require.NoError(e.t, err)
		for _, x := range resp.Executions {
			ids[x.Execution.WorkflowId] = true
		}
		if token = resp.NextPageToken; len(token) == 0 {
			return ids
		}
	}
}

// newWorkflows waits until exactly want workflows beyond before are visible on the queue and returns them.
// Visibility trails the start, so the wait is on the condition, never on a clock.
func (e *env) newWorkflows(ctx context.Context, before map[string]bool, prefix string, want int) []string {
	e.t.Helper()
	var ids []string
	require.Eventually(e.t, func() bool {
		ids = ids[:0]
		for id := range e.workflowsOnQueue(ctx) {
			if !before[id] && strings.HasPrefix(id, prefix) {
				ids = append(ids, id)
			}
		}
		return len(ids) >= want
	}, time.Minute, 100*time.Millisecond, "%d new %s… workflows expected", want, prefix)
	sort.Strings(ids)
	require.Len(e.t, ids, want, "new %s… workflows: %v", prefix, ids)
	return ids
}

// recordHistory writes workflow id's history to $FLEETFLOW_RECORD_HISTORIES/name.json when that variable is
// set, with the Temporal CLI as the replay test's doc says (`temporal workflow show -o json`): this is how the
// creation-step histories in workflows/testdata were recorded. Without the variable it does nothing.
func (e *env) recordHistory(ctx context.Context, id, name string) {
	e.t.Helper()
	dir := os.Getenv("FLEETFLOW_RECORD_HISTORIES")
	if dir == "" {
		return
	}
	out, err := exec.CommandContext(ctx, os.Getenv("FLEETFLOW_TEMPORAL_CLI"), "workflow", "show", "-w", id, "-o", "json",
		"--address", e.temporal).Output()
	require.NoError(e.t, err, "temporal workflow show %s", id)
	require.NoError(e.t, os.WriteFile(filepath.Join(dir, name+".json"), out, 0o644))
}

// count runs a SELECT count(*) … with args.
func (e *env) count(ctx context.Context, sql string, args ...any) int64 {
	e.t.Helper()
	var n int64
	require.NoError(e.t, e.reg.Pool().QueryRow(ctx, sql, args...).Scan(&n), sql)
	return n
}

// TestCLIKilledAtAnyPointLeavesNothingOrAWorkflowThatFinishes kills the CLI (SIGKILL, through its test hook)
// at each point of job start, rollout start, retire --query and provision, and shows that what it leaves is
// either nothing at all or a workflow that finishes the operation: no claim without a rollout workflow, no
// job row or frozen target set without a job workflow, claims released once a rollout ends, provisioned
// devices with the credential expiry asked for, and staged manifest rows of a run that never started
// dropped by the health check once stale.
func TestCLIKilledAtAnyPointLeavesNothingOrAWorkflowThatFinishes(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e.workerProcess()
	cs := e.fleet(ctx, 4, "z")
	e.simulate(ctx, cs, simulator.Config{})
	e.fleet(ctx, 2, "rb", "ra", "rm") // one pair of devices to retire per crash point
	sha := strings.Repeat("ab", 32)
	for _, v := range []string{"7.0.0", "7.0.1", "7.0.2"} {
		_, err := e.cli(ctx, "firmware", "add", "--version", v, "--url", "https://fw.example/"+v+".bin", "--sha256", sha)
		require.NoError(t, err)
	}
	region := map[string]string{"before-start": "rb", "after-start": "ra", "mid-wait": "rm"}

	for i, point := range crashPoints {
		started := point != "before-start"
		want := 0
		if started {
			want = 1
		}

		t.Run("job start/"+point, func(t *testing.T) {
			before := e.workflowsOnQueue(ctx)
			jobsBefore := e.count(ctx, "SELECT count(*) FROM jobs")
			e.cliKilled(ctx, point, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'z'",
				"--set-tags", fmt.Sprintf(`{"crash":%q}`, point))
			if !started {
				assert.Empty(t, e.newWorkflowsNow(ctx, before, "job-"), "no workflow was started")
				assert.Equal(t, jobsBefore, e.count(ctx, "SELECT count(*) FROM jobs"), "no job row without a workflow")
				return
			}
			id := e.newWorkflows(ctx, before, "job-", want)[0]
			var res struct{ State string }
			require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res), "the job's workflow finishes")
			assert.Equal(t, "completed", res.State)
			assert.EqualValues(t, 4, e.count(ctx, "SELECT count(*) FROM job_devices WHERE job_id = $1 AND state = 'succeeded'", id))
			assert.EqualValues(t, 1, e.count(ctx, "SELECT count(*) FROM jobs WHERE id = $1 AND total = 4 AND state = 'completed'", id), "the job row, total and end state")
			if point == "after-start" {
				e.recordHistory(ctx, id, "job_create_v2")
			}
		})

		t.Run("rollout start/"+point, func(t *testing.T) {
			version := []string{"7.0.0", "7.0.1", "7.0.2"}[i]
			before := e.workflowsOnQueue(ctx)
			e.cliKilled(ctx, point, "rollout", "start", "--firmware", version, "--query", "SELECT * FROM devices WHERE tags.region = 'z'",
				"--waves", "100%")
			if !started {
				assert.Empty(t, e.newWorkflowsNow(ctx, before, "rollout-"), "no workflow was started")
				assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollouts WHERE version = $1", version), "no rollout row")
				assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active"), "no claim without a workflow")
				return
			}
			id := e.newWorkflows(ctx, before, "rollout-", want)[0]
			var res struct{ State string }
			require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res), "the rollout's workflow finishes")
			assert.Equal(t, "completed", res.State)
			assert.EqualValues(t, 4, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE rollout_id = $1 AND phase = 'succeeded'", id))
			assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active"), "the finished rollout released its claims")
			if point == "after-start" {
				e.recordHistory(ctx, id, "rollout_create_v2")
			}
		})

		t.Run("retire --query/"+point, func(t *testing.T) {
			r := region[point]
			before := e.workflowsOnQueue(ctx)
			e.cliKilled(ctx, point, "retire", "--query", fmt.Sprintf("SELECT * FROM devices WHERE tags.region = '%s'", r), "--reason", point)
			retired := e.count(ctx, "SELECT count(*) FROM devices WHERE tags->>'region' = $1 AND status = 'retired'", r)
			if !started {
				assert.Empty(t, e.newWorkflowsNow(ctx, before, "decommission-"), "no workflow was started")
				assert.Zero(t, retired, "nothing retired")
				assert.Zero(t, e.count(ctx, "SELECT count(*) FROM jobs WHERE kind = 'retire' AND spec->>'reason' = $1", point), "no job row")
				return
			}
			id := e.newWorkflows(ctx, before, "decommission-", want)[0]
			var res struct{ State string }
			require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res), "the decommission finishes")
			assert.Equal(t, "completed", res.State)
			assert.EqualValues(t, 2, e.count(ctx, "SELECT count(*) FROM devices WHERE tags->>'region' = $1 AND status = 'retired'", r))
			if point == "after-start" {
				e.recordHistory(ctx, id, "decommission_query_v2")
			}
		})

		t.Run("provision/"+point, func(t *testing.T) {
			prefix := fmt.Sprintf("p%d-", i)
			before := e.workflowsOnQueue(ctx)
			e.cliKilled(ctx, point, "provision", "--count", "3", "--prefix", prefix, "--name", "crash-"+point, "--credential-validity", "30d")
			if !started {
				assert.Empty(t, e.newWorkflowsNow(ctx, before, "provision-crash-"), "no workflow was started")
				assert.Zero(t, e.count(ctx, "SELECT count(*) FROM devices WHERE id LIKE $1", prefix+"%"), "no device")
				op := "provision-crash-" + point + "-%"
				var opID string
				require.NoError(t, e.reg.Pool().QueryRow(ctx, "SELECT id FROM operations WHERE id LIKE $1", op).Scan(&opID))
				left, err := e.reg.StagedLeft(ctx, opID)
				require.NoError(t, err)
				require.EqualValues(t, 3, left, "the staged rows are there, with no workflow to read them")
				// A day later the health check drops them.
				_, err = e.reg.Pool().Exec(ctx, "UPDATE operations SET created_at = created_at - interval '25 hours' WHERE id LIKE $1", op)
				require.NoError(t, err)
				_, err = e.cli(ctx, "health", "run")
				require.NoError(t, err)
				left, err = e.reg.StagedLeft(ctx, opID)
				require.NoError(t, err)
				assert.Zero(t, left, "the health check dropped the stale staging")
				assert.Zero(t, e.count(ctx, "SELECT count(*) FROM operations WHERE id = $1 AND to_regclass(staging_table) IS NOT NULL", opID),
					"its staging table is gone")
				return
			}
			id := e.newWorkflows(ctx, before, "provision-crash-", want)[0]
			var res struct{ Counts struct{ Created int64 } }
			require.NoError(t, e.tc.GetWorkflow(ctx, id, "").Get(ctx, &res), "the provisioning finishes")
			assert.EqualValues(t, 3, res.Counts.Created)
			assert.EqualValues(t, 3, e.count(ctx, `SELECT count(*) FROM devices WHERE id LIKE $1 AND provisioned_by = $2
				AND credential_expires_at = created_at + interval '30 days'`, prefix+"%", id), "every new device has the expiry asked for")
			if point == "after-start" {
				e.recordHistory(ctx, id, "provision_validity_v2")
			}
		})
	}

	t.Run("detach tells the total", func(t *testing.T) {
		out, err := e.cli(ctx, "job", "start", "--query", "SELECT * FROM devices WHERE tags.region = 'z'", "--set-tags", `{"detached":1}`,
			"--detach", "-o", "json")
		require.NoError(t, err)
		var started struct {
			ID    string `json:"id"`
			Total int64  `json:"total"`
		}
		require.NoError(t, json.Unmarshal([]byte(out), &started), out)
		assert.EqualValues(t, 4, started.Total, "--detach waits for the creation step and prints its total")
		require.NoError(t, e.tc.GetWorkflow(ctx, started.ID, "").Get(ctx, nil))
	})

	t.Run("the creation step refuses a conflict, naming the other rollout", func(t *testing.T) {
		e.fleet(ctx, 2, "c") // never connected: a rollout over them stays in its first wave
		out, err := e.cli(ctx, "rollout", "start", "--firmware", "7.0.0", "--query", "SELECT * FROM devices WHERE tags.region = 'c'",
			"--waves", "100%", "--detach")
		require.NoError(t, err)
		first := startedRollout(t, out)
		// Started directly, as a CLI whose read-only check ran before the first rollout claimed the devices.
		run, err := e.tc.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: "rollout-7.0.1-race", TaskQueue: e.taskQueue},
			workflows.FirmwareRollout, workflows.RolloutInput{RolloutID: "rollout-7.0.1-race",
				Firmware: workflows.FirmwareRef{Version: "7.0.1", URL: "https://fw.example/7.0.1.bin", SHA256: sha},
				Query:    "SELECT * FROM devices WHERE tags.region = 'c'", Waves: []rollout.Wave{{Percent: 100}}})
		require.NoError(t, err)
		err = run.Get(ctx, nil)
		var app *temporal.ApplicationError
		require.True(t, errors.As(err, &app), "%v", err)
		assert.Equal(t, workflows.ErrTypeRolloutConflict, app.Type())
		assert.Contains(t, app.Error(), first)
		assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollouts WHERE id = 'rollout-7.0.1-race'"), "the refused rollout left no row")
		_, err = e.cli(ctx, "rollout", "abort", first, "--no-rollback")
		require.NoError(t, err)
		require.NoError(t, e.tc.GetWorkflow(ctx, first, "").Get(ctx, nil))
	})

	// Across every case: no claim, job row or frozen target set without a workflow, and nothing left claimed.
	t.Run("invariants", func(t *testing.T) {
		for _, q := range []string{"SELECT DISTINCT rollout_id FROM rollout_devices", "SELECT id FROM rollouts", "SELECT id FROM jobs",
			"SELECT DISTINCT job_id FROM job_devices"} {
			rows, err := e.reg.Pool().Query(ctx, q)
			require.NoError(t, err)
			var ids []string
			for rows.Next() {
				var id string
				require.NoError(t, rows.Scan(&id))
				ids = append(ids, id)
			}
			require.NoError(t, rows.Err())
			for _, id := range ids {
				d, err := e.tc.DescribeWorkflow(ctx, id, "")
				if assert.NoError(t, err, "%s: %s has no workflow", q, id) {
					assert.Equal(t, enumspb.WORKFLOW_EXECUTION_STATUS_COMPLETED, d.Status, "%s ended", id)
				}
			}
		}
		assert.Zero(t, e.count(ctx, "SELECT count(*) FROM job_devices jd WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = jd.job_id)"),
			"no frozen target set without its job")
		assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices rd WHERE NOT EXISTS (SELECT 1 FROM rollouts r WHERE r.id = rd.rollout_id)"),
			"no claim without its rollout")
		assert.Zero(t, e.count(ctx, "SELECT count(*) FROM rollout_devices WHERE active"), "no claim outlives its rollout")
	})
}

// newWorkflowsNow lists the workflows beyond before with the prefix, as visible now: for a kill before the
// start, when no workflow can appear later.
func (e *env) newWorkflowsNow(ctx context.Context, before map[string]bool, prefix string) []string {
	var ids []string
	for id := range e.workflowsOnQueue(ctx) {
		if !before[id] && strings.HasPrefix(id, prefix) {
			ids = append(ids, id)
		}
	}
	return ids
}
