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

// stagedPoll is how often AwaitStaged looks at the staged-rows cursor: a chunk of the CLI's staging takes
// about a tenth of a second at a million rows, and a look is one indexed read of the operation's row.
const stagedPoll = 50 * time.Millisecond

// AwaitStaged follows the staged-rows cursor of a manifest the CLI is still staging in chunks: it returns as
// soon as more than in.After rows are staged or staging has ended, and otherwise after
// workflows.AwaitStagedMax (the workflow asks again). A staging that stalled (its CLI killed) or was
// abandoned fails the workflow: no more rows will come.
func (a *Activities) AwaitStaged(ctx context.Context, in workflows.AwaitStagedInput) (fleet.Staged, error) {
	if a.Provision == nil {
		return fleet.Staged{}, errNoStore("provisioning")
	}
	deadline := time.Now().Add(workflows.AwaitStagedMax)
	for {
		st, err := a.Provision.StagedRows(ctx, in.Op, fleet.StagingStallAfter)
		switch {
		case errors.Is(err, fleet.ErrStagingAbandoned):
			return st, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeStagingAbandoned, err)
		case errors.Is(err, fleet.ErrOperationNotStaged):
			return st, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeNotStaged, err)
		case err != nil:
			return st, err
		}
		if st.Done || st.Rows > in.After || !time.Now().Before(deadline) {
			return st, nil
		}
		if activity.IsActivity(ctx) {
			activity.RecordHeartbeat(ctx, st.Rows)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-workerStopping(ctx):
			return st, nil
		case <-time.After(stagedPoll):
		}
	}
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
