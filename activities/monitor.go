package activities

import (
	"context"
	"errors"

	"go.temporal.io/sdk/temporal"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/workflows"
)

// ErrTypeNoMonitor marks a health check sent to a worker that has no registry to run it against.
const ErrTypeNoMonitor = "NoMonitorStore"

// RunHealthCheck runs one health check over the whole fleet (fleet.MonitorStore.RunHealthCheck): one transaction,
// heartbeated from the side since it cannot report progress of its own, and idempotent per RunID.
//
// The health check runs on a schedule, so it also owns the cleanup of staged manifest rows that no workflow
// will read: a CLI killed between staging a manifest and starting ProvisionFleet leaves them behind, and
// they hold credential digests. Rows staged more than fleet.StaleStagingAfter ago are dropped first; a
// failure to drop them is logged and does not fail the check.
func (a *Activities) RunHealthCheck(ctx context.Context, req workflows.RunHealthCheckInput) (workflows.HealthCheckResult, error) {
	if a.Provision != nil {
		n, err := a.Provision.DropStaleStaging(ctx, fleet.StaleStagingAfter)
		switch {
		case err != nil:
			activityLogger(ctx).Warn("drop stale staged manifest rows", "err", err)
		case n > 0:
			activityLogger(ctx).Info("dropped stale staged manifest rows", "rows", n, "olderThan", fleet.StaleStagingAfter)
		}
	}
	if req.Rule != "" && req.Rule != health.FleetRule {
		return a.runHealthRule(ctx, req)
	}
	store := a.Monitor
	if store == nil {
		err := errors.New("this worker has no registry to run health checks against")
		return workflows.HealthCheckResult{}, temporal.NewNonRetryableApplicationError(err.Error(), ErrTypeNoMonitor, err)
	}
	rules := health.Rules{OfflineAfter: req.OfflineAfter, AckWithin: req.AckWithin, ExpiringWithin: req.ExpiringWithin}.WithDefaults()
	if err := rules.Validate(); err != nil {
		// The same rules fail the same way on every attempt.
		return workflows.HealthCheckResult{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidInput, err)
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	s, err := store.RunHealthCheck(ctx, req.RunID, rules)
	if err != nil {
		return workflows.HealthCheckResult{}, err
	}
	return healthResult(req.RunID, s), nil
}

// healthResult is a check's summary as the workflow returns it. The fleet-wide check's result keeps the
// shape it had before rules existed (no rule, target or limits: its input holds them).
func healthResult(runID string, s fleet.HealthSummary) workflows.HealthCheckResult {
	r := workflows.HealthCheckResult{RunID: runID, At: s.At, Devices: s.Devices, Active: s.Active, Disabled: s.Disabled,
		Retired: s.Retired, Online: s.Online, Offline: s.Offline, Problems: fleet.ProblemCountsOf(s.Problems),
		Opened: s.Opened, Resolved: s.Resolved, Open: s.Open, Duration: s.Duration}
	if s.Rule != "" && s.Rule != health.FleetRule {
		rules := s.Rules
		r.Rule, r.Target, r.Rules = s.Rule, s.Target, &rules
	}
	return r
}

// runHealthRule is RunHealthCheck for a health rule (docs/architecture.md, "Health rules"). A rule that no
// longer exists (deleted while its schedule fired) or whose target no longer compiles fails without retries.
func (a *Activities) runHealthRule(ctx context.Context, req workflows.RunHealthCheckInput) (workflows.HealthCheckResult, error) {
	if a.HealthRules == nil {
		return workflows.HealthCheckResult{}, errNoStore("health rule")
	}
	stop := keepHeartbeating(ctx)
	defer stop()
	s, err := a.HealthRules.RunHealthRule(ctx, req.RunID, req.Rule)
	if err != nil {
		if errors.Is(err, fleet.ErrHealthRuleNotFound) || isPermanent(err) {
			return workflows.HealthCheckResult{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidInput, err)
		}
		return workflows.HealthCheckResult{}, err
	}
	return healthResult(req.RunID, s), nil
}

// SaveHealthRule writes a health rule's definition (fleet.HealthRuleStore.SaveHealthRule) and returns it as
// saved. A rule the registry refuses as written (a target that does not compile) is not retried.
func (a *Activities) SaveHealthRule(ctx context.Context, in workflows.HealthRuleSaveInput) (fleet.HealthRule, error) {
	if a.HealthRules == nil {
		return fleet.HealthRule{}, errNoStore("health rule")
	}
	rule, err := fleet.PrepareHealthRule(in.Rule)
	if err != nil {
		return fleet.HealthRule{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidInput, err)
	}
	if err := a.HealthRules.SaveHealthRule(ctx, rule); err != nil {
		if isPermanent(err) || errors.Is(err, fleet.ErrGroupNotFound) {
			return fleet.HealthRule{}, temporal.NewNonRetryableApplicationError(err.Error(), workflows.ErrTypeInvalidInput, err)
		}
		return fleet.HealthRule{}, err
	}
	return rule, nil
}

// DeleteHealthRule deletes a health rule's definition (fleet.HealthRuleStore.DeleteHealthRule). A rule
// already gone is not an error, so that a retry after a lost reply succeeds: Deleted says which.
func (a *Activities) DeleteHealthRule(ctx context.Context, in workflows.HealthRuleDeleteInput) (workflows.HealthRuleDeleteResult, error) {
	if a.HealthRules == nil {
		return workflows.HealthRuleDeleteResult{}, errNoStore("health rule")
	}
	err := a.HealthRules.DeleteHealthRule(ctx, in.Name)
	if errors.Is(err, fleet.ErrHealthRuleNotFound) {
		return workflows.HealthRuleDeleteResult{}, nil
	}
	if err != nil {
		return workflows.HealthRuleDeleteResult{}, err
	}
	return workflows.HealthRuleDeleteResult{Deleted: true}, nil
}
