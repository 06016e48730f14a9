package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/twin"
	"github.com/fleetflow/fleetflow/workflows"
)

// configFake records what a FleetConfiguration asked of the registry.
type configFake struct {
	mu      sync.Mutex
	saves   []workflows.ConfigSaveInput
	passes  int
	deletes []string
}

func (f *configFake) save(_ context.Context, in workflows.ConfigSaveInput) (int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.saves = append(f.saves, in)
	return in.Version, nil
}

func (f *configFake) reconcile(_ context.Context, in workflows.ConfigReconcileInput) (workflows.ConfigReconcileResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.passes++
	return workflows.ConfigReconcileResult{Written: 1, Counts: fleet.ConfigCounts{Targeted: 10, Applied: int64(f.passes), Acked: 1,
		Metrics: []fleet.ConfigMetricCount{{Name: "eu", Count: 4}}}}, nil
}

func (f *configFake) delete(_ context.Context, name string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.deletes = append(f.deletes, name)
	return name, nil
}

func configSpec(name, patch string) fleet.ConfigSpec {
	return fleet.ConfigSpec{Name: name, Priority: 5, Section: twin.Desired, Target: fleet.Target{Query: "SELECT * FROM devices"},
		Patch: json.RawMessage(patch)}
}

// newConfigEnv runs FleetConfiguration against f; each reconcile pass takes its full PassFor in workflow time
// unless an update cancels it.
func newConfigEnv(t *testing.T, f *configFake, passFor time.Duration) *testsuite.TestWorkflowEnvironment {
	t.Helper()
	var s testsuite.WorkflowTestSuite
	env := s.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.FleetConfiguration)
	env.RegisterActivityWithOptions(f.save, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.ConfigSave)})
	env.RegisterActivityWithOptions(f.reconcile, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.ConfigReconcile)})
	env.RegisterActivityWithOptions(f.delete, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.ConfigDelete)})
	env.OnActivity(workflows.ActivityName(workflows.Activities.ConfigReconcile), mock.Anything, mock.Anything).Return(f.reconcile).After(passFor)
	return env
}

// A configuration saves each version and state change, reconciles in passes until deleted, and refuses
// updates that make no sense.
func TestFleetConfigurationUpdates(t *testing.T) {
	f := &configFake{}
	env := newConfigEnv(t, f, time.Minute)
	var apply, wrongName, badSpec, pause, pauseAgain, resume, resumeAgain, del, delAgain *updateRecord
	var progress workflows.ConfigProgress
	v2 := configSpec("heat", `{"interval": 60}`)
	env.RegisterDelayedCallback(func() { apply = sendUpdate(env, workflows.UpdateApply, v2) }, 90*time.Second)
	env.RegisterDelayedCallback(func() { wrongName = sendUpdate(env, workflows.UpdateApply, configSpec("other", `{"a": 1}`)) }, 91*time.Second)
	env.RegisterDelayedCallback(func() { badSpec = sendUpdate(env, workflows.UpdateApply, configSpec("heat", `{}`)) }, 92*time.Second)
	env.RegisterDelayedCallback(func() { pause = sendUpdate(env, workflows.UpdatePause) }, 5*time.Minute)
	env.RegisterDelayedCallback(func() { pauseAgain = sendUpdate(env, workflows.UpdatePause) }, 6*time.Minute)
	env.RegisterDelayedCallback(func() { resume = sendUpdate(env, workflows.UpdateResume) }, 60*time.Minute)
	env.RegisterDelayedCallback(func() { resumeAgain = sendUpdate(env, workflows.UpdateResume) }, 61*time.Minute)
	env.RegisterDelayedCallback(func() {
		v, err := env.QueryWorkflow(workflows.QueryProgress)
		require.NoError(t, err)
		require.NoError(t, v.Get(&progress))
	}, 64*time.Minute+30*time.Second)
	env.RegisterDelayedCallback(func() { del = sendUpdate(env, workflows.UpdateDelete) }, 65*time.Minute)
	env.RegisterDelayedCallback(func() { delAgain = sendUpdate(env, workflows.UpdateDelete) }, 65*time.Minute)

	env.ExecuteWorkflow(workflows.FleetConfiguration, workflows.ConfigInput{Spec: configSpec("heat", `{"interval": 30}`)})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.ConfigResult
	require.NoError(t, env.GetWorkflowResult(&res))
	assert.Contains(t, res.Message, "devices keep the values it wrote")
	assert.EqualValues(t, 2, res.Version)

	requireAccepted(t, apply)
	requireRejected(t, wrongName, "not other")
	requireRejected(t, badSpec, "sets nothing")
	requireAccepted(t, pause)
	requireRejected(t, pauseAgain, "already paused")
	requireAccepted(t, resume)
	requireRejected(t, resumeAgain, "not paused")
	requireAccepted(t, del)
	assert.True(t, delAgain.rejected || delAgain.err != nil || delAgain.completed, "a second delete is answered")

	f.mu.Lock()
	defer f.mu.Unlock()
	var saved []string
	for _, s := range f.saves {
		saved = append(saved, fmt.Sprintf("%s v%d", s.State, s.Version))
	}
	assert.Equal(t, []string{"active v1", "active v2", "paused v2", "active v2"}, saved)
	assert.JSONEq(t, `{"interval": 60}`, string(f.saves[1].Spec.Patch))
	assert.Equal(t, []string{"heat"}, f.deletes)
	// Passes ran while active (about one a minute) and none while paused for 55 minutes.
	assert.Greater(t, f.passes, 3)
	assert.Less(t, f.passes, 15)
	assert.Equal(t, "active", progress.State)
	assert.EqualValues(t, 2, progress.Version)
	assert.EqualValues(t, 10, progress.Counts.Targeted)
	assert.Equal(t, []fleet.ConfigMetricCount{{Name: "eu", Count: 4}}, progress.Counts.Metrics)
}

// A configuration continues as new after its passes per run, carrying its version and counts.
func TestFleetConfigurationContinuesAsNew(t *testing.T) {
	f := &configFake{}
	env := newConfigEnv(t, f, time.Minute)
	env.ExecuteWorkflow(workflows.FleetConfiguration, workflows.ConfigInput{Spec: configSpec("heat", `{"interval": 30}`), PassesPerRun: 3})
	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.True(t, errors.As(env.GetWorkflowError(), &can), "got %v", env.GetWorkflowError())
	var next workflows.ConfigInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	assert.Equal(t, 1, next.Runs)
	assert.True(t, next.Saved)
	assert.EqualValues(t, 1, next.Version)
	assert.EqualValues(t, 3, next.Counts.Applied)
	assert.Equal(t, 3, f.passes)
}

// An invalid spec fails at once, without retrying.
func TestFleetConfigurationRefusesInvalidSpec(t *testing.T) {
	f := &configFake{}
	env := newConfigEnv(t, f, time.Minute)
	env.ExecuteWorkflow(workflows.FleetConfiguration, workflows.ConfigInput{Spec: configSpec("Bad Name", `{"a": 1}`)})
	require.Error(t, env.GetWorkflowError())
	assert.ErrorContains(t, env.GetWorkflowError(), "configuration name")
	assert.Empty(t, f.saves)
}
