package fleetworker_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	enumspb "go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

// checkedV1 is the released shape of a workflow: a step, a wait for a signal, another step.
func checkedV1(ctx workflow.Context) error {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
	if err := workflow.ExecuteActivity(ctx, "StepA").Get(ctx, nil); err != nil {
		return err
	}
	workflow.GetSignalChannel(ctx, "go").Receive(ctx, nil)
	return workflow.ExecuteActivity(ctx, "StepB").Get(ctx, nil)
}

// checkedIncompatible is a deliberately incompatible change of it: a new first step, unguarded.
func checkedIncompatible(ctx workflow.Context) error {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{StartToCloseTimeout: time.Minute})
	if err := workflow.ExecuteActivity(ctx, "StepZero").Get(ctx, nil); err != nil {
		return err
	}
	return checkedV1(ctx)
}

// checkedGuarded is the same change made safely: behind workflow.GetVersion, so running workflows keep
// their recorded path.
func checkedGuarded(ctx workflow.Context) error {
	if workflow.GetVersion(ctx, "step-zero", workflow.DefaultVersion, 1) == 1 {
		return checkedIncompatible(ctx)
	}
	return checkedV1(ctx)
}

func registerAs(wf any) func(worker.WorkflowReplayer) {
	return func(r worker.WorkflowReplayer) {
		r.RegisterWorkflowWithOptions(wf, workflow.RegisterOptions{Name: "Checked"})
	}
}

// The replay check fetches the open workflow and the recently closed one of a task queue from the server
// and replays them: the code they ran passes, a guarded change passes, and a deliberately incompatible
// change fails on both, naming them; a workflow type the code no longer has fails too.
func TestReplayCheckCatchesAnIncompatibleChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c, err := client.Dial(client.Options{HostPort: testenv.Temporal(t), Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	queue := "replay-check-" + time.Now().Format("150405.000000000")

	w := worker.New(c, queue, worker.Options{})
	w.RegisterWorkflowWithOptions(checkedV1, workflow.RegisterOptions{Name: "Checked"})
	step := func(context.Context) error { return nil }
	for _, name := range []string{"StepA", "StepB", "StepZero"} {
		w.RegisterActivityWithOptions(step, activity.RegisterOptions{Name: name})
	}
	require.NoError(t, w.Start())
	defer w.Stop()

	closed, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: queue + "-closed", TaskQueue: queue}, "Checked")
	require.NoError(t, err)
	open, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{ID: queue + "-open", TaskQueue: queue}, "Checked")
	require.NoError(t, err)
	require.NoError(t, c.SignalWorkflow(ctx, closed.GetID(), "", "go", nil))
	require.NoError(t, closed.Get(ctx, nil))
	// The open one has run its first step and waits for the signal.
	require.Eventually(t, func() bool {
		it := c.GetWorkflowHistory(ctx, open.GetID(), "", false, enumspb.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			ev, err := it.Next()
			if err != nil {
				return false
			}
			if ev.GetEventType() == enumspb.EVENT_TYPE_WORKFLOW_TASK_COMPLETED && ev.GetEventId() > 5 {
				return true
			}
		}
		return false
	}, time.Minute, 50*time.Millisecond)
	// Visibility trails the close: wait until the list shows both.
	check := func(reg func(worker.WorkflowReplayer)) fleetworker.ReplayReport {
		t.Helper()
		var rep fleetworker.ReplayReport
		require.Eventually(t, func() bool {
			var err error
			rep, err = fleetworker.ReplayCheck(ctx, c, fleetworker.ReplayCheckOptions{TaskQueue: queue, ClosedWithin: time.Hour, Register: reg})
			require.NoError(t, err)
			return rep.Checked == 2 && rep.Open == 1
		}, time.Minute, 200*time.Millisecond, "both workflows listed: %+v", rep)
		return rep
	}

	assert.True(t, check(registerAs(checkedV1)).OK(), "the code that ran them replays them")
	assert.True(t, check(registerAs(checkedGuarded)).OK(), "a change behind GetVersion replays them")

	rep := check(registerAs(checkedIncompatible))
	require.Len(t, rep.Failures, 2, "%+v", rep)
	ids := []string{rep.Failures[0].WorkflowID, rep.Failures[1].WorkflowID}
	assert.ElementsMatch(t, []string{open.GetID(), closed.GetID()}, ids)
	for _, f := range rep.Failures {
		assert.Equal(t, "Checked", f.WorkflowType)
		// The SDK marks every non-determinism error TMPRL1100; which one it reports depends on where the
		// history, recorded on a loaded machine, first disagrees ("nondeterministic workflow definition",
		// "lookup failed for scheduledEventID to activityID", …).
		msg := strings.ToLower(f.Err.Error())
		assert.True(t, strings.Contains(msg, "tmprl1100") || strings.Contains(msg, "nondetermin"), "not a non-determinism error: %v", f.Err)
	}

	rep = check(func(worker.WorkflowReplayer) {}) // a binary without the workflow type
	assert.Len(t, rep.Failures, 2, "a removed workflow type cannot replay either")

	// Open ones only, and fleetflow's own code (the default): the test workflow is not one of ours.
	rep, err = fleetworker.ReplayCheck(ctx, c, fleetworker.ReplayCheckOptions{TaskQueue: queue})
	require.NoError(t, err)
	assert.Equal(t, 1, rep.Checked)
	assert.False(t, rep.OK(), "fleetflow's workers do not know the test workflow")

	require.NoError(t, c.SignalWorkflow(ctx, open.GetID(), "", "go", nil))
	require.NoError(t, open.Get(ctx, nil))
}

// A task queue name that would need quoting in the visibility query is refused before anything is asked.
func TestReplayCheckRefusesQuotes(t *testing.T) {
	_, err := fleetworker.ReplayCheck(context.Background(), nil, fleetworker.ReplayCheckOptions{TaskQueue: "it's"})
	require.ErrorContains(t, err, "quotes")
}
