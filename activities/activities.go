// Package activities holds the I/O of fleetflow's workflows: thin, batched and idempotent methods on a struct
// that carries its dependencies as interfaces, built once per worker process (worker/).
package activities

import (
	"context"
	"errors"
	"time"

	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/workflows"
)

// Activities are registered with the worker as one struct; each exported method is an activity whose name
// is the method name (workflows.Activities declares them all). Each stage reaches the registry through its
// own small store interface, so a worker or a test provides only what it runs; a stage whose store is nil
// fails its activities without retrying.
type Activities struct {
	Provision fleet.ProvisionStore
	Jobs      fleet.JobStore
	Rollouts  fleet.RolloutStore
	Retire    fleet.RetireStore
	Monitor   fleet.MonitorStore
	// Channel reaches devices; nil when the worker has no broker configured, in which case desired changes
	// still land in the registry (devices read them on reconnect) and method jobs fail.
	Channel fleet.Channel
	// PollInterval is how often WaitConnected re-counts; zero means one second.
	PollInterval time.Duration
}

// The compiler checks that the activities are what workflows call.
var _ workflows.Activities = (*Activities)(nil)

// New returns activities over a store that plays every role (the registry) and a channel (nil: none).
func New(store interface {
	fleet.ProvisionStore
	fleet.JobStore
	fleet.RolloutStore
	fleet.RetireStore
	fleet.MonitorStore
}, ch fleet.Channel) *Activities {
	return &Activities{Provision: store, Jobs: store, Rollouts: store, Retire: store, Monitor: store, Channel: ch}
}

// errNoStore is the permanent failure of an activity whose stage this worker was not given a store for.
func errNoStore(stage string) error {
	return temporal.NewNonRetryableApplicationError("this worker has no "+stage+" store", "NoStore", nil)
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
func (a *Activities) ProvisionBatch(ctx context.Context, in workflows.ProvisionBatchInput) (fleet.ProvisionCounts, error) {
	if a.Provision == nil {
		return fleet.ProvisionCounts{}, errNoStore("provisioning")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	c, err := a.Provision.ProvisionBatch(ctx, in.Op, in.First, in.Last)
	if errors.Is(err, fleet.ErrOperationNotStaged) || errors.Is(err, fleet.ErrStagingLost) {
		// Retrying cannot bring staged rows back: fail the workflow with the reason.
		return fleet.ProvisionCounts{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeNotStaged, err)
	}
	return c, err
}

// WaitConnected polls the registry until every device the operation created has reported, or MaxWait has
// passed, and returns the latest counts. One activity per poll period keeps history small while the
// workflow still shows progress between polls.
func (a *Activities) WaitConnected(ctx context.Context, req workflows.WaitConnectedInput) (fleet.ConnectProgress, error) {
	if a.Provision == nil {
		return fleet.ConnectProgress{}, errNoStore("provisioning")
	}
	interval := a.PollInterval
	if interval <= 0 {
		interval = time.Second
	}
	deadline := time.Now().Add(req.MaxWait)
	for {
		st, err := a.Provision.ConnectProgress(ctx, req.Op, missingSample)
		if err != nil {
			return fleet.ConnectProgress{}, err
		}
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
func (a *Activities) FinishProvision(ctx context.Context, op string) (workflows.FinishProvisionResult, error) {
	if a.Provision == nil {
		return workflows.FinishProvisionResult{}, errNoStore("provisioning")
	}
	rows, err := a.Provision.ProvisionResults(ctx, op, fleet.RowInvalid, invalidSample)
	if err != nil {
		return workflows.FinishProvisionResult{}, err
	}
	if err := a.Provision.DropStaging(ctx, op); err != nil {
		return workflows.FinishProvisionResult{}, err
	}
	return workflows.FinishProvisionResult{InvalidSample: rows}, nil
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
