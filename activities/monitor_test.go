package activities

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/workflows"
)

// fakeMonitor records the check it was asked to run and returns a canned summary.
type fakeMonitor struct {
	runID string
	rules health.Rules
	err   error
	delay time.Duration
}

func (f *fakeMonitor) RunHealthCheck(ctx context.Context, runID string, rules health.Rules) (fleet.HealthSummary, error) {
	f.runID, f.rules = runID, rules
	select {
	case <-time.After(f.delay):
	case <-ctx.Done():
		return fleet.HealthSummary{}, ctx.Err()
	}
	return fleet.HealthSummary{At: time.Unix(100, 0).UTC(), Devices: 10, Active: 8, Disabled: 2, Retired: 1, Online: 7, Offline: 3,
		Problems: map[string]int64{health.KindOffline: 2, health.KindUnhealthy: 1, health.KindDesiredPending: 3,
			health.KindFirmwareNoncompliant: 4, health.KindCredentialExpiring: 5},
		Opened: 6, Resolved: 7, Open: 8, Duration: time.Second}, f.err
}

func TestRunHealthCheckMapsTheSummary(t *testing.T) {
	m := &fakeMonitor{}
	res, err := (&Activities{Monitor: m}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "healthcheck-1", OfflineAfter: time.Minute})
	require.NoError(t, err)
	require.Equal(t, "healthcheck-1", m.runID)
	require.Equal(t, health.Rules{OfflineAfter: time.Minute, AckWithin: health.DefaultAckWithin, ExpiringWithin: health.DefaultExpiringWithin},
		m.rules, "zero rules take the defaults")
	require.Equal(t, workflows.HealthCheckResult{RunID: "healthcheck-1", At: time.Unix(100, 0).UTC(), Devices: 10, Active: 8, Disabled: 2,
		Retired: 1, Online: 7, Offline: 3,
		Problems: fleet.ProblemCounts{Offline: 2, Unhealthy: 1, DesiredPending: 3, FirmwareNoncompliant: 4, CredentialExpiring: 5},
		Opened:   6, Resolved: 7, Open: 8, Duration: time.Second}, res)
	require.Equal(t, "offline 2 · unhealthy 1 · desired pending 3 · firmware noncompliant 4 · credentials expiring 5 · opened 6 · resolved 7 · open 8",
		res.Summary())
}

func TestRunHealthCheckErrors(t *testing.T) {
	var appErr *temporal.ApplicationError

	_, err := (&Activities{}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "x"})
	require.True(t, errors.As(err, &appErr))
	require.True(t, appErr.NonRetryable(), "no store: retrying on this worker cannot help")
	require.Equal(t, ErrTypeNoMonitor, appErr.Type())

	m := &fakeMonitor{}
	_, err = (&Activities{Monitor: m}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "x", AckWithin: -time.Minute})
	require.True(t, errors.As(err, &appErr))
	require.True(t, appErr.NonRetryable())
	require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	require.Contains(t, err.Error(), "--ack-within")
	require.Empty(t, m.runID, "invalid rules never reach the registry")

	m = &fakeMonitor{err: errors.New("connection reset")}
	_, err = (&Activities{Monitor: m}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "x"})
	require.Error(t, err)
	require.False(t, errors.As(err, &appErr) && appErr.NonRetryable(), "a transient error stays retryable")
}

func TestRunHealthCheckAsAnActivity(t *testing.T) {
	// Registered as the worker registers it (the Activities struct), found by its name, and heartbeating
	// while the registry works.
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	m := &fakeMonitor{delay: 2*heartbeatEvery + 500*time.Millisecond}
	env.RegisterActivity(&Activities{Monitor: m})
	beats := 0
	env.SetOnActivityHeartbeatListener(func(*activity.Info, converter.EncodedValues) { beats++ })
	v, err := env.ExecuteActivity(workflows.ActivityName(workflows.Activities.RunHealthCheck), workflows.RunHealthCheckInput{RunID: "healthcheck-2"})
	require.NoError(t, err)
	var res workflows.HealthCheckResult
	require.NoError(t, v.Get(&res))
	require.Equal(t, int64(8), res.Open)
	require.Equal(t, "healthcheck-2", m.runID)
	require.GreaterOrEqual(t, beats, 1, "a long check heartbeats")

	// A worker without a registry refuses for good.
	env = s.NewTestActivityEnvironment()
	env.RegisterActivity(&Activities{})
	_, err = env.ExecuteActivity(workflows.ActivityName(workflows.Activities.RunHealthCheck), workflows.RunHealthCheckInput{RunID: "healthcheck-3"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "no registry")
}
