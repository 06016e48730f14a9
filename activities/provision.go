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

// missingSample is how many not-yet-reported device ids progress reports carry.
const missingSample = 20

// invalidSample is how many invalid rows a provisioning result carries; the CLI reads the rest from Postgres.
const invalidSample = 20

// ProvisionBatch creates the devices of one range of staged manifest lines. It is idempotent: the registry
// records each committed batch and returns its counts on a retry.
func (a *Activities) ProvisionBatch(ctx context.Context, in workflows.ProvisionBatchInput) (fleet.ProvisionCounts, error) {
	if a.Provision == nil {
		return fleet.ProvisionCounts{}, errNoStore("provisioning")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	c, err := a.Provision.ProvisionBatch(ctx, in.Op, in.First, in.Last, in.CredentialValidity)
	if errors.Is(err, fleet.ErrOperationNotStaged) || errors.Is(err, fleet.ErrStagingLost) {
		// Retrying cannot bring staged rows back: fail the workflow with the reason.
		return fleet.ProvisionCounts{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeNotStaged, err)
	}
	if err != nil {
		return c, err
	}
	// Committed: a retry from here gets the same counts from the registry's record of the batch.
	if err := a.fault(FaultCommitted); err != nil {
		return fleet.ProvisionCounts{}, err
	}
	return c, nil
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
		case <-workerStopping(ctx):
			return st, nil
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
