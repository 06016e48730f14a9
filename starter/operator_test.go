package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/internal/testenv"
	"github.com/fleetflow/fleetflow/workflows"
)

// runCLIAt runs the command tree in-process against a real registry and Temporal.
func runCLIAt(t *testing.T, dbURL, temporalAddr string, args ...string) (stdout string, code int, err error) {
	t.Helper()
	root := newRoot()
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(append([]string{"--database-url", dbURL, "--temporal-address", temporalAddr, "--namespace", "default"}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), exitCode(err), err
}

// TestOperatorActionWithoutAWorkerIsPendingNotRefused: on a real Temporal dev server with no worker on the
// job's queue, `job pause` says the pause waits for a worker (exit 4), never that it was refused; `job
// status` lists it as pending; once a worker runs, the pause takes effect and leaves the list; a refusal
// then quotes the validator's reason (exit 1).
func TestOperatorActionWithoutAWorkerIsPendingNotRefused(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dbURL := testenv.Postgres(t)
	hostPort := testenv.Temporal(t)
	reg, err := registry.Open(ctx, dbURL)
	require.NoError(t, err)
	defer reg.Close()
	id := "job-set-tags-pending-" + time.Now().Format("150405.000000")
	ids := []string{"p0", "p1", "p2"}
	_, err = reg.CreateJobForIDs(ctx, fleet.NewJob{ID: id, Kind: fleet.JobSetTags, Query: "ids", Spec: json.RawMessage(`{}`)}, ids)
	require.NoError(t, err)

	defer func(d time.Duration) { updateAnswerWait = d }(updateAnswerWait)
	updateAnswerWait = 2 * time.Second

	c, err := client.DialContext(ctx, client.Options{HostPort: hostPort, Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	defer c.Close()
	queue := id // no worker polls it yet
	_, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: queue}, workflows.FleetJob, workflows.JobInput{
		JobID: id, Kind: fleet.JobSetTags, Total: int64(len(ids)), BatchSize: 1, Window: 1, Patch: json.RawMessage(`{"site":"x"}`)})
	require.NoError(t, err)

	_, code, err := runCLIAt(t, dbURL, hostPort, "job", "pause", id)
	require.Error(t, err)
	require.Equal(t, exitPending, code, "%v", err)
	require.Contains(t, err.Error(), "waiting for a worker")
	require.NotContains(t, err.Error(), "refused", "an action no worker answered is not refused")

	out, code, err := runCLIAt(t, dbURL, hostPort, "job", "resume", id, "-o", "json")
	require.Equal(t, exitPending, code, "%v", err)
	var answer updateAnswer
	require.NoError(t, json.Unmarshal([]byte(out), &answer), out)
	require.Equal(t, "pending", answer.State)

	out, code, err = runCLIAt(t, dbURL, hostPort, "job", "status", id, "-o", "json")
	require.NoError(t, err)
	require.Equal(t, exitOK, code)
	var st jobStatusView
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	var pending []string
	for _, p := range st.Pending {
		pending = append(pending, p.Update+"="+p.Stage)
		require.False(t, p.WaitingSince.IsZero(), "the workflow has been waiting for a worker since its task was scheduled")
	}
	require.Equal(t, []string{"pause=admitted", "resume=admitted"}, pending, "status shows the actions waiting for a worker")

	// A worker comes: the pending pause and resume take effect, in the order they were sent.
	store := fleettest.New()
	for _, d := range ids {
		store.AddDevice(d, fleettest.Device{})
	}
	store.AddJob(id, ids...)
	blockBatch := make(chan struct{})
	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflow(workflows.FleetJob)
	acts := &activities.Activities{Jobs: store, Fault: func(point string) error {
		if point == activities.FaultCounted {
			<-blockBatch // hold the first batch, so that the job is still running for the actions below
		}
		return nil
	}}
	w.RegisterActivity(acts)
	require.NoError(t, w.Start())
	defer w.Stop()
	for _, uid := range []string{"pause-1", "resume-1"} {
		require.Eventually(t, func() bool {
			stage, _, err := describeUpdate(ctx, c, "default", id, uid)
			return err == nil && stage == enumspb.UPDATE_WORKFLOW_EXECUTION_LIFECYCLE_STAGE_COMPLETED
		}, time.Minute, 100*time.Millisecond, "%s is applied once a worker runs", uid)
	}
	out, _, err = runCLIAt(t, dbURL, hostPort, "job", "status", id, "-o", "json")
	require.NoError(t, err)
	st = jobStatusView{}
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	require.Empty(t, st.Pending, "nothing is pending once a worker has answered")

	// A refusal quotes the validator's reason.
	_, code, err = runCLIAt(t, dbURL, hostPort, "job", "resume", id)
	require.Equal(t, exitFailed, code)
	require.ErrorContains(t, err, "resume refused: job "+id+" is not paused")
	require.NotContains(t, err.Error(), "type:", "the reason, not the error's decoration")

	out, code, err = runCLIAt(t, dbURL, hostPort, "job", "cancel", id, "-o", "json")
	require.NoError(t, err)
	require.Equal(t, exitOK, code)
	answer = updateAnswer{}
	require.NoError(t, json.Unmarshal([]byte(out), &answer), out)
	require.Equal(t, "done", answer.State)
	require.True(t, strings.Contains(answer.Message, "cancelled"), answer.Message)
	close(blockBatch)
	run := c.GetWorkflow(ctx, id, "")
	var res workflows.JobResult
	require.NoError(t, run.Get(ctx, &res))
	require.Equal(t, string(fleet.JobEndCancelled), res.State)
}

// TestRolloutActionsWithoutAWorkerShowAsPending: the same for a rollout — approve and abort sent while no
// worker runs wait for one (exit 4) and `rollout status` lists them.
func TestRolloutActionsWithoutAWorkerShowAsPending(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dbURL := testenv.Postgres(t)
	hostPort := testenv.Temporal(t)
	reg, err := registry.Open(ctx, dbURL)
	require.NoError(t, err)
	defer reg.Close()
	_, err = reg.Pool().Exec(ctx, `INSERT INTO devices (id, status) VALUES ('ro-d1', 'active'), ('ro-d2', 'active')`)
	require.NoError(t, err)
	_, err = reg.AddFirmware(ctx, fleet.Firmware{Version: "9.0.0", URL: "https://fw.example/9.bin", SHA256: strings.Repeat("ab", 32)})
	require.NoError(t, err)
	id := "rollout-9.0.0-" + time.Now().Format("150405000000")
	_, err = reg.CreateRollout(ctx, fleet.NewRollout{ID: id, Version: "9.0.0", Query: "SELECT * FROM devices WHERE deviceId IN ('ro-d1', 'ro-d2')",
		Spec: json.RawMessage(`{}`)})
	require.NoError(t, err)

	defer func(d time.Duration) { updateAnswerWait = d }(updateAnswerWait)
	updateAnswerWait = 2 * time.Second
	c, err := client.DialContext(ctx, client.Options{HostPort: hostPort, Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	defer c.Close()
	_, err = c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: id, TaskQueue: id}, workflows.FirmwareRollout,
		workflows.RolloutInput{RolloutID: id})
	require.NoError(t, err)

	_, code, err := runCLIAt(t, dbURL, hostPort, "rollout", "approve", id)
	require.Equal(t, exitPending, code, "%v", err)
	_, code, err = runCLIAt(t, dbURL, hostPort, "rollout", "abort", id, "--no-rollback", "--reason", "test")
	require.Equal(t, exitPending, code, "%v", err)
	require.ErrorContains(t, err, "abort is waiting for a worker")

	out, _, err := runCLIAt(t, dbURL, hostPort, "rollout", "status", id, "-o", "json")
	require.NoError(t, err)
	var st rolloutStatusView
	require.NoError(t, json.Unmarshal([]byte(out), &st), out)
	var pending []string
	for _, p := range st.Pending {
		pending = append(pending, p.UpdateID)
	}
	require.Equal(t, []string{"approve-1", "abort-1"}, pending)
	require.NoError(t, c.TerminateWorkflow(ctx, id, "", "test over"))
}
