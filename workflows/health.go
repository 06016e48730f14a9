package workflows

import (
	"errors"
	"fmt"
	"time"

	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/workflow"

	"github.com/fleetflow/fleetflow/internal/fleet"
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
//
// With a rule (HealthCheckInput.Rule), the check is that health rule's: the activity reads its target and
// limits in the check's transaction (docs/architecture.md, "Health rules"), so that a schedule started
// before `health rule set` changed them runs with the new ones.
func FleetHealthCheck(ctx workflow.Context, in HealthCheckInput) (HealthCheckResult, error) {
	rules := in.Rules()
	what := rules.String()
	if in.IsRule() {
		what = "rule " + in.Rule
	} else if err := rules.Validate(); err != nil {
		return HealthCheckResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidInput, nil)
	}
	setHealthState(ctx, searchattr.StateRunning)
	workflow.SetCurrentDetails(ctx, "**health check** running — "+what)

	id := workflow.GetInfo(ctx).WorkflowExecution.ID
	actx := workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: healthCheckTimeout,
		HeartbeatTimeout:    healthCheckHeartbeat,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: 5 * time.Second, BackoffCoefficient: 2, MaximumInterval: time.Minute,
			MaximumAttempts: healthCheckAttempts, NonRetryableErrorTypes: []string{ErrTypeInvalidInput}},
		Summary: what,
	})
	req := RunHealthCheckInput{RunID: id, OfflineAfter: rules.OfflineAfter, AckWithin: rules.AckWithin, ExpiringWithin: rules.ExpiringWithin}
	if in.IsRule() {
		req = RunHealthCheckInput{RunID: id, Rule: in.Rule}
	}
	var res HealthCheckResult
	if err := executeActivity(actx, Activities.RunHealthCheck, req).Get(ctx, &res); err != nil {
		setHealthState(ctx, searchattr.StateFailed)
		workflow.SetCurrentDetails(ctx, "**health check failed** — "+what)
		var canceled *temporal.CanceledError
		if errors.As(err, &canceled) {
			return HealthCheckResult{}, err
		}
		return HealthCheckResult{}, fmt.Errorf("health check %s: %w", id, err)
	}
	if res.Rules != nil {
		rules = *res.Rules
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
	title := "**health check**"
	if r.Rule != "" && r.Rule != health.FleetRule {
		title = "**health rule " + r.Rule + "** (`" + r.Target + "`)"
	}
	return fmt.Sprintf("%s — %s devices, %s online\n\n%s\n\n%s", title, numfmt.Thousands(r.Devices), numfmt.Thousands(r.Online),
		r.Summary(), rules.String())
}

// Limits of the activities that write a health rule: one short transaction each.
const (
	healthRuleWriteTimeout  = time.Minute
	healthRuleWriteAttempts = 5
)

func healthRuleWriteOptions(ctx workflow.Context) workflow.Context {
	return workflow.WithActivityOptions(ctx, workflow.ActivityOptions{
		StartToCloseTimeout: healthRuleWriteTimeout,
		RetryPolicy: &temporal.RetryPolicy{InitialInterval: time.Second, BackoffCoefficient: 2, MaximumInterval: 30 * time.Second,
			MaximumAttempts: healthRuleWriteAttempts, NonRetryableErrorTypes: []string{ErrTypeInvalidInput}},
	})
}

// HealthRuleSave writes a health rule's definition (docs/architecture.md, "Health rules"): the CLI only
// reads and starts, so `fleetflow health rule set` starts this workflow, waits for it, then puts the rule on
// its Temporal Schedule. It returns the rule as saved. A target that does not compile fails it without
// retries.
func HealthRuleSave(ctx workflow.Context, in HealthRuleSaveInput) (fleet.HealthRule, error) {
	rule, err := fleet.PrepareHealthRule(in.Rule)
	if err != nil {
		return fleet.HealthRule{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeInvalidInput, nil)
	}
	workflow.SetCurrentDetails(ctx, fmt.Sprintf("**health rule %s** — `%s`, every %s; %s", rule.Name, rule.Query,
		numfmt.FormatDuration(rule.Every), rule.Rules.String()))
	return executeActivity(healthRuleWriteOptions(ctx), Activities.SaveHealthRule, HealthRuleSaveInput{Rule: rule}).Result(ctx)
}

// HealthRuleDelete deletes a health rule's definition and resolves its open alerts; `fleetflow health rule
// delete` deletes the rule's schedule first, so that no check of a rule that is gone is started.
func HealthRuleDelete(ctx workflow.Context, in HealthRuleDeleteInput) (HealthRuleDeleteResult, error) {
	var res HealthRuleDeleteResult
	err := executeActivity(healthRuleWriteOptions(ctx), Activities.DeleteHealthRule, in).Get(ctx, &res)
	return res, err
}
