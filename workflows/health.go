package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/internal/numfmt"
	"github.com/fleetflow/fleetflow/internal/searchattr"
)

// Limits of the health check's activity. The check is one registry transaction over the whole fleet
// (seconds at a million devices); a check that cannot finish within the timeout is better retried, and one
// that keeps failing gives way to the next scheduled check rather than piling up behind it.
const (
	healthCheckTimeout   = 10 * time.Minute
	healthCheckHeartbeat = 30 * time.Second
	healthCheckAttempts  = 5
)

// FleetHealthCheck runs one health check over the fleet: a single RunHealthCheck activity that finds every
// problem with set-based SQL, opens and resolves alerts, and records a health_runs row. A Temporal Schedule
// starts it every few minutes (`fleetflow health schedule`); `fleetflow health run` starts one now. Its
// current details show the outcome in the UI's list, and its search attributes make it findable there
// (FleetOp = 'healthcheck').
func FleetHealthCheck(ctx workflow.Context, in HealthCheckInput) (HealthCheckResult, error) {
	rules := in.Rules()
	if err := rules.Validate(); err != nil {
		return HealthCheckResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidInput, nil)
	}
	setHealthState(ctx, searchattr.StateRunning)
	workflow.SetCurrentDetails(ctx, "**health check** running — "+rules.String())

	id := workflow.GetInfo(ctx).WorkflowExecution.ID
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: healthCheckTimeout,
		HeartbeatTimeout:    healthCheckHeartbeat,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute,
			MaximumAttempts: healthCheckAttempts, NonRetryableErrorTypes: []string{ErrTypeInvalidInput}},
		Summary: rules.String(),
	})
	req := RunHealthCheckInput{RunID: id, OfflineAfter: rules.OfflineAfter, AckWithin: rules.AckWithin, ExpiringWithin: rules.ExpiringWithin}
	var res HealthCheckResult
	if err := executeActivity(actx, Activities.RunHealthCheck, req).Get(ctx, &res); err != nil {
		setHealthState(ctx, searchattr.StateFailed)
		workflow.SetCurrentDetails(ctx, "**health check failed** — "+rules.String())
		var canceled *temporal.CanceledError
		if errors.As(err, &canceled) {
			return HealthCheckResult{}, err
		}
		return HealthCheckResult{}, fmt.Errorf("health check %s: %w", id, err)
	}
	workflow.SetCurrentDetails(ctx, healthDetails(res, rules))
	if err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.State.ValueSet(searchattr.StateCompleted),
		searchattr.Total.ValueSet(res.Devices)); err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
	return res, nil
}

// setHealthState upserts FleetOp as well as FleetOpState: a check started without the schedule's or the
// CLI's attributes (by hand, from the UI) still lists as a health check.
func setHealthState(ctx workflow.Context, state string) {
	err := workflow.UpsertTypedSearchAttributes(ctx, searchattr.Op.ValueSet(searchattr.OpHealthCheck), searchattr.State.ValueSet(state))
	if err != nil {
		workflow.GetLogger(ctx).Warn("upsert search attributes", "err", err)
	}
}

// healthDetails renders the markdown the Temporal UI shows as a finished check's current details.
func healthDetails(r HealthCheckResult, rules health.Rules) string {
	return fmt.Sprintf("**health check** — %s devices, %s online\n\n%s\n\n%s", numfmt.Thousands(r.Devices), numfmt.Thousands(r.Online),
		r.Summary(), rules.String())
}
