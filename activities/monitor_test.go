package activities

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.temporal.io/sdk/activity"
	"go.temporal.io/sdk/converter"
	"go.temporal.io/sdk/temporal"
	"go.temporal.io/sdk/testsuite"

	"github.com/fleetflow/fleetflow/internal/fleet"
	"github.com/fleetflow/fleetflow/internal/fleet/fleettest"
	"github.com/fleetflow/fleetflow/internal/health"
	"github.com/fleetflow/fleetflow/workflows"
)

// monitoredFleet is a fleet in the store fake whose check finds a different number of everything: 2
// devices offline, 1 unhealthy, 3 with desired changes not acknowledged, 4 off the firmware of a completed
// rollout, 5 with credentials expiring; 2 disabled (offline) and 1 retired; an open alert that persists
// (refreshed) and one of a disabled device (resolved).
func monitoredFleet(t *testing.T) *fleettest.Store {
	t.Helper()
	now := time.Unix(100_000, 0).UTC()
	long := now.Add(-24 * time.Hour)
	f := fleettest.New()
	f.Now = func() time.Time { return now }
	add := func(prefix string, n int, d fleettest.Device) {
		for i := range n {
			d.CreatedAt = long
			f.AddDevice(fmt.Sprintf("%s-%d", prefix, i), d)
		}
	}
	add("offline", 2, fleettest.Device{})
	add("sick", 1, fleettest.Device{Online: true, Reported: []byte(`{"health":{"status":"failing"}}`)})
	add("pending", 3, fleettest.Device{Online: true, Desired: []byte(`{"mode":"eco"}`), DesiredAt: long})
	add("old-fw", 4, fleettest.Device{Online: true, ReportedVersion: "1.0"})
	add("expiring", 5, fleettest.Device{Online: true, CredentialExpiresAt: now.Add(time.Hour)})
	add("disabled", 2, fleettest.Device{Status: fleet.StatusDisabled})
	add("retired", 1, fleettest.Device{Status: fleet.StatusRetired})
	f.Selects["fw-query"] = []string{"old-fw-0", "old-fw-1", "old-fw-2", "old-fw-3"}
	f.RolloutSpecs["ro-1"] = &fleettest.RolloutSpec{ID: "ro-1", Query: "fw-query", Version: "2.0", Created: long, Completed: long}
	f.Alerts = []*fleettest.Alert{
		{ID: 1, DeviceID: "offline-0", Kind: fleet.AlertOffline, FirstSeen: long, LastSeen: long},
		{ID: 2, DeviceID: "disabled-0", Kind: fleet.AlertOffline, FirstSeen: long, LastSeen: long},
	}
	return f
}

func TestRunHealthCheckMapsTheSummary(t *testing.T) {
	f := monitoredFleet(t)
	res, err := (&Activities{Monitor: f}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "healthcheck-1", OfflineAfter: time.Minute})
	require.NoError(t, err)
	require.Equal(t, []fleettest.HealthCall{{RunID: "healthcheck-1",
		Rules: health.Rules{OfflineAfter: time.Minute, AckWithin: health.DefaultAckWithin, ExpiringWithin: health.DefaultExpiringWithin}}},
		f.HealthCalls, "zero rules take the defaults")
	require.Equal(t, workflows.HealthCheckResult{RunID: "healthcheck-1", At: time.Unix(100_000, 0).UTC(), Devices: 17, Active: 15,
		Disabled: 2, Retired: 1, Online: 13, Offline: 4,
		Problems: fleet.ProblemCounts{Offline: 2, Unhealthy: 1, DesiredPending: 3, FirmwareNoncompliant: 4, CredentialExpiring: 5},
		Opened:   14, Resolved: 1, Open: 15, Duration: f.Summaries["healthcheck-1"].Duration}, res)
	require.Equal(t, "offline 2 · unhealthy 1 · desired pending 3 · firmware noncompliant 4 · credentials expiring 5 · opened 14 · resolved 1 · open 15",
		res.Summary())
}

func TestRunHealthCheckErrors(t *testing.T) {
	var appErr *temporal.ApplicationError

	_, err := (&Activities{}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "x"})
	require.True(t, errors.As(err, &appErr))
	require.True(t, appErr.NonRetryable(), "no store: retrying on this worker cannot help")
	require.Equal(t, ErrTypeNoMonitor, appErr.Type())

	m := fleettest.New()
	_, err = (&Activities{Monitor: m}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "x", AckWithin: -time.Minute})
	require.True(t, errors.As(err, &appErr))
	require.True(t, appErr.NonRetryable())
	require.Equal(t, workflows.ErrTypeInvalidInput, appErr.Type())
	require.Contains(t, err.Error(), "--ack-within")
	require.Empty(t, m.HealthCalls, "invalid rules never reach the registry")

	m = fleettest.New()
	m.Fail = map[string]error{"RunHealthCheck": errors.New("connection reset")}
	_, err = (&Activities{Monitor: m}).RunHealthCheck(context.Background(), workflows.RunHealthCheckInput{RunID: "x"})
	require.Error(t, err)
	require.False(t, errors.As(err, &appErr) && appErr.NonRetryable(), "a transient error stays retryable")
}

