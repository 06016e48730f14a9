package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/workflows"
)

// queryFleet adds n devices to f's store and teaches the store that q selects them; it returns their ids.
func queryFleet(f *jobFleet, q string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = devID(i)
		f.store.AddDevice(ids[i], fleettest.Device{Online: f.online[i]})
	}
	f.store.Mu.Lock()
	f.store.Selects[q] = ids
	f.store.Mu.Unlock()
	return ids
}

// requireAppError asserts that the workflow failed with a non-retryable application error of type typ.
func requireAppError(t *testing.T, err error, typ string) *temporal.ApplicationError {
	t.Helper()
	require.Error(t, err)
	var app *temporal.ApplicationError
	require.True(t, errors.As(err, &app), "want an application error, got %v", err)
	require.Equal(t, typ, app.Type())
	require.True(t, app.NonRetryable())
	return app
}

func TestFleetJobCreatesItsJobAsTheFirstStepIdempotently(t *testing.T) {
	const q = "SELECT * FROM devices WHERE tags.site = 'ber'"
	f := newJobFleet(1500)
	f.loseCreate = true
	queryFleet(f, q, 1500)
	env := newJobEnv(t, f, 0, 0)
	spec := json.RawMessage(`{"patch":{"site":"x"}}`)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-new", Kind: fleet.JobSetTags, Query: q, Spec: spec,
		BatchSize: 1000, Patch: json.RawMessage(`{"site":"x"}`)})
	res := jobResult(t, env)

	require.Len(t, f.creates, 2, "the lost first attempt is retried")
	for _, c := range f.creates {
		require.Equal(t, workflows.JobCreateInput{JobID: "job-new", Kind: fleet.JobSetTags, Query: q, Spec: spec}, c)
	}
	require.Len(t, f.store.Targets["job-new"], 1500, "the retry found the frozen set and froze nothing twice")
	require.Equal(t, int64(1500), res.Total, "the workflow learns Total from its creation step")
	require.Equal(t, [][2]int64{{0, 1000}, {1000, 1500}}, f.batchRanges())
	require.Equal(t, fleet.JobCounts{Succeeded: 1500}, res.Counts)
	require.Equal(t, "completed", res.State)
}

func TestFleetJobWithAnEmptyTargetSetFailsWithEmptyTarget(t *testing.T) {
	const q = "SELECT * FROM devices WHERE tags.site = 'nowhere'"
	f := newJobFleet(0)
	f.store.Selects[q] = nil
	env := newJobEnv(t, f, 0, 0)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-empty", Kind: fleet.JobSetTags, Query: q,
		Patch: json.RawMessage(`{"a":1}`)})
	require.True(t, env.IsWorkflowCompleted())
	requireAppError(t, env.GetWorkflowError(), workflows.ErrTypeEmptyTarget)
	require.Len(t, f.creates, 1, "an empty target set is not retried")
	require.Empty(t, f.batches)
	require.Empty(t, f.closes, "nothing was created, so nothing is closed")
	require.Empty(t, f.store.Targets["job-empty"])
}

func TestDecommissionByIDsCreatesItsJobAndRetiresEachDeviceOnce(t *testing.T) {
	f := newJobFleet(3)
	queryFleet(f, "unused", 3)
	f.acts.Retire = f.store
	env := newJobEnv(t, f, 0, 0)
	ids := []string{"d2", "d0", "d2", "gone"}
	env.ExecuteWorkflow(workflows.Decommission, workflows.JobInput{JobID: "decommission-1", Kind: fleet.JobRetire,
		Query: "ids: d2 d0 d2 gone", IDs: ids, Reason: "test"})
	res := jobResult(t, env)

	require.Len(t, f.creates, 1)
	require.Equal(t, ids, f.creates[0].IDs)
	require.Equal(t, int64(3), res.Total, "duplicates dropped, the unknown id kept as a target")
	require.Equal(t, fleet.StatusRetired, f.store.Devices["d2"].Status)
	require.Equal(t, fleet.StatusRetired, f.store.Devices["d0"].Status)
	require.Equal(t, fleet.StatusActive, f.store.Devices["d1"].Status)
	require.Equal(t, int64(2), res.Counts.Succeeded)
	require.Equal(t, int64(1), res.Counts.Failed, "the unknown id is reported per device")
}

