package fleetworker_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/api/enums/v1"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/client"
	tlog "go.temporal.io/sdk/log"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/worker"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleetworker"
	"github.com/fleetflow/fleetflow/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// stopProbe is an activity that reports it started, waits until its worker begins to stop, and then either
// finishes (polite) or waits for cancellation (stubborn), reporting how it ended.
type stopProbe struct {
	started chan struct{}
	ended   chan error // nil: finished after the stop began; else the context's error
}

func (p *stopProbe) Polite(ctx context.Context) error {
	close(p.started)
	select {
	case <-activity.GetWorkerStopChannel(ctx):
		// Stop has begun and must still wait for this activity: do a last piece of work and finish.
		p.ended <- nil
		return nil
	case <-ctx.Done():
		p.ended <- ctx.Err()
		return ctx.Err()
	}
}

func (p *stopProbe) Stubborn(ctx context.Context) error {
	close(p.started)
	<-ctx.Done()
	p.ended <- ctx.Err()
	return ctx.Err()
}

func stopWorkflow(ctx workflow.Context, name string) error {
	ctx = workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: 10 * time.Minute,
		RetryPolicy:         &temporal.RetryPolicy{MaximumAttempts: 1},
	})
	return workflow.ExecuteActivity(ctx, name).Get(ctx, nil)
}

// startStopProbe runs a worker with the given stop timeout and a workflow that runs activity name on it,
// and returns once the activity runs.
func startStopProbe(t *testing.T, name string, stopTimeout time.Duration) (worker.Worker, *stopProbe, *fleetworker.Running, func() []enums.EventType) {
	t.Helper()
	c, err := client.Dial(client.Options{HostPort: testenv.Temporal(t), Logger: tlog.NewStructuredLogger(slog.New(slog.DiscardHandler))})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	queue := "stop-" + t.Name()
	running := &fleetworker.Running{}
	wo, err := fleetworker.Options{PoolSize: 4, StopTimeout: stopTimeout, Running: running}.WorkerOptions()
	require.NoError(t, err)
	w := worker.New(c, queue, wo)
	p := &stopProbe{started: make(chan struct{}), ended: make(chan error, 1)}
	w.RegisterActivity(p)
	w.RegisterWorkflow(stopWorkflow)
	require.NoError(t, w.Start())
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	run, err := c.ExecuteWorkflow(ctx, client.StartWorkflowOptions{TaskQueue: queue, ID: queue + "-" + time.Now().Format("150405.000000000")}, stopWorkflow, name)
	require.NoError(t, err)
	select {
	case <-p.started:
	case <-ctx.Done():
		t.Fatal("the activity never started")
	}
	require.Equal(t, map[string]int{name: 1}, running.Snapshot())
	history := func() []enums.EventType {
		var types []enums.EventType
		it := c.GetWorkflowHistory(context.Background(), run.GetID(), run.GetRunID(), false, enums.HISTORY_EVENT_FILTER_TYPE_ALL_EVENT)
		for it.HasNext() {
			e, err := it.Next()
			require.NoError(t, err)
			types = append(types, e.GetEventType())
		}
		return types
	}
	return w, p, running, history
}

// Stop waits for a running activity that finishes within the stop timeout, and lets it succeed.
func TestStopLetsRunningActivityFinish(t *testing.T) {
	w, p, running, run := startStopProbe(t, "Polite", 5*time.Minute)
	stopped := make(chan struct{})
	go func() { w.Stop(); close(stopped) }()
	select {
	case err := <-p.ended:
		require.NoError(t, err, "the activity was cancelled instead of being let finish")
	case <-time.After(2 * time.Minute):
		t.Fatal("the activity never saw the worker stop")
	}
	select {
	case <-stopped:
	case <-time.After(2 * time.Minute):
		t.Fatal("Stop did not return after the activity finished")
	}
	require.Zero(t, running.Total(), "Stop returned while the activity ran")
	// The result reached Temporal before the worker let go: the workflow goes on without a retry.
	require.Contains(t, run(), enums.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
}

// Stop cancels an activity still running at the stop timeout, rather than waiting for it forever.
func TestStopCancelsActivityAtTimeout(t *testing.T) {
	w, p, _, _ := startStopProbe(t, "Stubborn", time.Second)
	stopped := make(chan struct{})
	go func() { w.Stop(); close(stopped) }()
	select {
	case err := <-p.ended:
		require.True(t, errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded), "ended with %v", err)
	case <-time.After(2 * time.Minute):
		t.Fatal("the activity was never cancelled")
	}
	select {
	case <-stopped:
	case <-time.After(2 * time.Minute):
		t.Fatal("Stop did not return after the stop timeout")
	}
}
