package workflows

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/mock"
	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
)

// TestProvisionFleetAwaitingConnectsFortyEightHoursKeepsEveryRunSmall: provision --await-connect 48h with
// devices that never all report polls for the whole 48 h in runs that each stay far below 10,000 history
// events (six at most per activity, five per timer, plus a fixed allowance), and ends at its deadline.
func TestProvisionFleetAwaitingConnectsFortyEightHoursKeepsEveryRunSmall(t *testing.T) {
	f := &fakeActs{}
	var mu sync.Mutex
	var lastWait time.Duration
	var activities, polls int
	await := 48 * time.Hour
	in := ProvisionInput{Op: "op-48h", Rows: 200, BatchSize: 100, AwaitConnect: await}
	dc := converter.GetDefaultDataConverter()
	start := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	now := start
	var res ProvisionResult
	var runs []int
	for run := 1; ; run++ {
		require.LessOrEqual(t, run, 50, "the wait should end within a few runs")
		env := newEnv(t, f)
		env.SetStartTime(now)
		env.SetTestTimeout(2 * time.Minute)
		activities = 0
		env.SetOnActivityStartedListener(func(info *activity.Info, _ context.Context, args converter.EncodedValues) {
			mu.Lock()
			defer mu.Unlock()
			activities++
			var w WaitConnectedInput
			if info.ActivityType.Name == ActivityName(Activities.WaitConnected) && args.Get(&w) == nil {
				lastWait = w.MaxWait
			}
		})
		env.OnActivity(ActivityName(Activities.WaitConnected), mock.Anything, mock.Anything).Return(
			func(context.Context, WaitConnectedInput) (fleet.ConnectProgress, error) {
				mu.Lock()
				polls++
				mu.Unlock()
				return fleet.ConnectProgress{Created: 100, Connected: 90, Reported: 80, Missing: []string{"dev-001"}}, nil
			}).AfterFn(func() time.Duration { mu.Lock(); defer mu.Unlock(); return lastWait })
		env.ExecuteWorkflow(ProvisionFleet, in)
		require.True(t, env.IsWorkflowCompleted())
		events := 6*activities + 50
		require.Less(t, events, 10000, "run %d: %d activities", run, activities)
		runs = append(runs, events)
		now = env.Now()
		var can *workflow.ContinueAsNewError
		if err := env.GetWorkflowError(); !errors.As(err, &can) {
			require.NoError(t, err)
			require.NoError(t, env.GetWorkflowResult(&res))
			break
		}
		var next ProvisionInput
		require.NoError(t, dc.FromPayloads(can.Input, &next))
		require.Equal(t, in.Rows, next.Next, "every row was provisioned in the first run")
		require.False(t, next.AwaitStart.IsZero(), "the wait's start travels with the run")
		in = next
	}
	require.Greater(t, len(runs), 1, "a 48 h wait continues as new (runs: %v)", runs)
	require.Len(t, f.batches, 2, "no batch is run again by a continued run")
	waited := now.Sub(start)
	require.GreaterOrEqual(t, waited, await)
	require.Less(t, waited, await+2*time.Minute, "the deadline survives continue-as-new")
	require.NotNil(t, res.Connect)
	require.Equal(t, int64(80), res.Connect.Reported)
	require.Less(t, polls, 4000, "polls slow down once the wait is long")
	t.Logf("48 h connect wait: %d runs, %d polls, events per run at most %v", len(runs), polls, runs)
}
