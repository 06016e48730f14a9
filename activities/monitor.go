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
	return workflows.HealthCheckResult{RunID: req.RunID, At: s.At, Devices: s.Devices, Active: s.Active, Disabled: s.Disabled,
		Retired: s.Retired, Online: s.Online, Offline: s.Offline, Problems: fleet.ProblemCountsOf(s.Problems),
		Opened: s.Opened, Resolved: s.Resolved, Open: s.Open, Duration: s.Duration}, nil
}