func TestRunHealthCheckAsAnActivity(t *testing.T) {
	// Registered as the worker registers it (the Activities struct), found by its name, and heartbeating
	// while the registry works.
	var s testsuite.WorkflowTestSuite
	env := s.NewTestActivityEnvironment()
	m := monitoredFleet(t)
	m.OnHealthCheck = func(ctx context.Context) error {
		select {
		case <-time.After(2*heartbeatEvery + 500*time.Millisecond):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	env.RegisterActivity(&Activities{Monitor: m})
	beats := 0
	env.SetOnActivityHeartbeatListener(func(*activity.Info, converter.EncodedValues) { beats++ })
	v, err := env.ExecuteActivity(workflows.ActivityName(workflows.Activities.RunHealthCheck), workflows.RunHealthCheckInput{RunID: "healthcheck-2"})
	require.NoError(t, err)
	var res workflows.HealthCheckResult
	require.NoError(t, v.Get(&res))
	require.Equal(t, int64(15), res.Open)
	require.Equal(t, "healthcheck-2", m.HealthCalls[0].RunID)
	require.GreaterOrEqual(t, beats, 1, "a long check heartbeats")

	// A worker without a registry refuses for good.
	env = s.NewTestActivityEnvironment()
	env.RegisterActivity(&Activities{})
	_, err = env.ExecuteActivity(workflows.ActivityName(workflows.Activities.RunHealthCheck), workflows.RunHealthCheckInput{RunID: "healthcheck-3"})
	require.Error(t, err)
	require.Contains(t, err.Error(), "no registry")
}

// ruleStore is a fake fleet.HealthRuleStore that records its calls and answers with err.
type ruleStore struct {
	saved   []fleet.HealthRule
	deleted []string
	runs    []string
	err     error
}

func (s *ruleStore) SaveHealthRule(_ context.Context, r fleet.HealthRule) error {
	s.saved = append(s.saved, r)
	return s.err
}

func (s *ruleStore) DeleteHealthRule(_ context.Context, name string) error {
	s.deleted = append(s.deleted, name)
	return s.err
}

func (s *ruleStore) RunHealthRule(_ context.Context, runID, name string) (fleet.HealthSummary, error) {
	s.runs = append(s.runs, runID+"/"+name)
	return fleet.HealthSummary{Rule: name, Target: "SELECT * FROM devices WHERE IN_GROUP('g')", Devices: 3,
		Rules: health.Rules{OfflineAfter: time.Minute}, Problems: map[string]int64{health.KindOffline: 2}}, s.err
}

func TestHealthRuleActivities(t *testing.T) {
	ctx := context.Background()
	m := fleettest.New()
	rs := &ruleStore{}
	a := &Activities{Monitor: m, HealthRules: rs}

	res, err := a.RunHealthCheck(ctx, workflows.RunHealthCheckInput{RunID: "hc-1", Rule: "critical"})
	require.NoError(t, err)
	require.Equal(t, []string{"hc-1/critical"}, rs.runs)
	require.Empty(t, m.HealthCalls, "a rule's check is not the fleet-wide one")
	require.Equal(t, "critical", res.Rule)
	require.Equal(t, int64(2), res.Problems.Offline)
	require.Equal(t, time.Minute, res.Rules.OfflineAfter)

	_, err = a.RunHealthCheck(ctx, workflows.RunHealthCheckInput{RunID: "hc-2", Rule: health.FleetRule})
	require.NoError(t, err)
	require.Len(t, m.HealthCalls, 1, "the fleet rule by name is the fleet-wide check")

	_, err = a.SaveHealthRule(ctx, workflows.HealthRuleSaveInput{Rule: fleet.HealthRule{Name: "critical", Query: "q", Every: time.Minute}})
	require.NoError(t, err)
	require.Equal(t, health.DefaultAckWithin, rs.saved[0].Rules.AckWithin)
	del, err := a.DeleteHealthRule(ctx, workflows.HealthRuleDeleteInput{Name: "critical"})
	require.NoError(t, err)
	require.True(t, del.Deleted)

	// A rule gone is permanent for a check, and success (already done) for a delete.
	rs.err = fmt.Errorf("rule critical: %w", fleet.ErrHealthRuleNotFound)
	_, err = a.RunHealthCheck(ctx, workflows.RunHealthCheckInput{RunID: "hc-3", Rule: "critical"})
	var appErr *temporal.ApplicationError
	require.ErrorAs(t, err, &appErr)
	require.True(t, appErr.NonRetryable())
	del, err = a.DeleteHealthRule(ctx, workflows.HealthRuleDeleteInput{Name: "critical"})
	require.NoError(t, err)
	require.False(t, del.Deleted)

	// A transient failure is retried.
	rs.err = errors.New("connection reset")
	_, err = a.SaveHealthRule(ctx, workflows.HealthRuleSaveInput{Rule: fleet.HealthRule{Name: "critical", Query: "q", Every: time.Minute}})
	require.False(t, errors.As(err, &appErr))

	_, err = (&Activities{}).RunHealthCheck(ctx, workflows.RunHealthCheckInput{RunID: "hc-4", Rule: "critical"})
	require.ErrorAs(t, err, &appErr)
	require.True(t, appErr.NonRetryable(), "a worker without the store cannot run rules")
}
