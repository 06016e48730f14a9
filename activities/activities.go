// Package activities holds the I/O of fleetflow's workflows: thin, batched and idempotent methods on a struct
// that carries its dependencies as interfaces, built once per worker process (worker/).
package activities

import (
	"context"
	"errors"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/registry"
	"github.com/fleetflow/fleetflow/workflows"
)

// Registry is what provisioning needs from the device registry (implemented by *registry.Registry).
type Registry interface {
	ProvisionBatch(ctx context.Context, op string, first, last int64) (registry.BatchCounts, error)
	ConnectProgress(ctx context.Context, op string, sample int) (registry.ConnectProgress, error)
	ProvisionResults(ctx context.Context, op, outcome string, limit int) ([]registry.RowResult, error)
	DropStaging(ctx context.Context, op string) error
}

// Activities are registered with the worker as one struct; each exported method is an activity whose name
// is the method name (see the Act* constants in workflows).
type Activities struct {
	Registry Registry
	// Configure is the registry as jobs and rollouts use it (nil in workers that only provision).
	Configure ConfigureStore
	// Retire retires, replaces and purges devices (nil in workers that do not run the retire stage).
	Retire RetireStore
	// Channel reaches devices over MQTT; nil when the worker has no broker configured, in which case
	// desired changes still land in the registry (devices read them on reconnect) and method jobs fail.
	Channel Channel
	// PollInterval is how often WaitConnected re-counts; zero means one second.
	PollInterval time.Duration
}

// missingSample is how many not-yet-reported device ids progress reports carry.
const missingSample = 20

// invalidSample is how many invalid rows a provisioning result carries; the CLI reads the rest from Postgres.
const invalidSample = 20

// heartbeatEvery keeps a long batch transaction visibly alive, so a crashed worker's batch is retried after
// the heartbeat timeout instead of the much longer start-to-close timeout.
const heartbeatEvery = 2 * time.Second

// ProvisionBatch creates the devices of one range of staged manifest lines. It is idempotent: the registry
// records each committed batch and returns its counts on a retry.
func (a *Activities) ProvisionBatch(ctx context.Context, req workflows.BatchRequest) (workflows.Counts, error) {
	stop := keepHeartbeating(ctx)
	defer stop()
	c, err := a.Registry.ProvisionBatch(ctx, req.Op, req.First, req.Last)
	if errors.Is(err, registry.ErrOperationNotStaged) || errors.Is(err, registry.ErrStagingLost) {
		// Retrying cannot bring staged rows back: fail the workflow with the reason.
		return workflows.Counts{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeNotStaged, err)
	}
	if err != nil {
		return workflows.Counts{}, err
	}
	return workflows.Counts{Created: c.Created, Existing: c.Existing, Invalid: c.Invalid}, nil
}

// WaitConnected polls the registry until every device the operation created has reported, or MaxWait has
// passed, and returns the latest counts. One activity per poll period keeps history small while the
// workflow still shows progress between polls.
func (a *Activities) WaitConnected(ctx context.Context, req workflows.WaitConnectedRequest) (workflows.ConnectStatus, error) {
	interval := a.PollInterval
	if interval <= 0 {
		interval = time.Second
	}
	deadline := time.Now().Add(req.MaxWait)
	for {
		p, err := a.Registry.ConnectProgress(ctx, req.Op, missingSample)
		if err != nil {
			return workflows.ConnectStatus{}, err
		}
		st := workflows.ConnectStatus{Created: p.Created, Connected: p.Connected, Reported: p.Reported, Missing: p.Missing}
		activity.RecordHeartbeat(ctx, st.Reported)
		if st.Reported >= st.Created || !time.Now().Add(interval).Before(deadline) {
			return st, nil
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// FinishProvision drops the operation's staged rows and returns a sample of its invalid rows.
func (a *Activities) FinishProvision(ctx context.Context, op string) (workflows.FinishResult, error) {
	rows, err := a.Registry.ProvisionResults(ctx, op, "invalid", invalidSample)
	if err != nil {
		return workflows.FinishResult{}, err
	}
	if err := a.Registry.DropStaging(ctx, op); err != nil {
		return workflows.FinishResult{}, err
	}
	var out workflows.FinishResult
	for _, r := range rows {
		out.InvalidSample = append(out.InvalidSample, workflows.RowIssue{Line: r.Line, ID: r.ID, Outcome: r.Outcome, Reason: r.Reason})
	}
	return out, nil
}

// keepHeartbeating heartbeats in the background until stop is called. Activities that run one long
// transaction cannot heartbeat from their own goroutine.
func keepHeartbeating(ctx context.Context) (stop func()) {
	if !activity.IsActivity(ctx) {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(heartbeatEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				activity.RecordHeartbeat(ctx)
			}
		}
	}()
	return func() { close(done) }
}

// Names lists the activity names this struct provides, for registration checks in tests.
func Names() []string {
	return []string{workflows.ActProvisionBatch, workflows.ActWaitConnected, workflows.ActFinishProvision}
}
