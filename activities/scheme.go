package activities

import (
	"context"
	"errors"

	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/scheme"
	"github.com/fleetflow/fleetflow/workflows"
)

// SchemeStage records a `scheme set`'s candidate version, or finds the version in force for a plain check,
// and records the check (docs/architecture.md, "Metadata scheme"). Both steps are idempotent.
func (a *Activities) SchemeStage(ctx context.Context, in workflows.SchemeStageInput) (int64, error) {
	if a.Scheme == nil {
		return 0, errNoStore("scheme")
	}
	var v int64
	var err error
	if len(in.Tags) > 0 {
		v, err = a.Scheme.StageScheme(ctx, in.CheckID, in.Tags, in.Reported, in.AllowViolations)
		if errors.Is(err, scheme.ErrInvalidScheme) {
			return 0, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidInput, nil)
		}
	} else {
		v, err = a.Scheme.ActiveSchemeVersion(ctx)
		if errors.Is(err, fleet.ErrNoScheme) {
			return 0, temporal.NewNonRetryableApplicationError(err.Error()+" (fleetflow scheme set FILE)", workflows.ErrTypeNoScheme, nil)
		}
	}
	if err != nil {
		return 0, err
	}
	return v, a.Scheme.StartSchemeCheck(ctx, in.CheckID, v)
}

// SchemeCheckBatch checks one batch of devices against the check's version.
func (a *Activities) SchemeCheckBatch(ctx context.Context, in workflows.SchemeBatchInput) (fleet.SchemeCheckProgress, error) {
	if a.Scheme == nil {
		return fleet.SchemeCheckProgress{}, errNoStore("scheme")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	return a.Scheme.SchemeCheckBatch(ctx, in.CheckID, in.After, in.Limit)
}

// SchemeFinish ends the check and, for a `scheme set`, decides its version.
func (a *Activities) SchemeFinish(ctx context.Context, in workflows.SchemeFinishInput) (fleet.SchemeCheckEnd, error) {
	if a.Scheme == nil {
		return fleet.SchemeCheckEnd{}, errNoStore("scheme")
	}
	return a.Scheme.FinishSchemeCheck(ctx, in.CheckID, in.Activate)
}
