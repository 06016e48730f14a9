package activities

import (
	"context"
	"errors"

	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/query"
	"github.com/fleetflow/fleetflow/workflows"
)

// JobCreate is the first step of FleetJob and Decommission: it records the job and freezes its target set
// (fleet.JobStore.CreateJob) in one transaction. It is idempotent, so a retry after a crash, or a second
// attempt racing a slow first one, returns the total the first attempt froze. What retrying cannot change
// fails the workflow with a typed non-retryable error (workflows.ErrTypeEmptyTarget, ErrTypeInvalidQuery).
func (a *Activities) JobCreate(ctx context.Context, in workflows.JobCreateInput) (workflows.JobCreateResult, error) {
	if a.Jobs == nil {
		return workflows.JobCreateResult{}, errNoStore("job")
	}
	total, err := a.Jobs.CreateJob(ctx, fleet.NewJob{ID: in.JobID, Kind: in.Kind, Query: in.Query, IDs: in.IDs, Spec: in.Spec})
	if err != nil {
		return workflows.JobCreateResult{}, creationError(err)
	}
	return workflows.JobCreateResult{Total: total}, nil
}

// RolloutCreate is the first step of FirmwareRollout: it records the rollout and claims its devices
// (fleet.RolloutStore.CreateRollout) in one transaction, idempotently. A conflict with another running
// rollout fails the workflow with workflows.ErrTypeRolloutConflict, the conflict (naming the other rollout)
// as the error's details.
func (a *Activities) RolloutCreate(ctx context.Context, in workflows.RolloutCreateInput) (workflows.RolloutCreateResult, error) {
	if a.Rollouts == nil {
		return workflows.RolloutCreateResult{}, errNoStore("rollout")
	}
	total, err := a.Rollouts.CreateRollout(ctx, fleet.NewRollout{ID: in.RolloutID, Version: in.Version, Query: in.Query, Spec: in.Spec})
	if err != nil {
		return workflows.RolloutCreateResult{}, creationError(err)
	}
	return workflows.RolloutCreateResult{Total: total}, nil
}

// creationError makes the errors a retry cannot change non-retryable, each with its own type; anything
// else (a lost connection, a serialization failure) stays retryable.
func creationError(err error) error {
	var (
		conflict *fleet.RolloutConflictError
		syntax   *query.SyntaxError
		semantic *query.SemanticError
	)
	switch {
	case errors.As(err, &conflict):
		return temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeRolloutConflict, err, *conflict)
	case errors.Is(err, fleet.ErrEmptyTarget):
		return temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeEmptyTarget, err)
	case errors.Is(err, fleet.ErrUnknownFirmware):
		return temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeUnknownFirmware, err)
	case errors.As(err, &syntax), errors.As(err, &semantic):
		return temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidQuery, err)
	}
	return err
}
