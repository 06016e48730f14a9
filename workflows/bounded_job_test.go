package workflows_test

import (
	"context"
	"encoding/json"
	"errors"
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

// eventBudget is the most history events a run of a long wait may have (the bound; Temporal
// terminates a run at 51,200).
const eventBudget = 10000

// runEvents bounds a run's history from what the test environment saw: each activity costs at most six
// events (scheduled, started, completed, and the workflow task that reacts: scheduled, started, completed),
// each timer five, plus a fixed allowance for the start, markers, search-attribute upserts and the end.
func runEvents(activities, timers int) int { return 6*activities + 5*timers + 50 }

// runCounter counts a test run's activities and timers, and makes JobCollectAcks and WaitConnected take
// the MaxWait they are given on the workflow clock, as the real ones do when devices stay silent.
type runCounter struct {
	mu         sync.Mutex
	activities int
	timers     int
	lastWait   time.Duration
}

func (c *runCounter) listen(env *testsuite.TestWorkflowEnvironment) {
	env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, args converter.EncodedValues) {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.activities++
		var in struct{ MaxWait time.Duration }
		if info.ActivityType.Name == workflows.ActivityName(workflows.Activities.JobCollectAcks) ||
			info.ActivityType.Name == workflows.ActivityName(workflows.Activities.WaitConnected) {
			if args.Get(&in) == nil {
				c.lastWait = in.MaxWait
			}
		}
	})
	env.SetOnTimerScheduledListener(func(string, time.Duration) {
		c.mu.Lock()
		c.timers++
		c.mu.Unlock()
	})
}

func (c *runCounter) wait() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastWait
}

// TestFleetJobWaitingFortyEightHoursKeepsEveryRunSmall: a desired job whose one online device never
// acknowledges waits its whole 48 h timeout, in runs that each stay far below the history limit, and then
// closes with exact counts and the deadline it was started with.
func TestFleetJobWaitingFortyEightHoursKeepsEveryRunSmall(t *testing.T) {
	const total = 50
	f := newJobFleet(total)
	f.neverAck[total-1] = true
	timeout := 48 * time.Hour
	in := workflows.JobInput{JobID: "job-48h", Kind: fleet.JobSetDesired, Total: total, Patch: json.RawMessage(`{"mode":"eco"}`),
		AckKeys: []string{"mode"}, Timeout: timeout}
	dc := converter.GetDefaultDataConverter()
	start, now := testStart, testStart
	var res workflows.JobResult
	var runs []int
	for run := 1; ; run++ {
		require.LessOrEqual(t, run, 50, "the wait should end within a few runs")
		env := newJobEnv(t, f, 0, 0)
		env.SetStartTime(now)
		env.SetTestTimeout(2 * time.Minute)
		c := &runCounter{}
		c.listen(env)
		env.OnActivity(workflows.ActivityName(workflows.Activities.JobCollectAcks), mock.Anything, mock.Anything).
			Return(f.collectAcks).AfterFn(c.wait)
		env.ExecuteWorkflow(workflows.FleetJob, in)
		require.True(t, env.IsWorkflowCompleted())
		events := runEvents(c.activities, c.timers)
		require.Less(t, events, eventBudget, "run %d: %d activities, %d timers", run, c.activities, c.timers)
		runs = append(runs, events)
		now = env.Now()
		err := env.GetWorkflowError()
		var can *workflow.ContinueAsNewError
		if !errors.As(err, &can) {
			require.NoError(t, err)
			require.NoError(t, env.GetWorkflowResult(&res))
			break
		}
		var next workflows.JobInput
		require.NoError(t, dc.FromPayloads(can.Input, &next))
		require.Equal(t, total, int(next.Next), "every batch was dispatched in the first run")
		require.False(t, next.AckStart.IsZero(), "the wait's start travels with the run")
		require.Empty(t, f.closes, "the job is not closed before its last run")
		in = next
	}
	require.Greater(t, len(runs), 1, "a 48 h wait continues as new (runs: %v)", runs)
	waited := now.Sub(start)
	require.GreaterOrEqual(t, waited, timeout, "the device gets its whole timeout")
	require.Less(t, waited, timeout+2*time.Minute, "and not much more: the deadline survives continue-as-new")
	require.Equal(t, []string{string(fleet.JobCompletedWithFailures)}, f.closeStates())
	require.Equal(t, fleet.JobCounts{Succeeded: total - 1, TimedOut: 1}, res.Counts)
	require.Equal(t, len(runs), res.Runs)
	require.Len(t, f.batches, 1, "no batch is sent again by a continued run")
	t.Logf("48 h wait: %d runs, events per run at most %v", len(runs), runs)
}