// rolloutStore is a fake registry for a rollout's creation step: devices r0.. on 1.0.0 that q selects.
func rolloutStore(n int, q string) *fleettest.Store {
	s := fleettest.New()
	ids := make([]string, n)
	for i := range ids {
		ids[i] = devID(i)
		s.AddDevice(ids[i], fleettest.Device{ReportedVersion: "1.0.0"})
	}
	s.Selects[q] = ids
	s.FirmwareURL["2.4.0"] = "https://fw.example/2.4.0.bin"
	return s
}

func TestFirmwareRolloutClaimsItsDevicesAsTheFirstStep(t *testing.T) {
	const q = "SELECT * FROM devices"
	store := rolloutStore(100, q)
	acts := &activities.Activities{Rollouts: store}
	f := newRolloutFleet(100)
	var creates []workflows.RolloutCreateInput
	f.create = func(ctx context.Context, in workflows.RolloutCreateInput) (workflows.RolloutCreateResult, error) {
		creates = append(creates, in)
		return acts.RolloutCreate(ctx, in)
	}
	env := newRolloutEnv(t, f)
	in := rolloutIn(t, "ro-new", 0)
	in.Query, in.Spec = q, json.RawMessage(`{"waves":"1%,10%,50%,100%"}`)
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)

	require.Equal(t, []workflows.RolloutCreateInput{{RolloutID: "ro-new", Version: "2.4.0", Query: q, Spec: in.Spec}}, creates)
	require.Len(t, store.Rows, 100, "every selected device is claimed")
	require.Equal(t, [][2]int64{{0, 1}, {1, 10}, {2, 50}, {3, 100}}, f.dispatched(), "the cutoffs follow the claimed total")
	require.Equal(t, "completed", res.State)
	p := queryRollout(t, env)
	require.Equal(t, int64(100), p.Total)
	require.Equal(t, []int64{1, 10, 50, 100}, p.Cutoffs)
}

func TestFirmwareRolloutConflictFailsNamingTheOtherRollout(t *testing.T) {
	const q = "SELECT * FROM devices"
	store := rolloutStore(10, q)
	store.AddRow(fleettest.RolloutRow{Rollout: "rollout-2.3.0-1", DeviceID: "d3"})
	store.AddRow(fleettest.RolloutRow{Rollout: "rollout-2.3.0-1", DeviceID: "d4"})
	acts := &activities.Activities{Rollouts: store}
	f := newRolloutFleet(10)
	calls := 0
	f.create = func(ctx context.Context, in workflows.RolloutCreateInput) (workflows.RolloutCreateResult, error) {
		calls++
		return acts.RolloutCreate(ctx, in)
	}
	env := newRolloutEnv(t, f)
	in := rolloutIn(t, "ro-late", 0)
	in.Query = q
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	require.True(t, env.IsWorkflowCompleted())
	app := requireAppError(t, env.GetWorkflowError(), workflows.ErrTypeRolloutConflict)
	var conflict fleet.RolloutConflictError
	require.NoError(t, app.Details(&conflict))
	require.Equal(t, fleet.RolloutConflictError{Rollout: "rollout-2.3.0-1", Devices: 2}, conflict)
	require.Contains(t, app.Error(), "rollout-2.3.0-1", "the message names the other rollout")
	require.Equal(t, 1, calls, "a conflict is not retried")
	require.Empty(t, f.dispatched())
	require.Empty(t, f.finishStates(), "nothing was claimed, so nothing is finished")
	require.Len(t, store.Rows, 2, "the refused rollout claimed nothing")
}
