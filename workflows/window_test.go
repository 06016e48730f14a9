package workflows_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/activities"
	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/workflows"
)

// A job with a maintenance policy reaches each device only inside its window — its own from its tags, or
// the operation's — waiting on durable timers between passes, and reports a device whose window does not
// open before the deadline, and one whose window tag does not parse, instead of skipping them.
func TestJobWaitsForMaintenanceWindows(t *testing.T) {
	store := fleettest.New()
	tags := map[string]string{
		"d0": `{"maintenance": "Sat 13:00-14:00", "timezone": "UTC"}`, // testStart is Saturday 12:00 UTC: opens in an hour
		"d1": `{}`,                                                    // the operation's window: Sunday 02:00 Berlin = 01:00 UTC
		"d2": `{"maintenance": "Mon 10:00-11:00"}`,                    // after the deadline
		"d3": `{"maintenance": "Someday 10:00-11:00"}`,
	}
	ids := []string{"d0", "d1", "d2", "d3"}
	for _, id := range ids {
		store.AddDevice(id, fleettest.Device{Tags: []byte(tags[id])})
	}
	store.AddJob("job-w", ids...)
	acts := &activities.Activities{Jobs: store}
	var mu sync.Mutex
	written := map[string]time.Time{}

	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.FleetJob)
	env.RegisterActivityWithOptions(func(ctx context.Context, in workflows.JobWindowBatchInput) (workflows.JobWindowBatchResult, error) {
		res, err := acts.JobWindowBatch(ctx, in)
		mu.Lock()
		defer mu.Unlock()
		store.Mu.Lock()
		defer store.Mu.Unlock()
		for _, id := range ids {
			if _, seen := written[id]; !seen && strings.Contains(string(store.Devices[id].Tags), "beta") {
				written[id] = env.Now().UTC()
			}
		}
		return res, err
	}, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobWindowBatch)})
	env.RegisterActivityWithOptions(acts.JobClose, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.JobClose)})

	deadline := testStart.Add(36 * time.Hour)
	env.ExecuteWorkflow(workflows.FleetJob, workflows.JobInput{JobID: "job-w", Kind: fleet.JobSetTags, Total: 4, Patch: json.RawMessage(`{"ring": "beta"}`),
		Maintenance: &fleet.MaintenancePolicy{Window: "Sun 02:00-04:00", Timezone: "Europe/Berlin", WindowTag: "maintenance", TimezoneTag: "timezone",
			Deadline: deadline}})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.JobResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Equal(t, fleet.JobCounts{Succeeded: 2, Failed: 1, OutsideWindow: 1}, res.Counts)

	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, testStart.Add(time.Hour), written["d0"], "d0 waits for its own window")
	assert.Equal(t, time.Date(2025, 3, 2, 1, 0, 0, 0, time.UTC), written["d1"], "d1 waits for the operation's window")
	assert.NotContains(t, written, "d2")
	assert.Equal(t, fleet.JobOutsideWindow, store.TargetState("job-w", 2))
	assert.Equal(t, fleet.JobFailed, store.TargetState("job-w", 3))
}

// A rollout with a maintenance window starts each wave inside it, waiting on a durable timer; one whose
// window does not open before the deadline ends without dispatching, its devices cancelled for that reason.
func TestFirmwareRolloutWaitsForTheMaintenanceWindow(t *testing.T) {
	f := newRolloutFleet(100)
	env := newRolloutEnv(t, f)
	in := rolloutIn(t, "ro-win", 100)
	in.Maintenance = &fleet.MaintenancePolicy{Window: "Sat 13:00-14:00", Deadline: testStart.Add(72 * time.Hour)}
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res := rolloutResult(t, env)
	require.Equal(t, "completed", res.State)
	f.mu.Lock()
	require.Len(t, f.dispatchAt, 4)
	assert.Equal(t, testStart.Add(time.Hour), f.dispatchAt[0].UTC(), "the first wave waits an hour for the window")
	for _, at := range f.dispatchAt {
		assert.True(t, !at.Before(testStart.Add(time.Hour)) && at.Before(testStart.Add(2*time.Hour)), "wave dispatched at %s", at.UTC())
	}
	f.mu.Unlock()

	f = newRolloutFleet(100)
	env = newRolloutEnv(t, f)
	in = rolloutIn(t, "ro-missed", 100)
	in.Maintenance = &fleet.MaintenancePolicy{Window: "Sat 13:00-14:00", Deadline: testStart.Add(30 * time.Minute)}
	env.ExecuteWorkflow(workflows.FirmwareRollout, in)
	res = rolloutResult(t, env)
	assert.Equal(t, "aborted", res.State)
	assert.Contains(t, res.Decision, "does not open before the rollout's deadline")
	f.mu.Lock()
	defer f.mu.Unlock()
	assert.Empty(t, f.dispatches)
	require.Len(t, f.finishes, 1)
	assert.Contains(t, f.finishes[0].Summary.CancelReason, "maintenance window Sat 13:00-14:00 UTC does not open")
}
