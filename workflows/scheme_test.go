package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/testsuite"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// schemeActs is a fleet of n devices (dev-000 …), every violating-th of which violates the scheme, behind
// fake scheme activities that hold what the registry would.
type schemeActs struct {
	mu        sync.Mutex
	n, every  int
	staged    []workflows.SchemeStageInput
	batches   []workflows.SchemeBatchInput
	finished  []workflows.SchemeFinishInput
	progress  fleet.SchemeCheckProgress
	allow     bool
	failFirst bool
}

func (s *schemeActs) stage(_ context.Context, in workflows.SchemeStageInput) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.staged = append(s.staged, in)
	s.allow = in.AllowViolations
	return 7, nil
}

func (s *schemeActs) batch(_ context.Context, in workflows.SchemeBatchInput) (fleet.SchemeCheckProgress, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.batches = append(s.batches, in)
	if s.failFirst {
		s.failFirst = false
		return fleet.SchemeCheckProgress{}, errors.New("connection reset")
	}
	first := 0
	if in.After != "" {
		fmt.Sscanf(in.After, "dev-%03d", &first)
		first++
	}
	n := 0
	for i := first; i < s.n && n < in.Limit; i++ {
		n++
		s.progress.Checked++
		if i%s.every == 0 {
			s.progress.Violating++
		}
		s.progress.Cursor = fmt.Sprintf("dev-%03d", i)
	}
	s.progress.Done = n < in.Limit
	return s.progress, nil
}

func (s *schemeActs) finish(_ context.Context, in workflows.SchemeFinishInput) (fleet.SchemeCheckEnd, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.finished = append(s.finished, in)
	state := fleet.SchemeActive
	if in.Activate && s.progress.Violating > 0 && !s.allow {
		state = fleet.SchemeRefused
	}
	return fleet.SchemeCheckEnd{Version: 7, State: state, Checked: s.progress.Checked, Violating: s.progress.Violating}, nil
}

func newSchemeEnv(s *schemeActs) *testsuite.TestWorkflowEnvironment {
	var suite testsuite.WorkflowTestSuite
	env := suite.NewTestWorkflowEnvironment()
	env.SetStartTime(testStart)
	env.SetTestTimeout(10 * time.Second)
	env.RegisterWorkflow(workflows.SchemeCheck)
	env.RegisterActivityWithOptions(s.stage, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.SchemeStage)})
	env.RegisterActivityWithOptions(s.batch, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.SchemeCheckBatch)})
	env.RegisterActivityWithOptions(s.finish, activity.RegisterOptions{Name: workflows.ActivityName(workflows.Activities.SchemeFinish)})
	env.OnUpsertTypedSearchAttributes(mock.Anything).Return(nil)
	return env
}

func TestSchemeSetRefusedWhenTheFleetViolatesIt(t *testing.T) {
	s := &schemeActs{n: 25, every: 10, failFirst: true}
	env := newSchemeEnv(s)
	env.ExecuteWorkflow(workflows.SchemeCheck, workflows.SchemeCheckInput{CheckID: "scheme-set-1", Set: true,
		Tags: json.RawMessage(`{"type":"object"}`), BatchSize: 10})
	require.True(t, env.IsWorkflowCompleted())
	require.NoError(t, env.GetWorkflowError())
	var res workflows.SchemeCheckResult
	require.NoError(t, env.GetWorkflowResult(&res))
	require.Equal(t, fleet.SchemeCheckEnd{Version: 7, State: fleet.SchemeRefused, Checked: 25, Violating: 3}, res.SchemeCheckEnd)
	require.Len(t, s.staged, 1)
	require.JSONEq(t, `{"type":"object"}`, string(s.staged[0].Tags))
	// A failed batch is retried from the same cursor; the batches walk the ids with a cursor.
	var afters []string
	for _, b := range s.batches {
		afters = append(afters, b.After)
	}
	require.Equal(t, []string{"", "", "dev-009", "dev-019"}, afters)
	require.Equal(t, []workflows.SchemeFinishInput{{CheckID: "scheme-set-1", Activate: true}}, s.finished)
}

func TestSchemeCheckContinuesAsNewWithItsCursor(t *testing.T) {
	s := &schemeActs{n: 45, every: 4}
	env := newSchemeEnv(s)
	env.ExecuteWorkflow(workflows.SchemeCheck, workflows.SchemeCheckInput{CheckID: "scheme-check-1", BatchSize: 10, BatchesPerRun: 2})
	require.True(t, env.IsWorkflowCompleted())
	var can *workflow.ContinueAsNewError
	require.ErrorAs(t, env.GetWorkflowError(), &can)
	// The next run starts where this one stopped, with the version and counts, and without documents.
	var next workflows.SchemeCheckInput
	require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
	require.Equal(t, int64(7), next.Version)
	require.Equal(t, "dev-019", next.Progress.Cursor)
	require.Equal(t, int64(20), next.Progress.Checked)
	require.Equal(t, 1, next.Runs)
	require.Empty(t, next.Tags)

	// Two more runs: 20 more devices, then the last 5 and the finish.
	for run := 2; ; run++ {
		env := newSchemeEnv(s)
		env.ExecuteWorkflow(workflows.SchemeCheck, next)
		require.True(t, env.IsWorkflowCompleted())
		if err := env.GetWorkflowError(); err != nil {
			require.ErrorAs(t, err, &can)
			require.NoError(t, converter.GetDefaultDataConverter().FromPayloads(can.Input, &next))
			require.Equal(t, run, next.Runs)
			continue
		}
		var res workflows.SchemeCheckResult
		require.NoError(t, env.GetWorkflowResult(&res))
		require.Equal(t, fleet.SchemeCheckEnd{Version: 7, State: fleet.SchemeActive, Checked: 45, Violating: 12}, res.SchemeCheckEnd)
		require.Equal(t, 3, res.Runs)
		break
	}
	require.Len(t, s.staged, 1, "later runs do not stage again")
	require.Equal(t, []workflows.SchemeFinishInput{{CheckID: "scheme-check-1"}}, s.finished, "a plain check decides nothing")
}
